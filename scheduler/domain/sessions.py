"""Sessions and nodes: their states, and a DAG laid out for the store.

Everything here is pure.
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from scheduler.domain.dispatch_order import DEFAULT_PRIORITY, Durations, critical_path, node_costs
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


_TRACEPARENT: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A W3C trace context (``traceparent``, ``tracestate``); empty: none."""

    traceparent: str = ""
    tracestate: str = ""

    def __bool__(self) -> bool:
        return bool(self.traceparent)

    @property
    def sampled(self) -> bool:
        """Whether the trace is recorded (the traceparent's sampled flag)."""
        match = _TRACEPARENT.fullmatch(self.traceparent)
        return bool(match and int(match.group(3), 16) & 1)

    @property
    def trace_id(self) -> str:
        """The trace id in hex ("" without a valid traceparent)."""
        match = _TRACEPARENT.fullmatch(self.traceparent)
        return match.group(1) if match else ""

    def carrier(self) -> dict[str, str]:
        """As the Task's ``trace_context`` map carries it."""
        if not self.traceparent:
            return {}
        if self.tracestate:
            return {"traceparent": self.traceparent, "tracestate": self.tracestate}
        return {"traceparent": self.traceparent}


NO_TRACE: Final = TraceContext()


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
    files: dict[str, str] = field(default_factory=dict)  # input name -> artefact name


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
    priority: int = DEFAULT_PRIORITY
    fairness_key: str = ""


@dataclass(frozen=True, slots=True)
class SessionFilter:
    states: tuple[SessionState, ...] = ()
    session_template: str = ""
    create_time_after: datetime | None = None
    create_time_before: datetime | None = None


# Looked up once: an enum member's lookup is slow, and layout() and the store ask for each node.
_WAITING: Final = NodeState.WAITING
_QUEUED: Final = NodeState.QUEUED


# Not frozen: a frozen dataclass's __init__ costs ten times as much, and CreateSession makes
# 100,000 of these. Nothing changes one after layout() made it.
@dataclass(slots=True)
class NewNode:
    """A node as the store keeps it: neighbours by index, readiness by counter."""

    idx: int
    key: str
    node_template: str
    runner: str
    config: dict[str, Any]
    upstream: tuple[int, ...]
    downstream: tuple[int, ...]
    retry_policy: RetryPolicy
    attempt_timeout: timedelta
    files: dict[str, str] = field(default_factory=dict)  # input name -> artefact name
    rank: float = 0.0  # the longest remaining path from it (dispatch_order.critical_path)

    @property
    def state(self) -> NodeState:
        """A new node with no upstream nodes is QUEUED at once; the others wait."""
        return _WAITING if self.upstream else _QUEUED


@dataclass(frozen=True, slots=True)
class NewSession:
    name: str
    session_template: str
    parameters: dict[str, Any]
    labels: dict[str, str]
    request_id: str
    trace: TraceContext
    nodes: tuple[NewNode, ...]
    priority: int = DEFAULT_PRIORITY
    fairness_key: str = ""


def layout(
    nodes: Sequence[DagNode],
    templates: Mapping[str, NodeTemplate],
    files: Mapping[str, Mapping[str, str]] | None = None,
    durations: Mapping[str, Durations] | None = None,
) -> tuple[NewNode, ...]:
    """The DAG (already validated) with indices for edges and the templates' settings copied;
    ``files`` gives nodes (by key) their files (input name -> artefact name); with
    ``durations``, each node ranked by its remaining critical path (else all rank 0)."""
    index = {node.key: i for i, node in enumerate(nodes)}
    downstream: list[list[int]] = [[] for _ in nodes]
    upstream: list[tuple[int, ...]] = []
    for i, node in enumerate(nodes):
        ups = tuple(map(index.__getitem__, node.depends_on))
        upstream.append(ups)
        for u in ups:
            downstream[u].append(i)
    ranks = [0.0] * len(nodes)
    if durations is not None:
        costs = node_costs([n.node_template for n in nodes], durations)
        ranks = critical_path(upstream, costs)
    laid = []
    for i, node in enumerate(nodes):
        template = templates[node.node_template]
        laid.append(
            NewNode(
                i,
                node.key,
                node.node_template,
                template.runner,
                effective_config(template, node),
                upstream[i],
                tuple(downstream[i]),
                template.retry_policy,
                template.attempt_timeout,
                dict(files[node.key]) if files and node.key in files else {},
                ranks[i],
            )
        )
    return tuple(laid)


def new_session_name(now: datetime) -> str:
    """Sortable by creation, unique without coordination, a valid DNS label."""
    return f"s-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


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
class StoredSession:
    """A Session with its row id (what the store's other calls take)."""

    id: int
    session: Session


@dataclass(frozen=True, slots=True)
class SessionCursor:
    """A position in the list of Sessions, newest first."""

    create_time: datetime
    id: int


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node of a stored Session, by index."""

    idx: int
    state: NodeState
