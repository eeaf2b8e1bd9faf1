"""The DAG state machine: what happens to a node, and to its neighbours, when something happens.

Pure. Node states move like this:

    (new) --no upstream nodes--> QUEUED        (the others start WAITING: NewNode.state)
    WAITING --last upstream succeeded--> QUEUED --claimed--> RUNNING
    RUNNING --success--> SUCCEEDED      (each child: one upstream fewer to wait on)
    RUNNING --failure, retries left--> RETRY_WAIT --backoff passed--> QUEUED
    RUNNING --failure, none left / invalid outputs--> FAILED  (descendants: UPSTREAM_FAILED)
    RUNNING --released (instance went away)--> QUEUED   (the attempt is given back)
    any open state --cancelled--> CANCELLED  (a node's own cancel: descendants UPSTREAM_FAILED)

``settle`` decides everything a batch of judged outcomes changes; the store applies the
decision with set-based statements in one transaction. Two of its steps need rows only the
store can lock (a child's count of upstream nodes still waiting, a node's descendants), so the
store applies them and hands the rows it changed back here (``became_ready``,
``upstream_failed``) to learn what to log. Every change ends up in the Session's log and
bookkeeping (``ledger.book``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from scheduler.domain.ledger import NodeChange
from scheduler.domain.sessions import NodeError, NodeState
from scheduler.domain.verdicts import HeldNode, Outcome, RecordedVerdict, Verdict

UPSTREAM_FAILED_REASON: Final = "an upstream node failed"
UPSTREAM_CANCELLED_REASON: Final = "an upstream node was cancelled"


@dataclass(frozen=True, slots=True)
class NodeKey:
    session_id: int
    idx: int


@dataclass(frozen=True, slots=True)
class Judged:
    """One outcome with its verdict, for the node its attempt holds."""

    node: HeldNode
    outcome: Outcome
    verdict: Verdict
    remember: bool  # the verdict answers later posts for the attempt


@dataclass(frozen=True, slots=True)
class NodeWrite:
    """A held node's new state, with what the outcome leaves on it."""

    node: HeldNode
    state: NodeState
    outputs: Any
    error: NodeError | None
    not_before: datetime | None
    outputs_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Doom:
    """The open descendants of ``roots`` will never run."""

    session_id: int
    roots: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Settlement:
    writes: tuple[NodeWrite, ...]
    changes: tuple[NodeChange, ...]  # the writes, as logged
    released: tuple[NodeKey, ...]  # a child, once for each of its upstream nodes that succeeded
    doomed: tuple[Doom, ...]
    ready_runners: frozenset[str]  # Runners that got an attempt back
    verdicts: tuple[RecordedVerdict, ...]
    retry_at: datetime | None  # the earliest retry written: the timekeeper must look then


def settle(judged: Iterable[Judged]) -> Settlement:
    """Everything a batch of judged outcomes changes."""
    writes: list[NodeWrite] = []
    verdicts: list[RecordedVerdict] = []
    for item in judged:
        if item.remember:
            verdicts.append(RecordedVerdict(item.node, item.verdict.reply, item.outcome.kind))
        state = item.verdict.new_state
        if state is not None:
            succeeded = state is NodeState.SUCCEEDED
            writes.append(
                NodeWrite(
                    item.node,
                    state,
                    item.outcome.outputs if succeeded else None,
                    item.verdict.error,
                    item.verdict.not_before,
                    item.outcome.outputs_size if succeeded else None,
                )
            )
    failed: dict[int, list[int]] = {}
    for w in writes:
        if w.state is NodeState.FAILED:
            failed.setdefault(w.node.session_id, []).append(w.node.idx)
    return Settlement(
        writes=tuple(writes),
        changes=tuple(
            NodeChange(
                w.node.session_id,
                w.node.idx,
                NodeState.RUNNING,
                w.state,
                # A released attempt is given back: the next claim counts it again.
                w.node.attempt - (w.state is NodeState.QUEUED),
                w.error.as_json() if w.error else None,
                w.node.runner,
            )
            for w in writes
        ),
        released=tuple(
            NodeKey(w.node.session_id, child)
            for w in writes
            if w.state is NodeState.SUCCEEDED
            for child in w.node.downstream
        ),
        doomed=tuple(
            Doom(session_id, tuple(roots), UPSTREAM_FAILED_REASON)
            for session_id, roots in failed.items()
        ),
        ready_runners=frozenset(w.node.runner for w in writes if w.state is NodeState.QUEUED),
        verdicts=tuple(verdicts),
        retry_at=min((w.not_before for w in writes if w.not_before is not None), default=None),
    )


@dataclass(frozen=True, slots=True)
class ReleasedChild:
    """A child after one or more of its upstream nodes succeeded."""

    session_id: int
    idx: int
    state: NodeState  # QUEUED once nothing upstream is left to wait on
    runner: str


def became_ready(children: Iterable[ReleasedChild]) -> tuple[list[NodeChange], set[str]]:
    """The released children that are QUEUED now, as changes, and their Runners."""
    ready = [c for c in children if c.state is NodeState.QUEUED]
    changes = [
        NodeChange(c.session_id, c.idx, NodeState.WAITING, NodeState.QUEUED, 0, runner=c.runner)
        for c in ready
    ]
    return changes, {c.runner for c in ready}


@dataclass(frozen=True, slots=True)
class Marked:
    """A descendant marked UPSTREAM_FAILED, with the state it had (it never ran)."""

    idx: int
    old_state: NodeState
    runner: str


def upstream_failed(session_id: int, marked: Iterable[Marked], reason: str) -> list[NodeChange]:
    """Descendants marked UPSTREAM_FAILED, as logged."""
    return [
        NodeChange(
            session_id,
            m.idx,
            m.old_state,
            NodeState.UPSTREAM_FAILED,
            0,
            {"reason": reason},
            runner=m.runner,
        )
        for m in marked
    ]


def drained(claims: Iterable[tuple[str, tuple[str, ...] | None, int, int]]) -> set[str]:
    """Runners whose queue a claim emptied: it was for all of the Runner's templates, and got
    fewer tasks than it asked for. Given (runner, templates, asked, got) per claim."""
    return {runner for runner, templates, asked, got in claims if templates is None and got < asked}


@dataclass(frozen=True, slots=True)
class Moved:
    """A node a statement moved, with its attempt number after the move; a claimed one with
    the virtual time its turn cost its Session's queue."""

    session_id: int
    idx: int
    attempt: int
    runner: str
    turns: float = 0.0


def claimed(moved: Iterable[Moved]) -> list[NodeChange]:
    """Claimed nodes (QUEUED -> RUNNING), in lock order."""
    return _in_order(moved, NodeState.QUEUED, NodeState.RUNNING)


def requeued(moved: Iterable[Moved]) -> list[NodeChange]:
    """Retries whose backoff passed (RETRY_WAIT -> QUEUED), in lock order."""
    return _in_order(moved, NodeState.RETRY_WAIT, NodeState.QUEUED)


def _in_order(moved: Iterable[Moved], old: NodeState, new: NodeState) -> list[NodeChange]:
    ordered = sorted(moved, key=lambda m: (m.session_id, m.idx))
    return [
        NodeChange(m.session_id, m.idx, old, new, m.attempt, runner=m.runner, turns=m.turns)
        for m in ordered
    ]


@dataclass(frozen=True, slots=True)
class CancelledNode:
    idx: int
    old_state: NodeState
    attempt: int
    attempt_id: str | None
    runner: str = ""


def cancelled(session_id: int, nodes: Iterable[CancelledNode], reason: str) -> list[NodeChange]:
    """Cancelled nodes, as logged."""
    detail = {"reason": reason} if reason else None
    return [
        NodeChange(session_id, n.idx, n.old_state, NodeState.CANCELLED, n.attempt, detail, n.runner)
        for n in nodes
    ]


def interrupted(nodes: Iterable[CancelledNode]) -> list[str]:
    """The attempts of cancelled nodes that were running: their runners must hear of it."""
    return [n.attempt_id for n in nodes if n.old_state is NodeState.RUNNING and n.attempt_id]


def cancel_doom(session_id: int, nodes: Sequence[CancelledNode], *, whole_session: bool) -> Doom:
    """Cancelling single nodes dooms what depends on them; a whole Session has nothing left."""
    roots = () if whole_session else tuple(n.idx for n in nodes)
    return Doom(session_id, roots, UPSTREAM_CANCELLED_REASON)
