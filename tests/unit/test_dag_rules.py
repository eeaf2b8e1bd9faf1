"""The DAG's rules without a database: verdicts and retries, what a batch of outcomes does to
nodes and their neighbours, and the Sessions' bookkeeping."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from scheduler.domain import dag
from scheduler.domain.backoff import Backoff, Retries
from scheduler.domain.ledger import NodeChange, QueueMove, SessionBook, book, queue_moves
from scheduler.domain.registry import RetryPolicy
from scheduler.domain.sessions import NewNode, NodeState, SessionState
from scheduler.domain.verdicts import (
    ExpiredAttempt,
    ExpiryReason,
    HeldNode,
    Outcome,
    OutcomeKind,
    ResultStatus,
    Verdict,
    backoff,
    expiry_outcome,
    judge,
    remembered,
)
from tests.unit.fakes import T0

POLICY = RetryPolicy(
    max_attempts=3,
    initial_backoff=timedelta(seconds=1),
    max_backoff=timedelta(seconds=10),
    backoff_multiplier=2.0,
)


def held(attempt: int = 1, *, state: NodeState = NodeState.RUNNING, **kw: object) -> HeldNode:
    values: dict[str, object] = {
        "session_id": 7,
        "idx": 0,
        "runner": "w",
        "state": state,
        "attempt": attempt,
        "attempt_id": f"a-{attempt}",
        "policy": POLICY,
        "downstream": (1, 2),
    }
    values.update(kw)
    return HeldNode(**values)  # type: ignore[arg-type]


def rng(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 (jitter, not secrets)


def verdict_of(node: HeldNode, outcome: Outcome, seed: int = 1) -> Verdict:
    return judge(node, outcome, now=T0, rng=rng(seed), max_output_bytes=100)


# --- verdicts and retries ----------------------------------------------------------------------


def test_a_success_is_accepted_and_succeeds_the_node() -> None:
    verdict = verdict_of(held(), Outcome("a-1", OutcomeKind.SUCCESS, outputs={"n": 1}))
    assert verdict.status is ResultStatus.ACCEPTED
    assert verdict.new_state is NodeState.SUCCEEDED and verdict.error is None


def test_a_retryable_failure_waits_for_a_jittered_backoff_while_attempts_remain() -> None:
    failure = Outcome("a-2", OutcomeKind.FAILURE, retryable=True, message="flaky")
    verdict = verdict_of(held(2), failure)
    assert verdict.status is ResultStatus.ACCEPTED
    assert verdict.new_state is NodeState.RETRY_WAIT
    assert verdict.error is not None and verdict.error.attempt == 2
    assert verdict.not_before is not None
    assert T0 <= verdict.not_before <= T0 + timedelta(seconds=2)  # 1 s doubled once, jittered
    assert verdict.not_before - T0 == backoff(POLICY, 2, rng(1))


def test_the_last_attempt_and_a_permanent_failure_fail_the_node() -> None:
    retryable = Outcome("a-3", OutcomeKind.FAILURE, retryable=True, message="again")
    assert verdict_of(held(3), retryable).new_state is NodeState.FAILED
    permanent = Outcome("a-1", OutcomeKind.FAILURE, retryable=False, message="bad row")
    failed = verdict_of(held(1), permanent)
    assert failed.new_state is NodeState.FAILED and failed.not_before is None
    assert failed.error is not None and not failed.error.retryable


def test_stale_and_cancelled_attempts_are_rejected_and_change_nothing() -> None:
    success = Outcome("a-1", OutcomeKind.SUCCESS)
    superseded = verdict_of(held(2), success)  # the node holds attempt a-2 now
    assert superseded.status is ResultStatus.REJECTED_STALE and superseded.new_state is None
    cancelled = verdict_of(held(state=NodeState.CANCELLED), success)
    assert cancelled.status is ResultStatus.REJECTED_CANCELLED and cancelled.new_state is None


def test_oversize_outputs_fail_the_attempt_for_good() -> None:
    verdict = verdict_of(held(), Outcome("a-1", OutcomeKind.SUCCESS, outputs_size=101))
    assert verdict.status is ResultStatus.REJECTED_INVALID
    assert verdict.new_state is NodeState.FAILED
    assert verdict.error is not None and verdict.error.details == {"outputs_bytes": 101}


def test_a_release_gives_the_attempt_back() -> None:
    verdict = verdict_of(held(), Outcome("a-1", OutcomeKind.RELEASE))
    assert verdict.status is ResultStatus.ACCEPTED and verdict.new_state is NodeState.QUEUED
    assert not remembered(Outcome("a-1", OutcomeKind.RELEASE), posted_by_runner=True)
    assert remembered(Outcome("a-1", OutcomeKind.SUCCESS), posted_by_runner=True)
    assert not remembered(Outcome("a-1", OutcomeKind.FAILURE), posted_by_runner=False)


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (ExpiryReason.TIMEOUT, "attempt timed out after 2.5s"),
        (ExpiryReason.LEASE, "lease expired: no heartbeat from the runner in time"),
    ],
)
def test_an_expiry_is_a_retryable_failure(reason: ExpiryReason, message: str) -> None:
    outcome = expiry_outcome(ExpiredAttempt("a-1", reason, timedelta(seconds=2.5)))
    assert outcome.kind is OutcomeKind.FAILURE and outcome.retryable
    assert outcome.message == message and outcome.details == {"reason": reason.value}


def test_backoff_grows_caps_and_jitters() -> None:
    rule = Backoff(timedelta(seconds=1), timedelta(seconds=5))
    assert [rule.bound(n).total_seconds() for n in (1, 2, 3, 4, 10_000)] == [1, 2, 4, 5, 5]
    draws = rng(3)
    assert all(0 <= rule.delay(4, draws).total_seconds() <= 5 for _ in range(200))
    floor = Backoff(timedelta(seconds=1), timedelta(seconds=5), spread=0.5)
    assert all(2 <= floor.delay(3, draws).total_seconds() <= 4 for _ in range(200))
    exact = Backoff(timedelta(seconds=1), timedelta(seconds=5), spread=0)
    assert exact.delay(2, draws) == timedelta(seconds=2)
    huge = Backoff(timedelta(seconds=1), timedelta(hours=1), multiplier=1e300)
    assert huge.bound(100) == timedelta(hours=1)
    retries = Retries(exact)
    assert [retries.wait(), retries.wait(), retries.wait()] == [1, 2, 4]
    retries.reset()
    assert retries.wait() == 1


# --- what a batch of outcomes does -------------------------------------------------------------


def judged(node: HeldNode, outcome: Outcome, *, posted: bool = True) -> dag.Judged:
    return dag.Judged(
        node, outcome, verdict_of(node, outcome), remembered(outcome, posted_by_runner=posted)
    )


def test_a_settlement_decides_states_releases_dooms_and_retries() -> None:
    ok = held(1, idx=0, attempt_id="ok", downstream=(3, 4))
    bad = held(3, idx=1, attempt_id="bad", downstream=(5,))
    again = held(1, idx=2, attempt_id="again", downstream=())
    back = held(1, idx=6, attempt_id="back", runner="other", downstream=(7,))
    settlement = dag.settle(
        [
            judged(ok, Outcome("ok", OutcomeKind.SUCCESS, outputs=[1])),
            judged(bad, Outcome("bad", OutcomeKind.FAILURE, message="no")),
            judged(again, Outcome("again", OutcomeKind.FAILURE, message="flaky")),
            judged(back, Outcome("back", OutcomeKind.RELEASE), posted=False),
        ]
    )
    assert [(w.node.idx, w.state) for w in settlement.writes] == [
        (0, NodeState.SUCCEEDED),
        (1, NodeState.FAILED),
        (2, NodeState.RETRY_WAIT),
        (6, NodeState.QUEUED),
    ]
    assert settlement.writes[0].outputs == [1] and settlement.writes[1].outputs is None
    # Each success releases its children once; a released attempt is not counted.
    assert settlement.released == (dag.NodeKey(7, 3), dag.NodeKey(7, 4))
    assert settlement.doomed == (dag.Doom(7, (1,), dag.UPSTREAM_FAILED_REASON),)
    assert settlement.ready_runners == {"other"}
    assert [c.attempt for c in settlement.changes] == [1, 3, 1, 0]
    assert (
        settlement.changes[1].detail is not None and settlement.changes[1].detail["message"] == "no"
    )
    assert settlement.retry_at == settlement.writes[2].not_before
    assert [v.node.attempt_id for v in settlement.verdicts] == ["ok", "bad", "again"]


def test_rejected_outcomes_are_remembered_but_write_nothing() -> None:
    stale = held(2, attempt_id="a-2")
    settlement = dag.settle([judged(stale, Outcome("a-1", OutcomeKind.SUCCESS))])
    assert settlement.writes == () and settlement.released == () and settlement.retry_at is None
    assert [v.reply.status for v in settlement.verdicts] == [ResultStatus.REJECTED_STALE]


def test_children_are_queued_only_when_nothing_upstream_is_left() -> None:
    changes, runners = dag.became_ready(
        [
            dag.ReleasedChild(7, 3, NodeState.QUEUED, "w"),
            dag.ReleasedChild(7, 4, NodeState.WAITING, "x"),
        ]
    )
    assert changes == [NodeChange(7, 3, NodeState.WAITING, NodeState.QUEUED, 0, runner="w")]
    assert runners == {"w"}


def test_a_new_node_is_queued_only_without_upstream_nodes() -> None:
    def node(*upstream: int) -> NewNode:
        return NewNode(0, "k", "t", "w", {}, upstream, (), POLICY, timedelta(hours=1))

    assert node().state is NodeState.QUEUED
    assert node(0, 1).state is NodeState.WAITING


def test_cancelling_nodes_dooms_their_descendants_but_a_whole_session_dooms_nothing() -> None:
    nodes = [
        dag.CancelledNode(1, NodeState.RUNNING, 2, "att"),
        dag.CancelledNode(2, NodeState.WAITING, 0, None),
    ]
    changes = dag.cancelled(7, nodes, "stop")
    assert [(c.idx, c.old_state, c.state, c.detail) for c in changes] == [
        (1, NodeState.RUNNING, NodeState.CANCELLED, {"reason": "stop"}),
        (2, NodeState.WAITING, NodeState.CANCELLED, {"reason": "stop"}),
    ]
    assert dag.interrupted(nodes) == ["att"]
    assert dag.cancel_doom(7, nodes, whole_session=False).roots == (1, 2)
    assert dag.cancel_doom(7, nodes, whole_session=True).roots == ()
    marked = dag.upstream_failed(
        7, [dag.Marked(5, NodeState.WAITING, "w")], dag.UPSTREAM_CANCELLED_REASON
    )
    assert marked == [
        NodeChange(
            7,
            5,
            NodeState.WAITING,
            NodeState.UPSTREAM_FAILED,
            0,
            {"reason": "an upstream node was cancelled"},
            runner="w",
        )
    ]


def test_claims_and_requeues_are_logged_in_lock_order() -> None:
    moved = [dag.Moved(8, 1, 1, "w"), dag.Moved(7, 5, 2, "w"), dag.Moved(7, 2, 1, "w")]
    assert [(c.session_id, c.idx) for c in dag.claimed(moved)] == [(7, 2), (7, 5), (8, 1)]
    assert {c.state for c in dag.requeued(moved)} == {NodeState.QUEUED}


def test_changes_into_and_out_of_queued_move_the_queues_of_their_runners() -> None:
    changes = [
        *dag.claimed([dag.Moved(7, 0, 1, "w", 2.0), dag.Moved(7, 1, 1, "w", 2.0)]),
        *dag.became_ready([dag.ReleasedChild(7, 5, NodeState.QUEUED, "x")])[0],
        *dag.requeued([dag.Moved(8, 2, 1, "w")]),
        *dag.cancelled(8, [dag.CancelledNode(3, NodeState.QUEUED, 0, None, "w")], "stop"),
        NodeChange(7, 9, NodeState.RUNNING, NodeState.SUCCEEDED, 1, runner="w"),
    ]
    assert queue_moves(changes) == [
        QueueMove(7, "w", queued=-2, dispatched=2, turns=4.0),
        QueueMove(7, "x", queued=1, dispatched=0, turns=0.0),
        QueueMove(8, "w", queued=0, dispatched=0, turns=0.0),
    ]
    with pytest.raises(ValueError, match="without its Runner"):
        queue_moves([NodeChange(7, 0, NodeState.WAITING, NodeState.QUEUED, 0)])


# --- Session bookkeeping -----------------------------------------------------------------------


def session(open_nodes: int, state: SessionState = SessionState.PENDING) -> SessionBook:
    return SessionBook(7, "s-1", state, 10, open_nodes, 0, 0, None)


def test_the_first_claim_starts_the_session_and_logs_both_changes() -> None:
    books, events = book(
        {7: session(2)}, [NodeChange(7, 0, NodeState.QUEUED, NodeState.RUNNING, 1)], T0
    )
    (b,) = books
    assert b.state is SessionState.RUNNING and b.start_time == T0 and b.event_seq == 12
    assert [(e.seq, e.idx, e.state) for e in events] == [(11, 0, "running"), (12, None, "running")]


def test_the_last_open_node_ends_the_session_failed_if_any_failed() -> None:
    changes = [
        NodeChange(7, 0, NodeState.RUNNING, NodeState.FAILED, 3),
        NodeChange(7, 1, NodeState.WAITING, NodeState.UPSTREAM_FAILED, 0),
    ]
    (b,), events = book({7: session(2, SessionState.RUNNING)}, changes, T0)
    assert b.open_nodes == 0 and b.failed_nodes == 1
    assert b.state is SessionState.FAILED and b.end_time == T0
    assert events[-1].idx is None and events[-1].state == "failed"


def test_a_retry_keeps_the_session_open_and_a_cancel_records_its_reason() -> None:
    retry = [NodeChange(7, 0, NodeState.RUNNING, NodeState.RETRY_WAIT, 1)]
    (b,), _ = book({7: session(1, SessionState.RUNNING)}, retry, T0)
    assert b.state is SessionState.RUNNING and b.open_nodes == 1
    cancel = [NodeChange(7, 0, NodeState.RETRY_WAIT, NodeState.CANCELLED, 1)]
    (c,), events = book(
        {7: session(1, SessionState.RUNNING)}, cancel, T0, cancel_reasons={7: "enough"}
    )
    assert c.state is SessionState.CANCELLED and c.state_reason == "enough"
    assert events[-1].detail == {"reason": "enough"}


def test_a_claim_that_got_fewer_than_it_asked_for_drained_its_runner() -> None:
    assert dag.drained(
        [
            ("a", None, 4, 2),  # drained
            ("b", None, 4, 4),  # took all it asked for: more may wait
            ("c", ("t1",), 4, 0),  # one template's queue says nothing of the Runner's
        ]
    ) == {"a"}
