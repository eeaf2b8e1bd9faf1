"""Verdicts: what an outcome posted for an attempt means for its node, and for a repeated post.

Pure: time and randomness come in as arguments.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from scheduler.domain.backoff import Backoff
from scheduler.domain.registry import RetryPolicy
from scheduler.domain.sessions import NodeError, NodeState


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


def judge(
    node: HeldNode,
    outcome: Outcome,
    *,
    now: datetime,
    rng: random.Random,
    max_output_bytes: int,
) -> Verdict:
    """The verdict on an outcome for the attempt that currently holds ``node``."""
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
    """Full jitter: uniform in [0, min(max_backoff, initial * multiplier^(attempt-1))]."""
    return Backoff(policy.initial_backoff, policy.max_backoff, policy.backoff_multiplier).delay(
        failed_attempt, rng
    )


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
