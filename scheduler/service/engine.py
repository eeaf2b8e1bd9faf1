"""The runner protocol's engine: claims pushed to instances, results, leases, the timekeeper.

- Claims: one dispatcher per (Runner, template subset) holds the credits of the connected
  instances and claims for all of them in one statement when woken (a local commit or a
  NOTIFY made work ready, or an instance granted credits). Nothing polls.
- Results, lease extensions and expiries go through group-commit batchers: one transaction
  for whatever arrived while the previous one ran.
- Heartbeats cost no database write while the lease in PostgreSQL still has more than half
  its duration left; only then is it pushed out, for every due attempt in one statement.
- The timekeeper (one replica at a time) fails attempts whose lease or time ran out and
  requeues retries whose backoff passed, sleeping until the earliest such deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg

from scheduler.domain import credentials
from scheduler.domain.clock import Clock
from scheduler.domain.errors import PermissionDenied, Unauthenticated
from scheduler.domain.ports import Store
from scheduler.domain.sessions import (
    ClaimedTask,
    HeldNode,
    NodeError,
    NodeState,
    Outcome,
    OutcomeKind,
    ResultStatus,
    Settled,
    judge,
)
from scheduler.service.batcher import Batcher
from scheduler.service.leadership import DATABASE_ERRORS, lead_forever
from scheduler.service.signals import Signals

log = logging.getLogger(__name__)

TIMEKEEPER_LOCK: Final = 0x48454154544B5052  # "HEATTKPR"
_RETRYABLE_DB_ERRORS: Final = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)
_TIMEKEEPER_BATCH: Final = 500
_CREDENTIAL_TTL: Final = timedelta(seconds=10)
_PRUNE_AT: Final = 50_000


@dataclass(frozen=True, slots=True)
class EngineSettings:
    lease_duration: timedelta = timedelta(seconds=30)
    heartbeat_interval: timedelta = timedelta(seconds=10)
    max_claim_batch: int = 256
    max_result_batch: int = 512
    max_output_bytes: int = 1024 * 1024
    # Whether idle instances are drained (a provisioner starts and stops them).
    drain_idle: bool = False


@dataclass(frozen=True, slots=True)
class Drain:
    reason: str
    deadline: datetime | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    leases: list[tuple[str, datetime]]
    cancellations: list[tuple[str, str]]
    lost: list[str]
    drain: Drain | None
    interval: timedelta


@dataclass(eq=False)
class Instance:
    """A runner instance with an open ClaimTask stream."""

    runner: str
    instance_id: str
    templates: tuple[str, ...] | None
    credits: int
    outbox: asyncio.Queue[ClaimedTask | Drain] = field(default_factory=asyncio.Queue)
    connected: bool = True
    drain: Drain | None = None
    held: set[str] = field(default_factory=set)
    idle_period: timedelta | None = None  # None: nobody scales this Runner down
    idle_timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Dispatcher:
    runner: str
    templates: tuple[str, ...] | None
    instances: dict[str, Instance] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    unsubscribe: Callable[[], None] | None = None

    def allocate(self, limit: int) -> list[Instance]:
        """Reserve up to ``limit`` credits, round robin, so a batch spreads over instances."""
        owners: list[Instance] = []
        live = [i for i in self.instances.values() if i.connected and not i.drain]
        while len(owners) < limit:
            took = False
            for instance in live:
                if instance.credits > 0 and len(owners) < limit:
                    instance.credits -= 1
                    owners.append(instance)
                    took = True
            if not took:
                break
        return owners


@dataclass(frozen=True, slots=True)
class _Posted:
    runner: str | None  # None: the timekeeper, which may settle any attempt
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class _LeaseState:
    held: bool
    deadline: datetime | None = None
    cancelled: bool = False


class Engine:
    def __init__(
        self,
        store: Store,
        signals: Signals,
        clock: Clock,
        settings: EngineSettings,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._signals = signals
        self._clock = clock
        self.settings = settings
        self._rng = rng or random.Random()  # noqa: S311 (backoff jitter, not secrets)
        self._background: set[asyncio.Task[object]] = set()
        self._dispatchers: dict[tuple[str, tuple[str, ...] | None], _Dispatcher] = {}
        self._instances: dict[str, Instance] = {}
        # Which instance holds an attempt, and where its Heartbeat stream takes pushes; a
        # Heartbeat stream may outlive the ClaimTask stream (an instance draining).
        self._holder: dict[str, str] = {}
        self._pushes: dict[str, asyncio.Queue[Any]] = {}
        self._known_leases: dict[str, datetime] = {}
        self._cancelled: dict[str, str] = {}
        self._credentials: dict[bytes, tuple[str | None, datetime]] = {}
        self._results: Batcher[_Posted, tuple[ResultStatus, str]] = Batcher(
            self._flush_results, max_batch=settings.max_result_batch
        )
        self._leases: Batcher[tuple[str, str], _LeaseState] = Batcher(
            self._flush_leases, max_batch=settings.max_result_batch
        )
        self._timekeeper: asyncio.Task[None] | None = None
        self._tick = asyncio.Event()
        self._sleep_until: datetime | None = None
        self._unsubscribe_cancel = signals.on_cancel(self._on_cancelled)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._timekeeper = asyncio.create_task(self._keep_time(), name="timekeeper")

    async def stop(self) -> None:
        tasks = [d.task for d in self._dispatchers.values() if d.task is not None]
        if self._timekeeper is not None:
            tasks.append(self._timekeeper)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._results.close()
        await self._leases.close()
        self._unsubscribe_cancel()

    # -- authentication --------------------------------------------------------------------

    async def authenticate(self, secret: str | None) -> str:
        """The Runner a bearer credential belongs to. Cached briefly: revocation takes
        effect within seconds without a query per message."""
        if not secret:
            raise Unauthenticated(
                "no runner credential: send metadata 'authorization: Bearer <secret>' "
                "(issue one with RegistryService/IssueRunnerCredential)"
            )
        digest = credentials.digest(secret)
        now = self._clock.now()
        cached = self._credentials.get(digest)
        if cached is None or cached[1] < now:
            async with self._store.transaction() as tx:
                runner = await tx.runner_of_credential(digest)
            if len(self._credentials) > 10_000:
                self._credentials.clear()
            cached = (runner, now + _CREDENTIAL_TTL)
            self._credentials[digest] = cached
        if cached[0] is None:
            raise Unauthenticated("the runner credential is unknown or revoked")
        return cached[0]

    # -- the ClaimTask stream --------------------------------------------------------------

    def connect(
        self, runner: str, instance_id: str, templates: Sequence[str], credits: int
    ) -> Instance:
        key = (runner, tuple(sorted(set(templates))) or None)
        previous = self._instances.get(instance_id)
        if previous is not None and previous.runner != runner:
            raise PermissionDenied(
                f"instance {instance_id!r} is connected for runner {previous.runner!r}"
            )
        if previous is not None:
            # The same instance reconnected (its old stream may not have noticed yet).
            self.disconnect(previous)
        instance = Instance(runner, instance_id, key[1], max(credits, 0))
        self._instances[instance_id] = instance
        dispatcher = self._dispatchers.get(key)
        if dispatcher is None:
            dispatcher = _Dispatcher(runner, key[1])
            dispatcher.unsubscribe = self._signals.on_ready(runner, dispatcher.wake.set)
            dispatcher.task = asyncio.create_task(
                self._dispatch(dispatcher), name=f"dispatch-{runner}"
            )
            self._dispatchers[key] = dispatcher
        dispatcher.instances[instance_id] = instance
        dispatcher.wake.set()
        if self.settings.drain_idle:
            self._spawn(self._arm_idle(instance))
        return instance

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _arm_idle(self, instance: Instance) -> None:
        async with self._store.transaction() as tx:
            found = await tx.runners_by_name([instance.runner])
        runner = found.get(instance.runner)
        if runner is not None:
            instance.idle_period = runner.idle_period
            self._idle(instance)

    def _busy(self, instance: Instance, attempt_id: str) -> None:
        instance.held.add(attempt_id)
        if instance.idle_timer is not None:
            instance.idle_timer.cancel()
            instance.idle_timer = None

    def _idle(self, instance: Instance) -> None:
        """The instance holds nothing now: drain it if that lasts for its Runner's idle period."""
        if instance.held or instance.idle_period is None or not instance.connected:
            return
        if instance.idle_timer is not None:
            instance.idle_timer.cancel()
        instance.idle_timer = asyncio.get_running_loop().call_later(
            instance.idle_period.total_seconds(),
            lambda: self._spawn(self._drain_if_idle(instance)),
        )

    async def _drain_if_idle(self, instance: Instance) -> None:
        instance.idle_timer = None
        if instance.held or not instance.connected or instance.drain is not None:
            return
        assert instance.idle_period is not None
        async with self._store.transaction() as tx:
            granted = await tx.claim_drain(
                instance.instance_id, instance.runner, "idle", self._clock.now()
            )
        if granted:
            seconds = instance.idle_period.total_seconds()
            log.info("draining idle instance %s (idle %gs)", instance.instance_id, seconds)
            self.drain(instance.instance_id, f"idle for {seconds:g}s")
        else:
            # The Runner wants every instance it has; look again after another idle period.
            self._idle(instance)

    def grant(self, instance: Instance, credits: int) -> None:
        if credits <= 0 or not instance.connected:
            return
        instance.credits += credits
        dispatcher = self._dispatchers.get((instance.runner, instance.templates))
        if dispatcher is not None:
            dispatcher.wake.set()

    def disconnect(self, instance: Instance) -> None:
        instance.connected = False
        if instance.idle_timer is not None:
            instance.idle_timer.cancel()
            instance.idle_timer = None
        if self._instances.get(instance.instance_id) is instance:
            del self._instances[instance.instance_id]
        dispatcher = self._dispatchers.get((instance.runner, instance.templates))
        if dispatcher is not None and dispatcher.instances.get(instance.instance_id) is instance:
            del dispatcher.instances[instance.instance_id]
        # Tasks claimed for it but not yet sent go straight back to the queue.
        while not instance.outbox.empty():
            item = instance.outbox.get_nowait()
            if isinstance(item, ClaimedTask):
                self._release_later(item)

    def drain(self, instance_id: str, reason: str, deadline: datetime | None = None) -> bool:
        """Ask an instance to stop claiming and exit once it holds nothing."""
        instance = self._instances.get(instance_id)
        if instance is None:
            return False
        instance.drain = Drain(reason, deadline)
        instance.outbox.put_nowait(instance.drain)
        return True

    def instances(self) -> list[Instance]:
        return list(self._instances.values())

    async def _dispatch(self, dispatcher: _Dispatcher) -> None:
        delay = 0.05
        while True:
            await dispatcher.wake.wait()
            dispatcher.wake.clear()
            while True:
                owners = dispatcher.allocate(self.settings.max_claim_batch)
                if not owners:
                    break
                try:
                    tasks = await self._claim(dispatcher, owners)
                except DATABASE_ERRORS as exc:
                    for owner in owners:
                        owner.credits += 1
                    log.warning("claim for runner %s failed: %s; retrying", dispatcher.runner, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    dispatcher.wake.set()
                    break
                delay = 0.05
                for owner in owners[len(tasks) :]:
                    owner.credits += 1
                for task in tasks:
                    instance = self._instances.get(task.owner)
                    if instance is None or not instance.connected:
                        self._release_later(task)
                        continue
                    self._holder[task.attempt_id] = instance.instance_id
                    self._busy(instance, task.attempt_id)
                    instance.outbox.put_nowait(task)
                if len(tasks) < len(owners):
                    break

    async def _claim(self, dispatcher: _Dispatcher, owners: list[Instance]) -> list[ClaimedTask]:
        now = self._clock.now()
        deadline = now + self.settings.lease_duration
        async with self._store.transaction() as tx:
            tasks = await tx.claim(
                dispatcher.runner,
                dispatcher.templates,
                [o.instance_id for o in owners],
                deadline,
                now,
            )
            settled = await tx.notify() if tasks else None
        if settled is not None:
            self._after_commit(settled)
        for task in tasks:
            self._known_leases[task.attempt_id] = task.lease_deadline
        if tasks:
            self.deadline_written(min(t.attempt_deadline for t in tasks))
        if len(self._known_leases) > _PRUNE_AT:
            self._prune(now)
        return tasks

    def _prune(self, now: datetime) -> None:
        """Forget leases that ran out long ago: their attempts were settled by another
        replica (or expired), so no heartbeat or result will come here for them."""
        cutoff = now - self.settings.lease_duration
        for attempt_id, deadline in list(self._known_leases.items()):
            if deadline < cutoff:
                del self._known_leases[attempt_id]
        for attempt_id in [a for a in self._holder if a not in self._known_leases]:
            self._release_holder(attempt_id)

    def _release_later(self, task: ClaimedTask) -> None:
        outcome = Outcome(task.attempt_id, OutcomeKind.RELEASE, message="instance went away")
        self._spawn(self._results.submit(_Posted(None, outcome)))

    # -- results ---------------------------------------------------------------------------

    async def post(self, runner: str, outcome: Outcome) -> tuple[ResultStatus, str]:
        status, message = await self._results.submit(_Posted(runner, outcome))
        if status is ResultStatus.FORBIDDEN:
            raise PermissionDenied(message)
        return status, message

    async def _flush_results(self, items: Sequence[_Posted]) -> list[tuple[ResultStatus, str]]:
        for attempt in range(5):
            try:
                return await self._settle(items)
            except _RETRYABLE_DB_ERRORS:
                if attempt == 4:
                    raise
                await asyncio.sleep(self._rng.uniform(0, 0.05 * 2**attempt))
        raise AssertionError("unreachable")

    async def _settle(self, items: Sequence[_Posted]) -> list[tuple[ResultStatus, str]]:
        now = self._clock.now()
        ids = list(dict.fromkeys(i.outcome.attempt_id for i in items))
        answers: dict[str, tuple[ResultStatus, str]] = {}
        async with self._store.transaction() as tx:
            earlier = await tx.earlier_verdicts(ids)
            held = await tx.held_nodes([i for i in ids if i not in earlier])
            changes: list[
                tuple[HeldNode, NodeState, object, NodeError | None, datetime | None]
            ] = []
            verdicts: list[tuple[HeldNode, str, str]] = []
            downstream: dict[str, list[int]] = {}
            for item in items:
                attempt_id = item.outcome.attempt_id
                if attempt_id in answers:
                    continue
                if attempt_id in earlier:
                    status, message = earlier[attempt_id]
                    answers[attempt_id] = (ResultStatus(status), message)
                    continue
                if attempt_id not in held:
                    answers[attempt_id] = (
                        ResultStatus.REJECTED_STALE,
                        "unknown or superseded attempt: another attempt owns the task",
                    )
                    continue
                node, children = held[attempt_id]
                if item.runner is not None and node.runner != item.runner:
                    answers[attempt_id] = (
                        ResultStatus.FORBIDDEN,
                        f"attempt {attempt_id} belongs to runner {node.runner!r}, "
                        f"not {item.runner!r}",
                    )
                    continue
                verdict = judge(
                    node,
                    item.outcome,
                    now=now,
                    rng=self._rng,
                    max_output_bytes=self.settings.max_output_bytes,
                )
                answers[attempt_id] = (verdict.status, verdict.message)
                # Only what a runner posted is remembered for its repeats: the timekeeper's
                # own verdicts (expiry) must not answer a late post from the runner.
                if item.runner is not None and item.outcome.kind is not OutcomeKind.RELEASE:
                    verdicts.append((node, verdict.status.value, verdict.message))
                if verdict.new_state is not None:
                    changes.append(
                        (
                            node,
                            verdict.new_state,
                            item.outcome.outputs,
                            verdict.error,
                            verdict.not_before,
                        )
                    )
                    downstream[attempt_id] = children
            await tx.settle(changes, downstream, now)
            await tx.record_verdicts(verdicts, now)
            retry_at = min((c[4] for c in changes if c[4] is not None), default=None)
            if retry_at is not None:
                await tx.notify_tick(retry_at)
            settled = await tx.notify()
        self._after_commit(settled)
        for attempt_id, (status, _) in answers.items():
            if status is not ResultStatus.FORBIDDEN:
                self._forget(attempt_id)
        return [answers[i.outcome.attempt_id] for i in items]

    def _forget(self, attempt_id: str) -> None:
        self._known_leases.pop(attempt_id, None)
        self._cancelled.pop(attempt_id, None)
        self._release_holder(attempt_id)

    def _release_holder(self, attempt_id: str) -> None:
        holder = self._holder.pop(attempt_id, None)
        instance = self._instances.get(holder) if holder is not None else None
        if instance is not None:
            instance.held.discard(attempt_id)
            self._idle(instance)

    def _after_commit(self, settled: Settled) -> None:
        self._signals.ready(settled.ready_runners)
        self._signals.sessions_changed(settled.sessions)
        self._signals.cancelled(settled.cancelled_attempts)

    # -- heartbeats and cancellation -------------------------------------------------------

    def attach_heartbeats(self, instance_id: str, queue: asyncio.Queue[Any]) -> None:
        """Where to push replies unprompted (cancellations) for this instance's Heartbeat stream."""
        self._pushes[instance_id] = queue

    def detach_heartbeats(self, instance_id: str, queue: asyncio.Queue[Any]) -> None:
        if self._pushes.get(instance_id) is queue:
            del self._pushes[instance_id]

    async def heartbeat(
        self, runner: str, instance_id: str, attempt_ids: Sequence[str]
    ) -> HeartbeatReply:
        now = self._clock.now()
        ids = list(dict.fromkeys(attempt_ids))
        instance = self._instances.get(instance_id)
        if instance is not None and instance.runner != runner:
            raise PermissionDenied(
                f"instance {instance_id!r} belongs to runner {instance.runner!r}"
            )
        # Liveness stays in memory; the database hears only of leases about to run short.
        due = now + self.settings.lease_duration / 2
        stale = [
            a for a in ids if a not in self._cancelled and self._known_leases.get(a, now) <= due
        ]
        found = await self._leases.submit_many([(runner, a) for a in stale])
        states = dict(zip(stale, found, strict=True))
        leases: list[tuple[str, datetime]] = []
        cancellations: list[tuple[str, str]] = []
        lost: list[str] = []
        for attempt_id in ids:
            if attempt_id in self._cancelled:
                cancellations.append((attempt_id, self._cancelled[attempt_id]))
                continue
            state = states.get(attempt_id)
            if state is not None and state.cancelled:
                cancellations.append((attempt_id, "cancelled"))
            elif state is not None and not state.held:
                lost.append(attempt_id)
            elif attempt_id in self._known_leases:
                leases.append((attempt_id, self._known_leases[attempt_id]))
                self._holder[attempt_id] = instance_id
        for attempt_id in lost + [a for a, _ in cancellations]:
            self._forget(attempt_id)
        return HeartbeatReply(
            leases,
            cancellations,
            lost,
            instance.drain if instance is not None else None,
            self.settings.heartbeat_interval,
        )

    async def _flush_leases(self, items: Sequence[tuple[str, str]]) -> list[_LeaseState]:
        now = self._clock.now()
        deadline = now + self.settings.lease_duration
        by_runner: dict[str, list[str]] = {}
        for runner, attempt_id in items:
            by_runner.setdefault(runner, []).append(attempt_id)
        extended: set[str] = set()
        async with self._store.transaction() as tx:
            for runner, attempt_ids in by_runner.items():
                extended |= await tx.extend_leases(runner, attempt_ids, deadline)
            others = [a for _, a in items if a not in extended]
            states = await tx.attempt_states(others) if others else {}
        answers = []
        for runner, attempt_id in items:
            if attempt_id in extended:
                self._known_leases[attempt_id] = deadline
                answers.append(_LeaseState(True, deadline))
                continue
            found = states.get(attempt_id)
            if found is None or found[2] != runner:
                answers.append(_LeaseState(False))  # unknown, or another Runner's attempt
            elif found[0] is NodeState.RUNNING and found[1] is not None:
                self._known_leases[attempt_id] = found[1]
                answers.append(_LeaseState(True, found[1]))
            elif found[0] is NodeState.CANCELLED:
                answers.append(_LeaseState(False, cancelled=True))
            else:
                answers.append(_LeaseState(False))
        return answers

    def _on_cancelled(self, attempt_ids: list[str]) -> None:
        pushes: dict[str, list[tuple[str, str]]] = {}
        for attempt_id in attempt_ids:
            self._cancelled[attempt_id] = "cancelled"
            self._known_leases.pop(attempt_id, None)
            holder = self._holder.get(attempt_id)
            if holder is not None and holder in self._pushes:
                pushes.setdefault(holder, []).append((attempt_id, "cancelled"))
        for holder, cancellations in pushes.items():
            for attempt_id, _ in cancellations:
                self._release_holder(attempt_id)
            instance = self._instances.get(holder)
            drain = instance.drain if instance is not None else None
            self._pushes[holder].put_nowait(
                HeartbeatReply([], cancellations, [], drain, self.settings.heartbeat_interval)
            )
        if len(self._cancelled) > 100_000:
            # Attempts cancelled long ago: their runners heard, or their leases ran out.
            for attempt_id in list(self._cancelled)[:50_000]:
                del self._cancelled[attempt_id]

    # -- the timekeeper --------------------------------------------------------------------

    async def _keep_time(self) -> None:
        await lead_forever(
            self._store,
            TIMEKEEPER_LOCK,
            "keeps time (expires leases, requeues retries)",
            self._lead,
        )

    async def _lead(self, lost: asyncio.Event) -> None:
        while not lost.is_set():
            self._tick.clear()
            now = self._clock.now()
            busy = await self._expire(now) | await self._requeue(now)
            if busy:
                continue
            async with self._store.transaction() as tx:
                at = await tx.next_deadline()
            # Claims only write leases later than now + lease_duration, so the cap covers
            # them without a wake-up; an earlier deadline (a retry's backoff, a short attempt
            # timeout) arrives through deadline_written(), from this replica or by NOTIFY.
            now = self._clock.now()
            wait = self.settings.lease_duration.total_seconds()
            if at is not None:
                wait = min(wait, max((at - now).total_seconds(), 0.0) + 0.001)
            self._sleep_until = now + timedelta(seconds=wait)
            waiters = [asyncio.create_task(e.wait()) for e in (self._tick, lost)]
            try:
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._sleep_until = None
                for waiter in waiters:
                    waiter.cancel()

    def deadline_written(self, at: datetime | None) -> None:
        """Somebody wrote a deadline: wake the timekeeper if it sleeps past it."""
        if at is None or self._sleep_until is None or at < self._sleep_until:
            self._tick.set()

    async def _expire(self, now: datetime) -> bool:
        async with self._store.transaction() as tx:
            expired = await tx.expired_attempts(now, _TIMEKEEPER_BATCH)
        if not expired:
            return False
        outcomes = [
            _Posted(
                None,
                Outcome(
                    attempt_id,
                    OutcomeKind.FAILURE,
                    retryable=True,
                    message=(
                        f"attempt timed out after {timeout_ms / 1000:g}s"
                        if why == "timeout"
                        else "lease expired: no heartbeat from the runner in time"
                    ),
                    details={"reason": why},
                ),
            )
            for attempt_id, why, timeout_ms in expired
        ]
        await self._results.submit_many(outcomes)
        log.info("expired attempts", extra={"count": len(expired)})
        return len(expired) == _TIMEKEEPER_BATCH

    async def _requeue(self, now: datetime) -> bool:
        async with self._store.transaction() as tx:
            count = await tx.promote_due_retries(now, _TIMEKEEPER_BATCH)
            settled = await tx.notify() if count else None
        if settled is not None:
            self._after_commit(settled)
        return count == _TIMEKEEPER_BATCH
