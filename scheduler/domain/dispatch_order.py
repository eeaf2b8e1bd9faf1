"""Dispatch order: which of a Runner's queued tasks go first when its instances have credits.

Pure. The rules, in the order they apply (the README's "Dispatch order" says the same):

1. **Priority.** A Session has a level from 1 to 9 (``DEFAULT_PRIORITY`` unless it, or its
   Session Template, says otherwise). By default the levels with queued work share the Runner
   like weights: each level gets ``priority_ratio`` times the dispatches of the level below
   it, so a higher level goes first and the lower ones still progress. With
   ``strict_priority`` a level is served only while no higher level has queued work.
2. **Fairness keys.** Within a level, the Runner is shared across fairness keys (the value of
   the Session label ``fairness_label``, ``team`` by default; no label is the key ``""``) in
   proportion to the keys' weights (``weights``, 1 when not given).
3. **Sessions.** Within a key, Sessions share equally, in turns of up to ``QUANTUM`` tasks.
   Shares are kept as a virtual time per Session and Runner (``Queue.vtime``: each task it
   has had costs ``1 / share``), so a
   Session's share does not depend on how many nodes it made ready at once; a Session whose
   queue comes back after being empty resumes at the front of its level, never behind the
   ones that kept theirs, and with no credit for the time it had nothing to run.
4. **Nodes.** Within a Session, the ready node with the longest remaining path to the end of
   the DAG goes first (``critical_path``), each node weighed by its Node Template's median
   duration once ``MIN_DURATION_SAMPLES`` successful attempts are known, by 1 (a node count)
   before that.

How the store applies this: ``grants`` is what the claim statement computes for a batch of
credits (``claim`` in ``store/sql/queries/tasks.sql``, set-based), over the queues as
``pending`` moves them when the claim runs in the transaction that made the work ready (a
settlement's hand-off: its moves are booked after the claim); ``charge`` and ``resumed`` are
what the bookkeeping statement writes back (``update_sessions``), ``moved_to`` what a change
of level does (``set_priority``). The integration tests hold the SQL to them.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Final

MIN_PRIORITY: Final = 1
MAX_PRIORITY: Final = 9
DEFAULT_PRIORITY: Final = 5
UNSET_PRIORITY: Final = 0  # in a request or a Session Template: "the default"

DEFAULT_FAIRNESS_LABEL: Final = "team"
DEFAULT_PRIORITY_RATIO: Final = 10.0

# A Node Template's duration is its median over the latest successful attempts, once there are
# enough of them to mean something.
MIN_DURATION_SAMPLES: Final = 5
MAX_DURATION_SAMPLES: Final = 50

# A Session's turn is up to this many tasks: the share is the same, but a batch takes a few
# Sessions' tasks together rather than one task from each of many (each Session a batch
# touches costs its bookkeeping a row, and its nodes sit together on disk).
QUANTUM: Final = 4


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    """The operator's settings of the dispatch order."""

    fairness_label: str = DEFAULT_FAIRNESS_LABEL
    weights: tuple[tuple[str, float], ...] = ()  # (key, weight > 0); other keys weigh 1
    priority_ratio: float = DEFAULT_PRIORITY_RATIO
    strict_priority: bool = False
    critical_path: bool = True
    quantum: int = QUANTUM  # tasks in a turn

    def weight(self, key: str) -> float:
        return next((w for k, w in self.weights if k == key), 1.0)

    def fairness_key(self, labels: Mapping[str, str]) -> str:
        return labels.get(self.fairness_label, "")


def priority_of(requested: int, template_default: int = UNSET_PRIORITY) -> int:
    """A new Session's level: the one asked for, else its template's, else the default."""
    for level in (requested, template_default):
        if level != UNSET_PRIORITY:
            return level
    return DEFAULT_PRIORITY


def priority_problem(level: int, *, unset_allowed: bool) -> str | None:
    """Why ``level`` is not a priority level, or None."""
    if unset_allowed and level == UNSET_PRIORITY:
        return None
    if MIN_PRIORITY <= level <= MAX_PRIORITY:
        return None
    unset = f" (or {UNSET_PRIORITY} for the default)" if unset_allowed else ""
    return f"must be {MIN_PRIORITY} (lowest) to {MAX_PRIORITY} (highest){unset}; got {level}"


# -- Sessions sharing a Runner -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Queue:
    """A Session's queued tasks at one Runner, and the share of the Runner it has had."""

    session_id: int
    priority: int
    fairness_key: str
    queued: int
    dispatched: int = 0
    vtime: float = 0.0


def strides(queues: Iterable[Queue], policy: DispatchPolicy) -> dict[int, float]:
    """What one dispatch costs each non-empty queue in virtual time: 1 / its share.

    Within a level, a queue's share is its key's weight over the weights of the level's keys,
    divided among the key's Sessions; across levels (unless strict) each level weighs
    ``priority_ratio`` times the level below. Only ratios matter, so the top level's shares
    are scaled to sum to 1.
    """
    active = [q for q in queues if q.queued > 0]
    if not active:
        return {}
    sessions_in: dict[tuple[int, str], int] = {}
    for q in active:
        group = (q.priority, q.fairness_key)
        sessions_in[group] = sessions_in.get(group, 0) + 1
    level_weight: dict[int, float] = {}
    for level, key in sorted(sessions_in):
        level_weight[level] = level_weight.get(level, 0.0) + policy.weight(key)
    top = max(level_weight)
    out = {}
    for q in active:
        n = sessions_in[(q.priority, q.fairness_key)]
        stride = level_weight[q.priority] * n / policy.weight(q.fairness_key)
        if not policy.strict_priority:
            stride *= policy.priority_ratio ** (top - q.priority)
        out[q.session_id] = stride
    return out


@dataclass(frozen=True, slots=True)
class Grant:
    """A Session's part of a batch: its tasks, and the virtual time they cost its queue."""

    tasks: int
    turns: float


def grants(queues: Sequence[Queue], credits: int, policy: DispatchPolicy) -> dict[int, Grant]:
    """How many of a batch of ``credits`` tasks each Session gets: the ``credits`` earliest
    tasks, a queue's j-th turn (from 1) of up to ``quantum`` tasks ending at
    ``vtime + j * quantum * stride``, so a smaller share's turns come later, its first one
    included. Ties go to the Session that has had fewer dispatches, then to the older
    Session; strict priority orders by level first. Each task costs its queue one stride,
    however many of its turn's tasks the batch took.

    Two bounds keep a batch's work small and its shares steady:

    - a queue counts as at most one turn of its level's slowest queue ahead of the queue
      furthest behind in it (a lead earned while turns cost more, before a higher level
      emptied, is not held against it beyond that; and the queue furthest behind still has
      the earliest turn, so none is starved);
    - a queue has at most ``2 * ceil(credits * share / shares) + quantum`` tasks in one
      batch, its share over those of the batch's candidates (of its level, when strict), so
      a batch looks at O(credits) tasks, not credits squared (unless these bounds leave
      fewer tasks than credits: then none applies).
    """
    step = strides(queues, policy)
    active = [q for q in queues if q.queued > 0]
    strict = policy.strict_priority
    quantum = policy.quantum
    front: dict[int, float] = {}
    widest: dict[int, float] = {}
    for q in active:
        front[q.priority] = min(front.get(q.priority, q.vtime), q.vtime)
        widest[q.priority] = max(widest.get(q.priority, 0.0), step[q.session_id])
    vtime = {
        q.session_id: min(q.vtime, front[q.priority] + quantum * widest[q.priority]) for q in active
    }

    def task(q: Queue, i: int) -> tuple[float, float, int, int]:
        """The order of a queue's i-th task (from 1) in this batch: its turn's end."""
        turn = ((i - 1) // quantum + 1) * quantum
        tag = vtime[q.session_id] + turn * step[q.session_id]
        return (-q.priority if strict else 0, tag, q.dispatched, q.session_id)

    # Only the ``credits`` queues with the earliest first turns can have any of the tasks.
    candidates = sorted(
        heapq.nsmallest(credits, active, key=lambda q: task(q, 1)), key=lambda q: q.session_id
    )
    shares: dict[int | None, float] = {}
    for q in candidates:
        scope = q.priority if strict else None
        shares[scope] = shares.get(scope, 0.0) + 1 / step[q.session_id]

    def bound(q: Queue) -> int:
        scope = q.priority if strict else None
        share = credits * (1 / step[q.session_id]) / shares[scope]
        return min(q.queued, credits, 2 * math.ceil(share) + quantum)

    most = {q.session_id: bound(q) for q in candidates}
    if sum(most.values()) < credits:  # the bounds hold only while they leave enough tasks
        most = {q.session_id: min(q.queued, credits) for q in candidates}
    every = (task(q, i) for q in candidates for i in range(1, most[q.session_id] + 1))
    tasks: dict[int, int] = {}
    for *_, session_id in heapq.nsmallest(credits, every):
        tasks[session_id] = tasks.get(session_id, 0) + 1
    by_id = {q.session_id: q for q in active}
    return {
        sid: Grant(n, vtime[sid] - by_id[sid].vtime + n * step[sid]) for sid, n in tasks.items()
    }


def charge(queue: Queue, tasks: int, turns: float) -> Queue:
    """The queue after ``tasks`` of its tasks were dispatched, their turns costing ``turns``
    of virtual time in all (the sum of their strides)."""
    return replace(
        queue,
        queued=queue.queued - tasks,
        dispatched=queue.dispatched + tasks,
        vtime=queue.vtime + turns,
    )


def resumed(vtime: float, priority: int, others: Iterable[Queue]) -> float:
    """The virtual time of a queue that gets tasks again after being empty (or that moves to
    another level): not behind the front of its level (else of the Runner), so it gets no
    credit for the time it had nothing queued, and not ahead of its own past."""
    level = [q.vtime for q in others if q.queued > 0 and q.priority == priority]
    anywhere = [q.vtime for q in others if q.queued > 0]
    front = min(level) if level else min(anywhere) if anywhere else None
    return vtime if front is None else max(vtime, front)


def pending(queues: Sequence[Queue], moves: Mapping[int, int]) -> list[Queue]:
    """The queues as a claim sees them in a transaction whose own moves (tasks that joined, +,
    or left, -, each Session's queue: a settlement's children made ready) are not written yet:
    as the bookkeeping will write them, a queue that was empty and fills again ``resumed``."""
    out = []
    for q in queues:
        moved = moves.get(q.session_id, 0)
        if q.queued > 0:
            q = replace(q, queued=max(q.queued + moved, 0))
        elif moved > 0:
            q = replace(q, queued=moved, vtime=resumed(q.vtime, q.priority, queues))
        out.append(q)
    return out


def moved_to(priority: int, others: Iterable[Queue], vtime: float) -> float:
    """The virtual time of a non-empty queue whose Session moved to level ``priority``: the
    front of that level (else of the Runner), so the move takes effect at once."""
    level = [q.vtime for q in others if q.queued > 0 and q.priority == priority]
    anywhere = [q.vtime for q in others if q.queued > 0]
    return min(level) if level else min(anywhere) if anywhere else vtime


# -- the critical path within a Session ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Durations:
    """The latest successful attempts of a Node Template, newest first."""

    samples: tuple[timedelta, ...] = ()

    @property
    def median(self) -> timedelta | None:
        """Known once there are ``MIN_DURATION_SAMPLES`` samples."""
        if len(self.samples) < MIN_DURATION_SAMPLES:
            return None
        return timedelta(seconds=statistics.median(s.total_seconds() for s in self.samples))


def node_costs(templates: Sequence[str], durations: Mapping[str, Durations]) -> list[float]:
    """Each node's weight on a path, in seconds: its template's median duration. A template
    with no median yet counts as the median of the known ones; with none known, every node
    counts 1 (the path length is a node count)."""
    medians = {}
    for name in set(templates):
        found = durations.get(name)
        median = found.median if found is not None else None
        if median is not None:
            medians[name] = median.total_seconds()
    if not medians:
        return [1.0] * len(templates)
    fallback = statistics.median(medians.values())
    return [medians.get(name, fallback) for name in templates]


def critical_path(upstream: Sequence[Sequence[int]], costs: Sequence[float]) -> list[float]:
    """Each node's rank: its cost plus the longest rank among its downstream nodes, i.e. the
    longest remaining path from it to the end of the DAG (which is acyclic)."""
    downstream: list[list[int]] = [[] for _ in upstream]
    waiting = [0] * len(upstream)  # downstream nodes not ranked yet
    for i, ups in enumerate(upstream):
        for u in ups:
            downstream[u].append(i)
            waiting[u] += 1
    rank = [0.0] * len(upstream)
    ready = [i for i, n in enumerate(waiting) if n == 0]  # the ends of the DAG
    while ready:
        i = ready.pop()
        rank[i] = costs[i] + max((rank[d] for d in downstream[i]), default=0.0)
        for u in upstream[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    return rank
