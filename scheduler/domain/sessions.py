"""Sessions and nodes: states, the DAG laid out for the engine, retries and result verdicts.

Everything here is pure: time and randomness come in as arguments.
"""

from __future__ import annotations

import enum
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from scheduler.domain.backoff import Backoff
from scheduler.domain.registry import DagNode, NodeTemplate, RetryPolicy, effective_config


class NodeState(enum.StrEnum):
    WAITING = "waiting"
    QUEUED = "queued"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UPSTREAM_FAILED = "upstream_failed"

    @property
    def final(self) -> bool:
        return self in _FINAL_NODE_STATES


_FINAL_NODE_STATES: Final = frozenset(
    {NodeState.SUCCEEDED, NodeState.FAILED, NodeState.CANCELLED, NodeState.UPSTREAM_FAILED}
)


class SessionState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (SessionState.SUCCEEDED, SessionState.FAILED, SessionState.CANCELLED)


@dataclass(frozen=True, slots=True)
class NodeError:
    attempt: int
    retryable: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "retryable": self.retryable,
            "message": self.message,
            "details": self.details,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> NodeError | None:
        if not value:
            return None
        return cls(
            attempt=int(value.get("attempt", 0)),
            retryable=bool(value.get("retryable", False)),
            message=str(value.get("message", "")),
            details=dict(value.get("details") or {}),
        )


@dataclass(frozen=True, slots=True)
class Node:
    key: str
    node_template: str
    runner: str
    config: dict[str, Any]
    depends_on: tuple[str, ...]
    state: NodeState
    attempt: int = 0
    outputs: Any = None
    error: NodeError | None = None
    ready_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    next_attempt_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Session:
    name: str
    session_template: str
    parameters: dict[str, Any]
    state: SessionState
    labels: dict[str, str]
    node_counts: dict[NodeState, int]
    create_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    state_reason: str = ""
    trace_id: str = ""
    nodes: tuple[Node, ...] = ()
    # Sequence number of the last change logged: a Watch resumes after it.
    event_seq: int = 0


@dataclass(frozen=True, slots=True)
class SessionFilter:
    states: tuple[SessionState, ...] = ()
    session_template: str = ""
    create_time_after: datetime | None = None
    create_time_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class NewNode:
    """A node as the engine stores it: neighbours by index, readiness by counter."""

    idx: int
    key: str
    node_template: str
    runner: str
    config: dict[str, Any]
    upstream: tuple[int, ...]
    downstream: tuple[int, ...]
    retry_policy: RetryPolicy
    attempt_timeout: timedelta

    @property
    def state(self) -> NodeState:
        return NodeState.QUEUED if not self.upstream else NodeState.WAITING


@dataclass(frozen=True, slots=True)
class NewSession:
    name: str
    session_template: str
    parameters: dict[str, Any]
    labels: dict[str, str]
    request_id: str
    trace_id: str
    nodes: tuple[NewNode, ...]


def layout(nodes: Sequence[DagNode], templates: Mapping[str, NodeTemplate]) -> tuple[NewNode, ...]:
    """The DAG (already validated) with indices for edges and the templates' settings copied."""
    index = {node.key: i for i, node in enumerate(nodes)}
    downstream: list[list[int]] = [[] for _ in nodes]
    upstream: list[tuple[int, ...]] = []
    for i, node in enumerate(nodes):
        ups = tuple(index[key] for key in node.depends_on)
        upstream.append(ups)
        for u in ups:
            downstream[u].append(i)
    laid = []
    for i, node in enumerate(nodes):
        template = templates[node.node_template]
        laid.append(
            NewNode(
                idx=i,
                key=node.key,
                node_template=node.node_template,
                runner=template.runner,
                config=effective_config(template, node),
                upstream=upstream[i],
                downstream=tuple(downstream[i]),
                retry_policy=template.retry_policy,
                attempt_timeout=template.attempt_timeout,
            )
        )
    return tuple(laid)


def new_session_name(now: datetime) -> str:
    """Sortable by creation, unique without coordination, a valid DNS label."""
    return f"s-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def new_trace_id() -> str:
    return secrets.token_hex(16)


def backoff(policy: RetryPolicy, failed_attempt: int, rng: random.Random) -> timedelta:
    """Full jitter: uniform in [0, min(max_backoff, initial * multiplier^(attempt-1))]."""
    return Backoff(policy.initial_backoff, policy.max_backoff, policy.backoff_multiplier).delay(
        failed_attempt, rng
    )


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
class HeldNode:
    """The parts of a node row a verdict depends on."""

    session_id: int
    idx: int
    runner: str
    state: NodeState
    attempt: int
    attempt_id: str
    policy: RetryPolicy


@dataclass(frozen=True, slots=True)
class Verdict:
    status: ResultStatus
    message: str = ""
    new_state: NodeState | None = None
    error: NodeError | None = None
    not_before: datetime | None = None


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


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    session_id: int
    session: str
    idx: int
    node_key: str
    node_template: str
    attempt: int
    attempt_id: str
    owner: str
    lease_deadline: datetime
    attempt_deadline: datetime
    config: dict[str, Any]
    inputs: dict[str, Any]
    parameters: dict[str, Any]
    trace_id: str


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    time: datetime
    state: str
    attempt: int
    detail: dict[str, Any] | None
    node_key: str | None
    node_template: str | None
    runner: str | None


@dataclass(frozen=True, slots=True)
class Settled:
    """What a batch of verdicts changed, for the caller to wake dispatchers and watchers."""

    ready_runners: set[str]
    sessions: set[int]
    cancelled_attempts: list[str]
