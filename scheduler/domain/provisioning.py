"""Provisioning: how many instances a Runner should have, and which ones may go.

Pure rules over what the provisioner observes (pods or processes) and the Runner's work;
the reconciler applies them. Which idle instance may drain is decided where the drains are
counted, in one statement of the store (claim_drain): live beyond desired, minus draining.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass
from datetime import datetime

from scheduler.domain.backoff import Backoff
from scheduler.domain.registry import Runner


class Phase(enum.StrEnum):
    PENDING = "pending"  # created, not started yet (scheduling, pulling the image)
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # exited 0 (drained)
    FAILED = "failed"  # exited non-zero, OOM-killed, evicted, or cannot start


@dataclass(frozen=True, slots=True)
class Observed:
    """One runner instance as the provisioner sees it."""

    name: str  # also the instance id the runner presents (HEAT_INSTANCE_ID)
    runner: str
    uid: str
    phase: Phase
    ready: bool = False
    reason: str = ""  # why it failed or cannot start, for operators
    created: datetime | None = None
    deleting: bool = False

    @property
    def live(self) -> bool:
        return self.phase in (Phase.PENDING, Phase.RUNNING) and not self.deleting


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """What a new instance of a Runner is started with."""

    runner: Runner
    scheduler_address: str
    scheduler_name: str
    # Further HEAT_* variables every instance gets (HEAT_TLS_CA, and under mTLS the client
    # certificate's HEAT_TLS_CERT and HEAT_TLS_KEY).
    environment: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RunnerWork:
    """A Runner's tasks waiting for an instance, and held by one."""

    queued: int = 0
    running: int = 0


def desired_instances(runner: Runner, queued: int, running: int) -> int:
    """Instances for the work: queued + running tasks over tasks per instance, within min/max.

    A disabled Runner gets no new instances, but those with work in hand are not counted
    away: scale-down drains only idle instances.
    """
    if not runner.enabled:
        return 0
    wanted = math.ceil((queued + running) / max(runner.tasks_per_pod, 1))
    return max(runner.min_pods, min(runner.max_pods, wanted))


@dataclass(frozen=True, slots=True)
class CrashBackoff:
    """Replacement of failing instances slows down exponentially, and recovers on success.

    With ``spread=0`` (the reconciler's) it waits the whole bound, without jitter: one leader
    decides, and operators read the delays (1 s, 2 s, 4 s, …) in the Runner's status.
    """

    failures: int = 0
    until: datetime | None = None

    def after_failure(self, now: datetime, backoff: Backoff, rng: random.Random) -> CrashBackoff:
        return CrashBackoff(self.failures + 1, now + backoff.delay(self.failures + 1, rng))

    def allows(self, now: datetime) -> bool:
        return self.until is None or now >= self.until


@dataclass(frozen=True, slots=True)
class Plan:
    create: int
    delete: tuple[Observed, ...]


def plan(
    runner: Runner,
    desired: int,
    observed: list[Observed],
    *,
    now: datetime,
    backoff: CrashBackoff,
) -> Plan:
    """Create what is missing (unless failures are backing off); delete what has ended."""
    live = [o for o in observed if o.live]
    ended = tuple(o for o in observed if not o.live and not o.deleting)
    create = max(desired - len(live), 0) if backoff.allows(now) else 0
    return Plan(create, ended)


@dataclass(frozen=True, slots=True)
class RunnerStatus:
    runner: str
    desired: int = 0
    observed: int = 0
    ready: int = 0
    last_error: str = ""
    last_error_time: datetime | None = None
    queued: int = 0
    running: int = 0
