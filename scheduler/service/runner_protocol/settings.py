"""The runner protocol's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from scheduler.domain.dispatch_order import DispatchPolicy


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    lease_duration: timedelta = timedelta(seconds=30)
    heartbeat_interval: timedelta = timedelta(seconds=10)
    max_claim_batch: int = 256
    max_result_batch: int = 512
    # The most tasks pushed in one message, to an instance that takes batches.
    max_push_batch: int = 64
    # Whether idle instances are drained (a provisioner starts and stops them).
    drain_idle: bool = False
    dispatch_order: DispatchPolicy = field(default_factory=DispatchPolicy)

    @property
    def silence(self) -> timedelta:
        """How long an instance holding tasks may go without a heartbeat before it gets no
        new task: two heartbeats missed, or half a lease, whichever is longer."""
        return max(2 * self.heartbeat_interval, self.lease_duration / 2)
