"""Results: outcomes posted by runners, settled by group commit, and the timekeeper's failures
of expired attempts, settled in its own (fenced) unit of work (which claims nothing along).

Whatever arrives while one settlement runs goes into the next: one transaction locks the nodes
the batch names, reads the verdicts already recorded for its attempts (after the lock, so a
verdict another replica committed meanwhile is seen), judges the rest (``domain.verdicts``),
decides their consequences for the DAG (``domain.dag``), applies them, and claims along for
this replica's credits where work became ready (the hand-off: the tasks are pushed right after
the commit, with no second transaction). A batch that loses to a concurrent change (a deadlock,
a serialization failure) is tried again after a short backoff.

A bad item never fails its batch: when a batch's statements fail for a reason of the data, its
items are settled one by one, and one that fails alone is failed itself, permanently, with the
reason as its error (or, when even that cannot be stored, answered with the error alone).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from scheduler.domain import dag
from scheduler.domain.artifacts import file_problems, references_in
from scheduler.domain.backoff import Backoff, Retries
from scheduler.domain.clock import Clock
from scheduler.domain.errors import Aborted, Internal, PermissionDenied
from scheduler.domain.leadership import Term
from scheduler.domain.limits import Limits
from scheduler.domain.ports import ClaimPlanner, Store, UnitOfWork
from scheduler.domain.runner_protocol import ClaimedTask, ClaimRequest
from scheduler.domain.telemetry import NO_TELEMETRY, Answered, Settled, Telemetry
from scheduler.domain.verdicts import (
    STALE_UNKNOWN,
    EarlierVerdict,
    ExpiredAttempt,
    Outcome,
    OutcomeKind,
    Reply,
    ResultStatus,
    bounded,
    credits_back,
    expiry_outcome,
    judge,
    remembered,
    repeated,
)
from scheduler.service.batcher import Batcher
from scheduler.service.runner_protocol.authorisation import Authorisation
from scheduler.service.runner_protocol.handoff import HandOff, Reservation
from scheduler.service.runner_protocol.leases import Leases
from scheduler.service.runner_protocol.settings import ProtocolSettings

log = logging.getLogger(__name__)

CONFLICT_RETRY: Final = Backoff(timedelta(seconds=0.05), timedelta(seconds=1))
CONFLICT_TRIES: Final = 5


@dataclass(frozen=True, slots=True)
class _Posted:
    runner: str | None  # None: the scheduler itself (expiry, an instance gone)
    outcome: Outcome


@dataclass(slots=True)
class Judgement:
    """What one unit of work decided: the answer to each attempt and the outcome that decided
    it, what telemetry hears once it has committed, and the tasks it claimed along (one list
    per claim the hand-off planned)."""

    answers: dict[str, Reply]
    first: dict[str, Outcome]
    settled: list[Settled]
    answered: list[Answered]
    claimed: list[list[ClaimedTask]] = field(default_factory=list)


class Results:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: ProtocolSettings,
        limits: Limits,
        authorisation: Authorisation,
        leases: Leases,
        *,
        rng: random.Random,
        telemetry: Telemetry = NO_TELEMETRY,
        hand_off: Callable[[], HandOff],
    ) -> None:
        """``hand_off()``: the dispatch (built after this)."""
        self._hand_off = hand_off
        self._store = store
        self._telemetry = telemetry
        self._clock = clock
        self._limits = limits
        self._authorisation = authorisation
        self._leases = leases
        self._rng = rng
        self._batcher: Batcher[_Posted, Reply] = Batcher(
            self._flush, max_batch=settings.max_result_batch
        )

    async def stop(self) -> None:
        await self._batcher.close()

    async def post(self, runner: str, outcome: Outcome) -> Reply:
        """A runner's outcome for an attempt; PermissionDenied if the attempt is not its own."""
        self._hand_off().returned(runner, credits_back([outcome]))
        reply = await self._batcher.submit(_Posted(runner, bounded(outcome)))
        if reply.status is ResultStatus.FORBIDDEN:
            raise PermissionDenied(reply.message)
        return reply

    async def post_many(self, runner: str, outcomes: Sequence[Outcome]) -> list[Reply]:
        """A runner's outcomes, settled together; PermissionDenied if any attempt is not its
        own (the others are settled all the same)."""
        self._hand_off().returned(runner, credits_back(outcomes))
        replies = await self._batcher.submit_many([_Posted(runner, bounded(o)) for o in outcomes])
        for reply in replies:
            if reply.status is ResultStatus.FORBIDDEN:
                raise PermissionDenied(reply.message)
        return replies

    async def release(self, task: ClaimedTask) -> None:
        """Give back a task claimed for an instance that went away before it was sent."""
        outcome = Outcome(task.attempt_id, OutcomeKind.RELEASE, message="instance went away")
        await self._batcher.submit(_Posted(None, outcome))

    async def expire_in(
        self, work: UnitOfWork, expired: Sequence[ExpiredAttempt], now: datetime
    ) -> Judgement:
        """Fail attempts whose lease or time ran out (retryable), in the timekeeper's unit of
        work; ``committed(judgement, now)`` once it has committed."""
        items = [_Posted(None, expiry_outcome(e)) for e in expired]
        return await self._judge(work, items, now)

    async def expire_one_by_one(
        self, term: Term, expired: Sequence[ExpiredAttempt], now: datetime
    ) -> None:
        """Fail expired attempts each in a fenced transaction of its own (after a batch of
        them failed for a reason of the data): one whose failure cannot be stored fails
        permanently, with the reason as its error."""
        for attempt in expired:
            item = _Posted(None, expiry_outcome(attempt))
            try:
                async with self._store.fenced(term) as work:
                    judgement = await self._judge(work, [item], now)
            except Internal as error:
                log.warning(
                    "the expiry of attempt %s cannot be stored: %s",
                    attempt.attempt_id,
                    error.message,
                )
                message = (
                    f"the scheduler could not store this attempt's expiry ({error.message});"
                    " the attempt failed"
                )
                outcome = Outcome(
                    attempt.attempt_id, OutcomeKind.FAILURE, retryable=False, message=message
                )
                async with self._store.fenced(term) as work:
                    judgement = await self._judge(work, [_Posted(None, outcome)], now)
            self.committed(judgement, now)

    def committed(self, judgement: Judgement, now: datetime) -> None:
        """A judgement's unit of work committed: telemetry hears of it, and the settled
        attempts' leases are forgotten."""
        self._telemetry.settled(judgement.settled, judgement.answered, now)
        for attempt_id, reply in judgement.answers.items():
            if reply.status is not ResultStatus.FORBIDDEN:
                self._leases.forget(attempt_id)

    async def fail(self, task: ClaimedTask, message: str) -> None:
        """Fail a claimed task that cannot be sent (permanently: every attempt would fail)."""
        outcome = Outcome(task.attempt_id, OutcomeKind.FAILURE, retryable=False, message=message)
        await self._batcher.submit(_Posted(None, outcome))

    async def _flush(self, items: Sequence[_Posted]) -> list[Reply]:
        try:
            return await self._settle_retrying(items)
        except Internal as error:
            if len(items) == 1:
                return [await self._isolated(items[0], error)]
            log.warning(
                "a settlement of %d outcomes failed (%s); settling them one by one",
                len(items),
                error.message,
            )
        replies = []
        for item in items:
            try:
                replies.append((await self._settle_retrying([item]))[0])
            except Internal as error:
                replies.append(await self._isolated(item, error))
        return replies

    async def _isolated(self, item: _Posted, error: Internal) -> Reply:
        """An outcome that cannot be settled on its own: its attempt fails with the reason."""
        attempt_id = item.outcome.attempt_id
        log.warning("the outcome for attempt %s cannot be stored: %s", attempt_id, error.message)
        message = (
            f"the scheduler could not store this attempt's {item.outcome.kind.value} outcome"
            f" ({error.message}); the attempt failed"
        )
        failure = _Posted(
            item.runner,
            Outcome(attempt_id, OutcomeKind.FAILURE, retryable=False, message=message),
        )
        (reply,) = await self._settle_retrying([failure])
        if reply.status is ResultStatus.ACCEPTED:
            return Reply(ResultStatus.REJECTED_INVALID, message)
        return reply

    async def _settle_retrying(self, items: Sequence[_Posted]) -> list[Reply]:
        retries = Retries(CONFLICT_RETRY, self._rng)
        try:
            while True:
                try:
                    return await self._settle(items)
                except Aborted:
                    if retries.failures + 1 >= CONFLICT_TRIES:
                        raise
                    await asyncio.sleep(retries.wait())
        finally:
            # With outcomes waiting, the next settlement claims along at once.
            if not self._batcher.waiting:
                self._hand_off().settled()

    async def _settle(self, items: Sequence[_Posted]) -> list[Reply]:
        now = self._clock.now()
        hand_off = self._hand_off()
        reservations: list[Reservation] = []

        def claims(ready: Set[str]) -> list[ClaimRequest]:
            reservations.extend(hand_off.plan(ready, now))
            return [r.request for r in reservations]

        try:
            async with self._store.transaction() as work:
                judgement = await self._judge(work, items, now, claims)
        except BaseException:
            hand_off.abandoned(reservations)
            raise
        self.committed(judgement, now)
        hand_off.handed(reservations, judgement.claimed)
        answers, first = judgement.answers, judgement.first
        return [self._answer(answers, first, i.outcome) for i in items]

    async def _judge(
        self,
        work: UnitOfWork,
        items: Sequence[_Posted],
        now: datetime,
        claims: ClaimPlanner | None = None,
    ) -> Judgement:
        """Judge the outcomes and apply what they mean, in ``work``; with ``claims``, claim
        along where that made work ready (the hand-off)."""
        ids = list(dict.fromkeys(i.outcome.attempt_id for i in items))
        answers: dict[str, Reply] = {}
        first: dict[str, Outcome] = {}  # the outcome that decided each attempt's answer
        answered: list[Answered] = []
        settled: list[Settled] = []
        # Lock first: a verdict is read, and decided, only while its node is held.
        held = await work.tasks.held(ids)
        earlier = await work.tasks.earlier_verdicts(ids)
        owners = await self._owners(work, [i for i in items if i.outcome.attempt_id in held])
        judged: list[dag.Judged] = []
        for item in items:
            attempt_id = item.outcome.attempt_id
            if attempt_id in answers:
                continue
            first[attempt_id] = item.outcome
            if attempt_id in earlier:
                reply = answers[attempt_id] = repeated(earlier[attempt_id], item.outcome)
                answered.append(Answered(item.runner, item.outcome.kind, reply.status))
                continue
            node = held.get(attempt_id)
            if node is None:
                answers[attempt_id] = STALE_UNKNOWN
                answered.append(Answered(item.runner, item.outcome.kind, STALE_UNKNOWN.status))
                continue
            forbidden = self._authorisation.may_settle(item.runner, node)
            if forbidden is not None:
                answers[attempt_id] = Reply(ResultStatus.FORBIDDEN, forbidden)
                answered.append(Answered(item.runner, item.outcome.kind, ResultStatus.FORBIDDEN))
                continue
            verdict = judge(
                node,
                item.outcome,
                now=now,
                rng=self._rng,
                max_output_bytes=self._limits.max_output_bytes,
                bad_files=(
                    file_problems(item.outcome.outputs, owners, node.session_id)
                    if item.outcome.kind is OutcomeKind.SUCCESS
                    else ""
                ),
            )
            answers[attempt_id] = verdict.reply
            posted = item.runner is not None
            judged.append(
                dag.Judged(
                    node, item.outcome, verdict, remembered(item.outcome, posted_by_runner=posted)
                )
            )
            settled.append(_settled(judged[-1], posted_by_runner=posted))
        claimed = await work.tasks.settle(dag.settle(judged), now, claims)
        return Judgement(answers, first, settled, answered, claimed)

    @staticmethod
    def _answer(answers: dict[str, Reply], first: dict[str, Outcome], outcome: Outcome) -> Reply:
        """The answer to one item of the batch; a second item for the same attempt gets the
        first one's answer if it is the same kind of outcome, a refusal if not."""
        reply = answers[outcome.attempt_id]
        decided = first.get(outcome.attempt_id)
        if decided is None or decided is outcome or reply.status is ResultStatus.FORBIDDEN:
            return reply
        return repeated(EarlierVerdict(reply, decided.kind), outcome)

    @staticmethod
    async def _owners(work: UnitOfWork, items: Sequence[_Posted]) -> dict[str, int | None]:
        """The Session of each artefact the successes refer to (one query for the batch)."""
        ids = {
            artifact_id
            for item in items
            if item.outcome.kind is OutcomeKind.SUCCESS
            for artifact_id in references_in(item.outcome.outputs)[0]
        }
        return await work.artifacts.owners(sorted(ids)) if ids else {}


def _settled(judged: dag.Judged, *, posted_by_runner: bool) -> Settled:
    outcome, verdict = judged.outcome, judged.verdict
    expiry = ""
    if outcome.kind is OutcomeKind.FAILURE and not posted_by_runner:
        expiry = str(outcome.details.get("reason", ""))
    return Settled(
        node=judged.node,
        kind=outcome.kind,
        status=verdict.status,
        new_state=verdict.new_state,
        posted_by_runner=posted_by_runner,
        message=verdict.message or outcome.message,
        not_before=verdict.not_before,
        expiry=expiry,
    )
