"""Verdicts: what an outcome posted for an attempt means for its node, and for a repeated post.

Pure: time and randomness come in as arguments.
"""

from __future__ import annotations

import enum
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from scheduler.domain.backoff import Backoff
from scheduler.domain.limits import (
    FAILURE_DETAILS_MAX_BYTES,
    FAILURE_MESSAGE_MAX_LENGTH,
    MAX_BACKOFF,
    RELEASE_REASON_MAX_LENGTH,
)
from scheduler.domain.registry import RetryPolicy
from scheduler.domain.sessions import NO_TRACE, NodeError, NodeState, TraceContext


class ResultStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED_STALE = "rejected_stale"
    REJECTED_CANCELLED = "rejected_cancelled"
    REJECTED_INVALID = "rejected_invalid"
    # Not a verdict: the poster's Runner does not own the task. Never recorded.
    FORBIDDEN = "forbidden"


class OutcomeKind(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    RELEASE = "release"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a runner (or the timekeeper, for expired leases) says happened to an attempt."""

    attempt_id: str
    kind: OutcomeKind
    outputs: Any = None
    outputs_size: int = 0
    retryable: bool = True
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def bounded(outcome: Outcome) -> Outcome:
    """The outcome as it is stored: a failure's message cut to its bound, details beyond
    theirs replaced by a note saying so (a runner's long traceback must not cost it the
    result, nor the scheduler the memory to show it)."""
    limit = (
        RELEASE_REASON_MAX_LENGTH
        if outcome.kind is OutcomeKind.RELEASE
        else FAILURE_MESSAGE_MAX_LENGTH
    )
    message = outcome.message
    if len(message) > limit:
        cut = len(message) - limit
        message = f"{message[:limit]}… ({cut} more characters cut)"
    details = outcome.details
    if details:
        size = len(json.dumps(details, separators=(",", ":")))
        if size > FAILURE_DETAILS_MAX_BYTES:
            details = {
                "omitted": f"details of {size} bytes of JSON exceed the limit of"
                f" {FAILURE_DETAILS_MAX_BYTES}"
            }
    if message is outcome.message and details is outcome.details:
        return outcome
    return replace(outcome, message=message, details=details)


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one posted outcome."""

    status: ResultStatus
    message: str = ""


STALE_UNKNOWN = Reply(
    ResultStatus.REJECTED_STALE, "unknown or superseded attempt: another attempt owns the task"
)


@dataclass(frozen=True, slots=True)
class HeldNode:
    """The parts of a node row a verdict depends on, locked while the verdict is applied."""

    session_id: int
    idx: int
    runner: str
    state: NodeState
    attempt: int
    attempt_id: str
    policy: RetryPolicy
    downstream: tuple[int, ...] = ()
    started: datetime | None = None  # when the attempt was claimed
    trace: TraceContext = NO_TRACE  # the Session's


@dataclass(frozen=True, slots=True)
class Verdict:
    status: ResultStatus
    message: str = ""
    new_state: NodeState | None = None
    error: NodeError | None = None
    not_before: datetime | None = None

    @property
    def reply(self) -> Reply:
        return Reply(self.status, self.message)


@dataclass(frozen=True, slots=True)
class RecordedVerdict:
    """A verdict kept for its attempt, so a repeated post gets the same answer."""

    node: HeldNode
    reply: Reply
    outcome: OutcomeKind


@dataclass(frozen=True, slots=True)
class EarlierVerdict:
    """A verdict recorded for an attempt, and the kind of outcome it answered (None: recorded
    before the kind was kept)."""

    reply: Reply
    outcome: OutcomeKind | None


def repeated(earlier: EarlierVerdict, outcome: Outcome) -> Reply:
    """The answer to an outcome posted again for an attempt that already has a verdict: the
    same verdict for the same outcome; a different outcome for a settled attempt is refused."""
    if earlier.outcome is None or earlier.outcome is outcome.kind:
        return earlier.reply
    return Reply(
        ResultStatus.REJECTED_STALE,
        f"the attempt was already settled by a {earlier.outcome.value} outcome"
        f" ({earlier.reply.status.value}); a {outcome.kind.value} outcome for it is refused",
    )


def judge(
    node: HeldNode,
    outcome: Outcome,
    *,
    now: datetime,
    rng: random.Random,
    max_output_bytes: int,
    bad_files: str = "",
) -> Verdict:
    """The verdict on an outcome for the attempt that currently holds ``node``; ``bad_files``
    says what is wrong with the artefacts a success's outputs refer to (empty: nothing)."""
    if node.state is NodeState.CANCELLED:
        return Verdict(ResultStatus.REJECTED_CANCELLED, "the task was cancelled")
    if node.state is not NodeState.RUNNING or node.attempt_id != outcome.attempt_id:
        return Verdict(
            ResultStatus.REJECTED_STALE,
            "the lease is stale: it expired or another attempt owns the task",
        )
    if outcome.kind is OutcomeKind.RELEASE:
        return Verdict(ResultStatus.ACCEPTED, new_state=NodeState.QUEUED)
    if outcome.kind is OutcomeKind.SUCCESS:
        if outcome.outputs_size > max_output_bytes:
            message = (
                f"outputs of {outcome.outputs_size} bytes exceed the limit of "
                f"{max_output_bytes} bytes (setting max_output_bytes); the attempt failed"
            )
            error = NodeError(node.attempt, False, message, {"outputs_bytes": outcome.outputs_size})
            return Verdict(
                ResultStatus.REJECTED_INVALID, message, new_state=NodeState.FAILED, error=error
            )
        if bad_files:
            message = f"the outputs refer to files they may not: {bad_files}; the attempt failed"
            error = NodeError(node.attempt, False, message, {"hook": "outputs"})
            return Verdict(
                ResultStatus.REJECTED_INVALID, message, new_state=NodeState.FAILED, error=error
            )
        return Verdict(ResultStatus.ACCEPTED, new_state=NodeState.SUCCEEDED)
    return failure_verdict(node, outcome.retryable, outcome.message, outcome.details, now, rng)


def failure_verdict(
    node: HeldNode,
    retryable: bool,
    message: str,
    details: dict[str, Any],
    now: datetime,
    rng: random.Random,
) -> Verdict:
    """A failed attempt waits for its retry while the policy allows one, else fails the node."""
    error = NodeError(node.attempt, retryable, message, details)
    if retryable and node.attempt < node.policy.max_attempts:
        delay = backoff(node.policy, node.attempt, rng)
        return Verdict(
            ResultStatus.ACCEPTED,
            new_state=NodeState.RETRY_WAIT,
            error=error,
            not_before=now + delay,
        )
    return Verdict(ResultStatus.ACCEPTED, new_state=NodeState.FAILED, error=error)


def backoff(policy: RetryPolicy, failed_attempt: int, rng: random.Random) -> timedelta:
    """Full jitter: uniform in [0, min(max_backoff, initial * multiplier^(attempt-1))].

    Whatever the stored policy holds (rows written before its bounds, or by hand), the wait is
    a finite time of at most ``MAX_BACKOFF``: a poison policy must not stop the settlement.
    """
    cap = min(policy.max_backoff, MAX_BACKOFF)
    first = min(policy.initial_backoff, cap)
    multiplier = policy.backoff_multiplier if policy.backoff_multiplier >= 1 else 1.0  # NaN too
    delay = Backoff(first, cap, multiplier).delay(failed_attempt, rng)
    return min(max(delay, timedelta(0)), MAX_BACKOFF)


def remembered(outcome: Outcome, *, posted_by_runner: bool) -> bool:
    """Whether the verdict answers later posts for the attempt. Only what a runner posted is:
    the timekeeper's own verdicts (expiry) must not answer a late post from the runner, and a
    release gives the attempt back rather than ending it."""
    return posted_by_runner and outcome.kind is not OutcomeKind.RELEASE


class ExpiryReason(enum.StrEnum):
    LEASE = "lease"  # no heartbeat in time
    TIMEOUT = "timeout"  # the attempt's own time ran out


@dataclass(frozen=True, slots=True)
class ExpiredAttempt:
    attempt_id: str
    reason: ExpiryReason
    attempt_timeout: timedelta


def expiry_outcome(expired: ExpiredAttempt) -> Outcome:
    """The timekeeper's outcome for an attempt whose lease or time ran out: a retryable failure."""
    if expired.reason is ExpiryReason.TIMEOUT:
        message = f"attempt timed out after {expired.attempt_timeout.total_seconds():g}s"
    else:
        message = "lease expired: no heartbeat from the runner in time"
    return Outcome(
        expired.attempt_id,
        OutcomeKind.FAILURE,
        retryable=True,
        message=message,
        details={"reason": expired.reason.value},
    )


def credits_back(outcomes: Iterable[Outcome]) -> list[str]:
    """The attempts whose posted outcomes return their task's credit (to an instance whose
    stream takes credits back with results): results do, whatever their verdict; a hand-back
    does not (an instance hands back what it cannot take: draining, or over its capacity)."""
    return [o.attempt_id for o in outcomes if o.kind is not OutcomeKind.RELEASE]
