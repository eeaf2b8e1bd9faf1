"""What the services tell telemetry, as a port: the scheduler's own code never imports the
OpenTelemetry SDK; ``scheduler.telemetry`` keeps this promise with it (traces, metrics), and
``NO_TELEMETRY`` keeps it with nothing at all (unit tests, and the services' default).

Traces follow a Session: CreateSession's server span is its root, and its W3C context is
stored with it (``TraceContext``); each claim of a node is a dispatch span under it, whose
context the Task carries to the runner; a settlement (result, expiry, release, retry) is a span
under the dispatch span of the attempt it settles. The dispatch span's id is derived from the
attempt id (``dispatch_span_id``), so whoever settles an attempt, on whichever replica, names
its parent without storing it.

Pure: no I/O, no SDK.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

from scheduler.domain.leadership import Term
from scheduler.domain.runner_protocol import ClaimedTask
from scheduler.domain.sessions import NO_TRACE, NodeState, TraceContext
from scheduler.domain.verdicts import HeldNode, OutcomeKind, ResultStatus


def dispatch_span_id(attempt_id: str) -> int:
    """The span id of an attempt's dispatch span: the first 64 bits of its (random) attempt id,
    or the next 64 in the one case in 2^64 where those are zero (an invalid span id)."""
    digits = attempt_id.replace("-", "")
    try:
        first, second = int(digits[:16], 16), int(digits[16:32] or "1", 16)
    except ValueError:
        return 1
    return first or second or 1


@dataclass(frozen=True, slots=True)
class Settled:
    """One outcome a settlement judged, with what it did to the attempt's node."""

    node: HeldNode
    kind: OutcomeKind
    status: ResultStatus
    new_state: NodeState | None
    posted_by_runner: bool  # False: the scheduler's own (lease expiry, an instance gone)
    message: str = ""
    not_before: datetime | None = None  # when a retry may run
    expiry: str = ""  # why the scheduler failed the attempt: lease, timeout ("" if it did not)


@dataclass(frozen=True, slots=True)
class Answered:
    """A verdict given without a settlement (a repeat, or an attempt nobody holds)."""

    runner: str | None
    kind: OutcomeKind
    status: ResultStatus


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """The database connections of this replica: open ones, idle ones, and the most."""

    size: int
    idle: int
    max_size: int


class Telemetry(Protocol):
    """What the scheduler reports; every call is cheap, and nearly free when telemetry is off."""

    @property
    def tracing(self) -> bool:
        """Whether spans are made at all (else ``statement`` need not be called)."""
        ...

    def current(self) -> TraceContext:
        """The context of the span the caller runs in (an RPC's server span), to store with
        what it creates; the caller's own context when only propagating; else empty."""
        ...

    def dispatched(self, tasks: Sequence[ClaimedTask], now: datetime) -> list[ClaimedTask]:
        """Claimed tasks, each as the runner gets it: carrying its dispatch span's context."""
        ...

    def settled(
        self, settled: Sequence[Settled], answered: Sequence[Answered], now: datetime
    ) -> None:
        """A settlement committed: its outcomes, and the other answers it gave."""
        ...

    def instance_failed(self, runner: str) -> None:
        """The provisioner saw an instance of ``runner`` fail."""
        ...

    def provisioning_error(self, runner: str, operation: str) -> None:
        """Creating (``create``) or deleting (``delete``) an instance failed."""
        ...

    def leading(self, term: Term) -> None:
        """This replica began ``term``: it leads the term's duty until ``term.lost`` is set
        (read whenever the metrics are, so the loss shows without a further call)."""
        ...

    def statement(self, name: str) -> AbstractContextManager[object]:
        """Around one named SQL statement (a database span when a traced span is current)."""
        ...


class NoTelemetry:
    """Reports nothing; passes a task's Session context through unchanged."""

    tracing = False

    def current(self) -> TraceContext:
        return NO_TRACE

    def dispatched(self, tasks: Sequence[ClaimedTask], now: datetime) -> list[ClaimedTask]:
        return list(tasks)

    def settled(
        self, settled: Sequence[Settled], answered: Sequence[Answered], now: datetime
    ) -> None:
        return None

    def instance_failed(self, runner: str) -> None:
        return None

    def provisioning_error(self, runner: str, operation: str) -> None:
        return None

    def leading(self, term: Term) -> None:
        return None

    def statement(self, name: str) -> AbstractContextManager[object]:
        return _NOTHING


_NOTHING: Final = nullcontext()
NO_TELEMETRY: Final = NoTelemetry()
