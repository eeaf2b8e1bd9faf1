"""The runner protocol's values and rules: claimed tasks, credits, leases, drains, heartbeats.

Pure: time comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

from scheduler.domain.dispatch_order import DispatchPolicy
from scheduler.domain.sessions import NO_TRACE, NodeState, TraceContext


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    session_id: int
    session: str
    idx: int
    node_key: str
    node_template: str
    attempt: int
    attempt_id: str
    owner: str  # the instance that holds the lease
    lease_deadline: datetime
    attempt_deadline: datetime
    config: dict[str, Any]
    inputs: dict[str, Any] | None  # None: too heavy to send (see inputs_bytes)
    parameters: dict[str, Any]
    runner: str = ""
    # The context the Task carries: the Session's as claimed, its dispatch span's once
    # telemetry saw the claim (``Telemetry.dispatched``).
    trace: TraceContext = NO_TRACE
    ready_time: datetime | None = None  # when the node was queued (for the dispatch latency)
    # How often the holder must heartbeat (the claim's, ClaimRequest.heartbeat_interval).
    heartbeat_interval: timedelta = timedelta(0)
    # What the upstream outputs weigh (encoded); ``inputs`` is None when that is more than a
    # task may carry: the task is failed, not sent.
    inputs_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Lease up to one queued task of ``runner`` per entry of ``owners`` (instance ids)."""

    runner: str
    templates: tuple[str, ...] | None  # None: any of the Runner's templates
    owners: tuple[str, ...]
    lease_deadline: datetime
    now: datetime
    # Bounds the claim applies whatever the rows hold: the longest attempt, the heaviest
    # inputs a task may carry (a heavier one is claimed without them, to be failed).
    max_attempt_timeout: timedelta = timedelta(days=30)
    max_inputs_bytes: int = 63 * 1024 * 1024
    # How often the holders must heartbeat, carried by each task claimed.
    heartbeat_interval: timedelta = timedelta(0)
    policy: DispatchPolicy = field(default_factory=DispatchPolicy)  # which tasks go first


@dataclass(frozen=True, slots=True)
class StreamTerms:
    """How one ClaimTask stream runs: what the instance asked for in its ClaimStart, as far as
    the scheduler grants it. The first version of the protocol is ``StreamTerms()``: one task
    per message, a ClaimCredit for every credit returned, one outcome per PostResult message."""

    max_batch: int = 1  # tasks in one message
    credits_with_results: bool = False  # a posted outcome returns its task's credit
    result_batches: bool = False  # several outcomes in one PostResult message

    @property
    def extended(self) -> bool:
        """Whether the stream says what it grants (ClaimStarted) before its first task."""
        return self != FIRST_VERSION


FIRST_VERSION: Final = StreamTerms()


def stream_terms(max_batch: int, credits_with_results: bool, *, max_push_batch: int) -> StreamTerms:
    """What a ClaimStart asking for ``max_batch`` tasks per message (0 or 1: one) and credits
    returned with results is granted: batches up to the scheduler's own bound, the rest as
    asked. An instance that asks for neither speaks the first version, and is answered in it."""
    batch = max(1, min(max_batch, max_push_batch))
    if batch == 1 and not credits_with_results:
        return FIRST_VERSION
    return StreamTerms(batch, credits_with_results, result_batches=True)


def hand_off_wanted(*, became_ready: bool, backlog: bool, credits: int) -> bool:
    """Whether a settlement also claims for a dispatcher of this replica, in its own
    transaction: it has credits, and its Runner has queued work (some became ready in this
    settlement, or its last claim took all it asked for, so more may wait)."""
    return credits > 0 and (became_ready or backlog)


@dataclass(frozen=True, slots=True)
class Drain:
    """An instance is told to stop claiming, and to exit once it holds nothing."""

    reason: str
    deadline: datetime | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    attempt_id: str
    deadline: datetime


@dataclass(frozen=True, slots=True)
class Cancellation:
    attempt_id: str
    reason: str = "cancelled"


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    leases: list[Lease]
    cancellations: list[Cancellation]
    lost: list[str]
    drain: Drain | None
    interval: timedelta


@dataclass(frozen=True, slots=True)
class AttemptState:
    """Where an attempt's node stands, for a heartbeat naming an attempt we did not extend."""

    state: NodeState
    lease_deadline: datetime | None
    runner: str


@dataclass(frozen=True, slots=True)
class LeaseState:
    """What a heartbeat learns of one attempt's lease from the database."""

    held: bool
    deadline: datetime | None = None
    cancelled: bool = False


LOST = LeaseState(False)


def lease_due(known_deadline: datetime | None, now: datetime, lease_duration: timedelta) -> bool:
    """Whether a heartbeat must write the lease: heartbeats cost no write while the lease in
    the database still has more than half its duration left (an unknown one is due)."""
    return known_deadline is None or known_deadline <= now + lease_duration / 2


def lease_state(found: AttemptState | None, now: datetime) -> LeaseState:
    """The lease of an attempt the extension did not touch (None: unknown, or not the
    heartbeating Runner's to know). A lease that ran out is lost, even before the timekeeper
    fails its attempt: it is never extended."""
    if found is None:
        return LOST
    if found.state is NodeState.RUNNING and found.lease_deadline is not None:
        if found.lease_deadline <= now:
            return LOST
        return LeaseState(True, found.lease_deadline)
    if found.state is NodeState.CANCELLED:
        return LeaseState(False, cancelled=True)
    return LOST


Holder = TypeVar("Holder")


def allocate(credits: Sequence[tuple[Holder, int]], limit: int) -> list[Holder]:
    """Up to ``limit`` owners for one claim, one per credit, round robin over the holders (in
    their order), so a batch spreads over instances instead of filling the first."""
    left = [count for _, count in credits]
    owners: list[Holder] = []
    while len(owners) < limit:
        took = False
        for i, (holder, _) in enumerate(credits):
            if left[i] > 0 and len(owners) < limit:
                left[i] -= 1
                owners.append(holder)
                took = True
        if not took:
            break
    return owners
