"""The dispatch order's rules without a database: shares of levels, keys and Sessions, turns
over rounds of dispatches, queues that come back, and the critical path of a DAG."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import timedelta

import pytest

from scheduler.domain.dispatch_order import (
    DEFAULT_PRIORITY,
    MIN_DURATION_SAMPLES,
    QUANTUM,
    DispatchPolicy,
    Durations,
    Queue,
    charge,
    critical_path,
    grants,
    moved_to,
    node_costs,
    pending,
    priority_of,
    priority_problem,
    resumed,
    strides,
)

# Shares task by task (turns of one task), to check them exactly; the default quantum has its
# own tests below.
ONE = DispatchPolicy(quantum=1)


class Runner:
    """A Runner's queues as the store keeps them: claims charge them, new work resumes them."""

    def __init__(self, policy: DispatchPolicy = ONE) -> None:
        self.policy = policy
        self.queues: dict[int, Queue] = {}
        self.dispatched: list[int] = []

    def add(self, session_id: int, tasks: int, *, priority: int = 5, key: str = "") -> None:
        """A Session's tasks become ready (a new Session, or nodes released)."""
        self.queues.setdefault(session_id, Queue(session_id, priority, key, 0))
        moved = pending(list(self.queues.values()), {session_id: tasks})
        self.queues = {q.session_id: q for q in moved}

    def claim(self, credits: int) -> Counter[int]:
        got = grants(list(self.queues.values()), credits, self.policy)
        for session_id, grant in got.items():
            q = self.queues[session_id]
            self.queues[session_id] = charge(q, grant.tasks, grant.turns)
            self.dispatched += [session_id] * grant.tasks
        return Counter({session_id: grant.tasks for session_id, grant in got.items()})


def test_sessions_share_a_runner_equally_whatever_they_made_ready() -> None:
    runner = Runner()
    runner.add(1, 10_000)
    runner.add(2, 10)
    runner.claim(10)
    assert Counter(runner.dispatched) == {1: 5, 2: 5}


def test_a_small_session_behind_a_huge_one_starts_at_once() -> None:
    runner = Runner()
    runner.add(1, 10_000)
    for _ in range(100):
        runner.claim(4)
    runner.add(2, 3)
    assert runner.claim(4) == {2: 2, 1: 2}
    assert runner.claim(4) == {2: 1, 1: 3}


def test_a_queue_that_comes_back_gets_no_credit_for_its_absence() -> None:
    runner = Runner()
    runner.add(1, 1000)
    runner.add(2, 1)
    runner.claim(2)
    for _ in range(50):  # session 2 has nothing ready for a while
        runner.claim(4)
    runner.add(2, 100)
    runner.claim(40)
    assert Counter(runner.dispatched[-40:]) == {1: 20, 2: 20}


def test_fairness_keys_share_by_weight_and_sessions_share_within_a_key() -> None:
    runner = Runner(DispatchPolicy(weights=(("a", 3.0),), quantum=1))
    runner.add(1, 1000, key="a")
    runner.add(2, 1000, key="a")
    runner.add(3, 1000, key="b")
    runner.add(4, 1000, key="")
    for _ in range(50):
        runner.claim(5)
    count = Counter(runner.dispatched)
    assert count == {1: 75, 2: 75, 3: 50, 4: 50}  # a : b : "" = 3 : 1 : 1


def test_higher_levels_go_first_and_lower_ones_still_progress() -> None:
    runner = Runner()
    runner.add(1, 1000, priority=4)
    runner.add(2, 1000, priority=5)
    runner.add(3, 1000, priority=6)
    for _ in range(111):
        runner.claim(1)
    assert Counter(runner.dispatched) == {3: 100, 2: 10, 1: 1}


def test_strict_priority_serves_a_level_only_while_no_higher_one_waits() -> None:
    runner = Runner(DispatchPolicy(strict_priority=True, quantum=1))
    runner.add(1, 5, priority=4)
    runner.add(2, 50, priority=6)
    runner.add(3, 50, priority=6, key="other")
    assert runner.claim(60) == {2: 30, 3: 30}
    assert runner.claim(60) == {2: 20, 3: 20, 1: 5}


def test_a_new_higher_level_overtakes_the_backlog_at_once() -> None:
    runner = Runner()
    runner.add(1, 1000, priority=3)
    runner.claim(7)
    runner.add(2, 20, priority=7)
    assert runner.claim(20) == {2: 20}


def test_strides_are_the_inverse_shares() -> None:
    queues = [
        Queue(1, 5, "a", 3),
        Queue(2, 5, "a", 3),
        Queue(3, 5, "b", 3),
        Queue(4, 4, "", 3),
        Queue(5, 5, "b", 0),  # empty: no share
    ]
    policy = DispatchPolicy(weights=(("a", 2.0),), priority_ratio=4.0)
    # Level 5: a (weight 2, two Sessions) and b (weight 1): shares 1/3, 1/3, 1/3.
    assert strides(queues, policy) == {1: 3.0, 2: 3.0, 3: 3.0, 4: 4.0}
    assert strides(queues, replace(policy, strict_priority=True))[4] == 1.0


def test_ties_go_to_the_session_with_fewer_dispatches_then_the_older_one() -> None:
    queues = [Queue(1, 5, "", 9, dispatched=4), Queue(2, 5, "", 9), Queue(3, 5, "", 9)]
    assert {k: g.tasks for k, g in grants(queues, 1, ONE).items()} == {2: 1}
    assert {k: g.tasks for k, g in grants(queues, 2, ONE).items()} == {2: 1, 3: 1}


def test_a_lead_earned_at_a_dearer_stride_counts_for_one_turn_at_most() -> None:
    # Two level-5 Sessions shared the Runner with level 6 (each turn cost them 20); level 6
    # emptied, and one of them is 19 ahead of the other: it waits one turn, not nine.
    queues = [Queue(1, 5, "", 100, vtime=119.0), Queue(2, 5, "", 100, vtime=100.0)]
    got = grants(queues, 4, ONE)
    assert {k: g.tasks for k, g in got.items()} == {1: 2, 2: 2}
    assert got[1].turns == 102.0 - 119.0 + 2 * 2.0 and got[2].turns == 4.0


def test_a_batch_looks_at_a_bounded_number_of_turns() -> None:
    # 300 Sessions with 1,000 ready nodes each and 256 credits: each may have at most
    # 2 * ceil(256 / 256) + 1 = 3 tasks (2 + QUANTUM with turns of QUANTUM), not 256.
    queues = [Queue(i, 5, "", 1000, vtime=float(i % 3)) for i in range(300)]
    got = grants(queues, 256, ONE)
    assert sum(g.tasks for g in got.values()) == 256 and max(g.tasks for g in got.values()) <= 3
    got = grants(queues, 256, DispatchPolicy())
    assert sum(g.tasks for g in got.values()) == 256
    assert max(g.tasks for g in got.values()) <= 2 + QUANTUM


def test_a_batch_takes_a_few_sessions_a_turn_each_not_one_task_from_many() -> None:
    runner = Runner(DispatchPolicy())
    for session_id in range(500):
        runner.add(session_id, 20)
    assert runner.claim(32) == {i: QUANTUM for i in range(32 // QUANTUM)}
    # Over many batches the shares are still equal.
    for _ in range(99):
        runner.claim(32)
    count = Counter(runner.dispatched)  # equal, up to one turn
    assert len(count) == 500 and max(count.values()) - min(count.values()) <= QUANTUM


def test_in_turns_a_small_session_still_starts_at_once_and_weights_still_hold() -> None:
    runner = Runner(DispatchPolicy(weights=(("a", 3.0),)))
    runner.add(1, 10_000, key="a")
    runner.add(2, 10_000, key="b")
    for _ in range(100):
        runner.claim(8)
    count = Counter(runner.dispatched)
    assert 2.7 <= count[1] / count[2] <= 3.3
    # A small Session of the lighter key (a quarter of the Runner, now for two Sessions):
    # its turn comes within the key's next turn, and no one is starved meanwhile.
    runner.add(3, 3, key="b")
    got = runner.claim(8) + runner.claim(8) + runner.claim(8) + runner.claim(8)
    assert got[3] == 3 and got[2] > 0


def test_a_queue_resumes_at_the_front_of_its_level_else_of_the_runner() -> None:
    others = [Queue(1, 5, "", 3, vtime=40.0), Queue(2, 6, "", 3, vtime=90.0), Queue(3, 5, "", 0)]
    assert resumed(0.0, 5, others) == 40.0
    assert resumed(70.0, 5, others) == 70.0  # never back to before its own past
    assert resumed(0.0, 7, others) == 40.0
    assert resumed(5.0, 7, []) == 5.0
    # The same, for a claim that sees a transaction's own moves before they are written.
    seen = pending(others, {3: 2, 1: -1, 2: 0})
    assert [(q.queued, q.vtime) for q in seen] == [(2, 40.0), (3, 90.0), (2, 40.0)]
    assert moved_to(6, others, 500.0) == 90.0  # a change of level takes effect at once
    assert moved_to(7, [], 500.0) == 500.0


def test_priorities_default_from_the_template_then_the_scheduler() -> None:
    assert priority_of(0) == DEFAULT_PRIORITY
    assert priority_of(0, 8) == 8 and priority_of(2, 8) == 2
    assert priority_problem(0, unset_allowed=True) is None
    assert priority_problem(0, unset_allowed=False) is not None
    assert "1 (lowest) to 9 (highest)" in (priority_problem(10, unset_allowed=True) or "")


# --- the critical path ---------------------------------------------------------------------------


def test_a_node_ranks_by_its_longest_remaining_path() -> None:
    #   0 -> 1 -> 3
    #   0 -> 2 ----^     4 alone
    upstream: list[list[int]] = [[], [0], [0], [1, 2], []]
    assert critical_path(upstream, [1.0] * 5) == [3.0, 2.0, 2.0, 1.0, 1.0]
    assert critical_path(upstream, [1.0, 5.0, 1.0, 1.0, 9.0]) == [7.0, 6.0, 2.0, 1.0, 9.0]
    # Listed in any order (a node may come before its upstream nodes).
    assert critical_path([[1], [], [0]], [1.0, 1.0, 1.0]) == [2.0, 3.0, 1.0]


def seconds(*values: float) -> Durations:
    return Durations(tuple(timedelta(seconds=v) for v in values))


def test_durations_weigh_nodes_once_a_template_has_enough_samples() -> None:
    assert seconds(*[1.0] * (MIN_DURATION_SAMPLES - 1)).median is None
    assert seconds(1, 2, 3, 50, 60).median == timedelta(seconds=3)
    # Nothing known: node counts.
    assert node_costs(["a", "b", "a"], {"a": seconds(9, 9)}) == [1.0, 1.0, 1.0]
    # Known ones weigh their median; an unknown template, the median of the known ones.
    known = {"a": seconds(2, 2, 2, 2, 2), "b": seconds(6, 6, 6, 6, 6)}
    assert node_costs(["a", "b", "c"], known) == [2.0, 6.0, 4.0]


@pytest.mark.parametrize("credits", [1, 7, 64])
def test_a_batch_takes_what_single_claims_would_have_taken(credits: int) -> None:
    """One claim of n tasks and n claims of one agree on the shares (up to the last turn)."""
    batch, single = Runner(), Runner()
    for runner in (batch, single):
        runner.add(1, 500, key="a")
        runner.add(2, 500, key="b", priority=6)
        runner.add(3, 500, key="b")
    for _ in range(4):
        batch.claim(credits)
        for _ in range(credits):
            single.claim(1)
    assert Counter(batch.dispatched) == Counter(single.dispatched)
