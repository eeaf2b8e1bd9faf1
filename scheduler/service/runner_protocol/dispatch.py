"""Dispatch: the connected instances, their credits, and the tasks pushed to them.

One dispatcher per (Runner, template subset) holds the credits of its connected instances and
claims for all of them in one statement when woken: a commit (here, or another replica's by
NOTIFY) made work ready, or an instance granted credits. Nothing polls. Each dispatcher's
loop (``Dispatcher.run``) runs under the supervisor, as do the one-off tasks (tasks given
back, idle instances drained).

A settlement that makes work ready (or returns credits while a Runner has a backlog) claims
for this replica's credits in its own transaction (``plan`` / ``handed`` / ``abandoned``): the
hand-off needs no second transaction, and the NOTIFY still wakes the other replicas.

An instance that holds nothing for its Runner's idle period is drained, within the budget
the reconciler records (the live instances beyond the desired count).

An instance that holds tasks but has not heartbeated for a while (``silent``: a frozen
process, a stopped container, a cut network whose stream still looks open) gets no new task
until it is heard from again: each would only wait out its lease and burn an attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from scheduler.domain.backoff import Backoff, Retries
from scheduler.domain.clock import Clock
from scheduler.domain.limits import MAX_ATTEMPT_TIMEOUT, Limits
from scheduler.domain.ports import Store
from scheduler.domain.runner_protocol import (
    FIRST_VERSION,
    ClaimedTask,
    ClaimRequest,
    Drain,
    StreamTerms,
    allocate,
    hand_off_wanted,
)
from scheduler.domain.telemetry import NO_TELEMETRY, Telemetry
from scheduler.service.leadership import TRANSIENT
from scheduler.service.runner_protocol.handoff import Reservation
from scheduler.service.runner_protocol.leases import Leases
from scheduler.service.runner_protocol.settings import ProtocolSettings
from scheduler.service.signals import Signals
from scheduler.service.supervisor import Supervisor

log = logging.getLogger(__name__)

CLAIM_RETRY: Final = Backoff(timedelta(seconds=0.05), timedelta(seconds=5))
_HUNG_UP: Final = object()


@dataclass(eq=False)
class Instance:
    """A runner instance with an open ClaimTask stream."""

    runner: str
    instance_id: str
    templates: tuple[str, ...] | None
    credits: int
    outbox: asyncio.Queue[ClaimedTask | Drain | object] = field(default_factory=asyncio.Queue)
    connected: bool = True
    hung_up: bool = False  # the instance half-closed its stream: it claims no more
    drain: Drain | None = None
    held: set[str] = field(default_factory=set)
    idle_period: timedelta | None = None  # None: nobody scales this Runner down
    idle_timer: asyncio.TimerHandle | None = None
    # When the instance was last heard from (connected, heartbeated, or handed its first task
    # while it held none, from which its heartbeats are owed).
    heard: datetime | None = None
    terms: StreamTerms = FIRST_VERSION
    # Attempts pushed on this stream whose credit comes back with their outcome (with
    # ``terms.credits_with_results``).
    owed: set[str] = field(default_factory=set)


def give_back(owners: Sequence[Instance], tasks: Sequence[ClaimedTask]) -> None:
    """The credits reserved for a claim that no task took go back to their instances."""
    handed = Counter(t.owner for t in tasks)
    for owner in owners:
        if handed[owner.instance_id] > 0:
            handed[owner.instance_id] -= 1
        else:
            owner.credits += 1


class Dispatcher:
    """Claims for the instances of one Runner (and template subset)."""

    def __init__(self, dispatch: Dispatch, runner: str, templates: tuple[str, ...] | None) -> None:
        self.runner = runner
        self.templates = templates
        self.instances: dict[str, Instance] = {}
        self.wake = asyncio.Event()
        # The last claim took all it asked for (or work was announced while no credit was
        # free): more may be queued, so a settlement returning credits claims along.
        self.backlog = False
        self._dispatch = dispatch

    @property
    def credits(self) -> int:
        return sum(i.credits for i in self.instances.values() if i.connected and not i.drain)

    def allocate(self, limit: int) -> list[Instance]:
        """Reserve up to ``limit`` credits, round robin, so a batch spreads over instances."""
        now = self._dispatch.now()
        live = [
            i
            for i in self.instances.values()
            if i.connected and not i.drain and not self._dispatch.silent(i, now)
        ]
        owners = allocate([(i, i.credits) for i in live], limit)
        for owner in owners:
            owner.credits -= 1
        return owners

    @property
    def name(self) -> str:
        """The name of its loop."""
        subset = f" {','.join(self.templates)}" if self.templates else ""
        return f"dispatch {self.runner}{subset}"

    async def run(self) -> None:
        """Claim whenever woken, for as long as there are credits and work."""
        retries = Retries(CLAIM_RETRY)
        self.wake.set()  # (re)started: look at once
        while True:
            await self.wake.wait()
            self.wake.clear()
            while True:
                owners = self.allocate(self._dispatch.settings.max_claim_batch)
                if not owners:
                    self.backlog = True  # woken with no credit free: look when some return
                    break
                try:
                    tasks, claimed = await self._dispatch.claim(self, owners)
                except BaseException as exc:
                    for owner in owners:
                        owner.credits += 1
                    if not isinstance(exc, TRANSIENT):
                        raise  # for the supervisor
                    log.warning("claim for runner %s failed: %s; retrying", self.runner, exc)
                    await asyncio.sleep(retries.wait())
                    self.wake.set()
                    break
                retries.reset()
                give_back(owners, tasks)
                self.backlog = claimed == len(owners)
                self._dispatch.hand_out(tasks)
                if not self.backlog:
                    break


class Dispatch:
    def __init__(
        self,
        store: Store,
        signals: Signals,
        clock: Clock,
        settings: ProtocolSettings,
        leases: Leases,
        limits: Limits,
        supervisor: Supervisor,
        *,
        release: Callable[[ClaimedTask], Coroutine[Any, Any, object]],
        fail: Callable[[ClaimedTask, str], Coroutine[Any, Any, object]],
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        """``release(task)``: give back a task claimed for an instance that went away;
        ``fail(task, message)``: fail a claimed task that cannot be sent."""
        self.settings = settings
        self._limits = limits
        self._fail = fail
        self._telemetry = telemetry
        self._supervisor = supervisor
        self._store = store
        self._signals = signals
        self._clock = clock
        self._leases = leases
        self._release = release
        self._dispatchers: dict[tuple[str, tuple[str, ...] | None], Dispatcher] = {}
        self._unsubscribe: dict[Dispatcher, Callable[[], None]] = {}
        self._instances: dict[str, Instance] = {}
        self._owed: dict[str, Instance] = {}  # attempt -> the instance its credit returns to
        self._returned: set[Instance] = set()  # got credits back since the last settlement

    async def stop(self) -> None:
        for dispatcher in self._dispatchers.values():
            await self._supervisor.stop(dispatcher.name)
        for unsubscribe in self._unsubscribe.values():
            unsubscribe()

    # -- instances -------------------------------------------------------------------------

    def runner_of(self, instance_id: str) -> str | None:
        instance = self._instances.get(instance_id)
        return instance.runner if instance is not None else None

    def drain_of(self, instance_id: str) -> Drain | None:
        instance = self._instances.get(instance_id)
        return instance.drain if instance is not None else None

    def connect(
        self,
        runner: str,
        instance_id: str,
        templates: Sequence[str],
        credits: int,
        terms: StreamTerms = FIRST_VERSION,
    ) -> Instance:
        key = (runner, tuple(sorted(set(templates))) or None)
        previous = self._instances.get(instance_id)
        if previous is not None:
            # The same instance reconnected (its old stream may not have noticed yet).
            self.disconnect(previous)
        instance = Instance(runner, instance_id, key[1], max(credits, 0), terms=terms)
        instance.heard = self._clock.now()
        self._instances[instance_id] = instance
        dispatcher = self._dispatchers.get(key)
        if dispatcher is None:
            dispatcher = Dispatcher(self, runner, key[1])
            self._unsubscribe[dispatcher] = self._signals.on_ready(runner, dispatcher.wake.set)
            # The loop serves every instance of the Runner: the supervisor runs it in a context
            # of its own, not in that of the call that happened to start it.
            self._supervisor.start(dispatcher.name, dispatcher.run)
            self._dispatchers[key] = dispatcher
        dispatcher.instances[instance_id] = instance
        dispatcher.wake.set()
        if self.settings.drain_idle:
            self._supervisor.spawn(f"arm idle {instance_id}", self._arm_idle(instance))
        return instance

    def now(self) -> datetime:
        return self._clock.now()

    def silent(self, instance: Instance, now: datetime) -> bool:
        """Whether the instance holds tasks yet owes heartbeats for longer than it may."""
        if not instance.held or instance.heard is None:
            return False
        return now - instance.heard > self.settings.silence

    def heard(self, instance_id: str) -> None:
        """The instance heartbeated: if it was silent, it may claim again."""
        instance = self._instances.get(instance_id)
        if instance is None:
            return
        was_silent = self.silent(instance, self._clock.now())
        instance.heard = self._clock.now()
        if was_silent:
            log.info("instance %s is heard from again; it claims again", instance_id)
            dispatcher = self._dispatchers.get((instance.runner, instance.templates))
            if dispatcher is not None:
                dispatcher.wake.set()

    def grant(self, instance: Instance, credits: int) -> None:
        if credits <= 0 or not instance.connected:
            return
        instance.credits += credits
        dispatcher = self._dispatchers.get((instance.runner, instance.templates))
        if dispatcher is not None:
            dispatcher.wake.set()

    def returned(self, runner: str, attempt_ids: Sequence[str]) -> None:
        """Outcomes were posted for these attempts: the instances that were pushed them on a
        stream whose credits return with results have their credits back. Nobody is woken:
        the settlement claims along, and wakes what it leaves with credits (``settled``)."""
        for attempt_id in attempt_ids:
            instance = self._owed.pop(attempt_id, None)
            if instance is None:
                continue
            instance.owed.discard(attempt_id)
            if instance.runner == runner and instance.connected:
                instance.credits += 1
                self._returned.add(instance)

    async def stream(self, instance: Instance) -> AsyncIterator[list[ClaimedTask] | Drain]:
        """What to send the instance, in order, until it hangs up: a drain, or the tasks
        waiting for it (up to its batch; one at a time for a first-version stream)."""
        carried: ClaimedTask | Drain | object | None = None
        while True:
            if carried is not None:
                item, carried = carried, None
            else:
                item = await instance.outbox.get()
            if item is _HUNG_UP or instance.hung_up:
                if isinstance(item, ClaimedTask):
                    self._give_back(item)  # taken, but never to be sent
                return
            if isinstance(item, Drain):
                yield item
                continue
            assert isinstance(item, ClaimedTask)
            batch = [item]
            while len(batch) < instance.terms.max_batch and not instance.outbox.empty():
                following = instance.outbox.get_nowait()
                if not isinstance(following, ClaimedTask):
                    carried = following
                    break
                batch.append(following)
            yield batch

    def hang_up(self, instance: Instance) -> None:
        """The instance half-closed its stream: what was claimed for it is not sent."""
        instance.hung_up = True
        instance.outbox.put_nowait(_HUNG_UP)

    def disconnect(self, instance: Instance, *, unsent: Sequence[ClaimedTask] = ()) -> None:
        instance.connected = False
        for task in unsent:
            self._give_back(task)
        if instance.idle_timer is not None:
            instance.idle_timer.cancel()
            instance.idle_timer = None
        if self._instances.get(instance.instance_id) is instance:
            del self._instances[instance.instance_id]
        for attempt_id in instance.owed:
            if self._owed.get(attempt_id) is instance:
                del self._owed[attempt_id]
        instance.owed.clear()
        dispatcher = self._dispatchers.get((instance.runner, instance.templates))
        if dispatcher is not None and dispatcher.instances.get(instance.instance_id) is instance:
            del dispatcher.instances[instance.instance_id]
        # Tasks claimed for it but not yet sent go straight back to the queue.
        while not instance.outbox.empty():
            item = instance.outbox.get_nowait()
            if isinstance(item, ClaimedTask):
                self._give_back(item)

    def drain(self, instance_id: str, reason: str, deadline: datetime | None = None) -> bool:
        """Ask an instance to stop claiming and exit once it holds nothing."""
        instance = self._instances.get(instance_id)
        if instance is None:
            return False
        instance.drain = Drain(reason, deadline)
        instance.outbox.put_nowait(instance.drain)
        return True

    # -- claims ----------------------------------------------------------------------------

    async def claim(
        self, dispatcher: Dispatcher, owners: list[Instance]
    ) -> tuple[list[ClaimedTask], int]:
        """The tasks claimed for ``owners`` that can be sent, and how many were claimed."""
        request = self._request(dispatcher, owners, self._clock.now())
        async with self._store.claiming() as work:
            claimed = await work.tasks.claim(request)
        return self.claimed(claimed, request.now), len(claimed)

    def _request(
        self, dispatcher: Dispatcher, owners: Sequence[Instance], now: datetime
    ) -> ClaimRequest:
        return ClaimRequest(
            dispatcher.runner,
            dispatcher.templates,
            tuple(o.instance_id for o in owners),
            now + self.settings.lease_duration,
            now,
            max_attempt_timeout=MAX_ATTEMPT_TIMEOUT,
            max_inputs_bytes=self._limits.max_task_bytes,
            heartbeat_interval=self.settings.heartbeat_interval,
            policy=self.settings.dispatch_order,
        )

    def claimed(self, claimed: Sequence[ClaimedTask], now: datetime) -> list[ClaimedTask]:
        """Tasks were claimed (and committed) with leases from ``now``: those that can be
        sent (a task whose inputs would not fit one message fails instead)."""
        self._leases.leased(claimed, now)
        tasks = []
        for task in claimed:
            if task.inputs is None:
                # Its upstream outputs would not fit one message: no attempt could ever get
                # it, so the node fails (and the credit goes back to its instance).
                message = (
                    f"the task's inputs (the outputs of its upstream nodes) are"
                    f" {task.inputs_bytes} bytes; a task carries at most"
                    f" {self._limits.max_task_bytes} (setting max_message_bytes, less"
                    f" {self._limits.task_margin_bytes} for the rest of the task)"
                )
                log.warning("node %s of %s failed: %s", task.node_key, task.session, message)
                self._supervisor.spawn(f"fail {task.attempt_id}", self._fail(task, message))
            else:
                tasks.append(task)
        tasks = self._telemetry.dispatched(tasks, now)
        if tasks:
            # Claims write leases past now + lease_duration, which the timekeeper sleeps no
            # longer than; a short attempt timeout must wake it.
            self._signals.deadline_written(min(t.attempt_deadline for t in tasks))
        return tasks

    # -- hand-off: claims inside a settlement's transaction --------------------------------

    def plan(self, ready: Set[str], now: datetime) -> list[Reservation]:
        """Within a settlement's transaction, once it knows which Runners got ready work: the
        claims to make along, for the dispatchers that have credits and (likely) work."""
        reservations = []
        for dispatcher in self._dispatchers.values():
            wanted = hand_off_wanted(
                became_ready=dispatcher.runner in ready,
                backlog=dispatcher.backlog,
                credits=dispatcher.credits,
            )
            if not wanted:
                continue
            owners = dispatcher.allocate(self.settings.max_claim_batch)
            if not owners:
                continue
            request = self._request(dispatcher, owners, now)
            reservations.append(Reservation(dispatcher, owners, request))
        return reservations

    def handed(
        self, reservations: Sequence[Reservation], claimed: Sequence[Sequence[ClaimedTask]]
    ) -> None:
        """The settlement committed with these claims: push them."""
        for reservation, got in zip(reservations, claimed, strict=True):
            tasks = self.claimed(got, reservation.request.now)
            give_back(reservation.owners, tasks)
            reservation.dispatcher.backlog = len(got) == len(reservation.owners)
            self.hand_out(tasks)

    def abandoned(self, reservations: Sequence[Reservation]) -> None:
        """The settlement did not commit: its reserved credits are free again."""
        for reservation in reservations:
            for owner in reservation.owners:
                owner.credits += 1
            reservation.dispatcher.wake.set()

    def settled(self) -> None:
        """After a settlement (with no other outcome waiting, whose settlement would claim
        along): the dispatchers that got credits back and may have work (a backlog the
        settlement did not claim) look now."""
        returned, self._returned = self._returned, set()
        for instance in returned:
            dispatcher = self._dispatchers.get((instance.runner, instance.templates))
            if dispatcher is not None and dispatcher.backlog and instance.credits > 0:
                dispatcher.wake.set()

    def hand_out(self, tasks: Sequence[ClaimedTask]) -> None:
        for task in tasks:
            instance = self._instances.get(task.owner)
            if instance is None or not instance.connected:
                self._give_back(task)
                continue
            self._leases.hold(task.attempt_id, instance.instance_id)
            if not instance.held:
                instance.heard = self._clock.now()  # heartbeats are owed from now on
            instance.held.add(task.attempt_id)
            if instance.terms.credits_with_results:
                instance.owed.add(task.attempt_id)
                self._owed[task.attempt_id] = instance
            if instance.idle_timer is not None:
                instance.idle_timer.cancel()
                instance.idle_timer = None
            instance.outbox.put_nowait(task)

    # -- idle instances --------------------------------------------------------------------

    def released(self, instance_id: str, attempt_id: str) -> None:
        """The instance no longer holds the attempt."""
        instance = self._instances.get(instance_id)
        if instance is not None:
            instance.held.discard(attempt_id)
            self._idle(instance)

    def _give_back(self, task: ClaimedTask) -> None:
        self._supervisor.spawn(f"give back {task.attempt_id}", self._release(task))

    async def _arm_idle(self, instance: Instance) -> None:
        async with self._store.transaction() as work:
            found = await work.registry.runners_by_name([instance.runner])
        runner = found.get(instance.runner)
        if runner is not None:
            instance.idle_period = runner.idle_period
            self._idle(instance)

    def _idle(self, instance: Instance) -> None:
        """The instance holds nothing now: drain it if that lasts for its Runner's idle period."""
        if instance.held or instance.idle_period is None or not instance.connected:
            return
        if instance.idle_timer is not None:
            instance.idle_timer.cancel()
        instance.idle_timer = asyncio.get_running_loop().call_later(
            instance.idle_period.total_seconds(),
            lambda: self._supervisor.spawn(
                f"drain idle {instance.instance_id}", self._drain_if_idle(instance)
            ),
        )

    async def _drain_if_idle(self, instance: Instance) -> None:
        instance.idle_timer = None
        if instance.held or not instance.connected or instance.drain is not None:
            return
        assert instance.idle_period is not None
        async with self._store.transaction() as work:
            granted = await work.provisioning.claim_drain(
                instance.instance_id, instance.runner, "idle", self._clock.now()
            )
        if granted:
            seconds = instance.idle_period.total_seconds()
            log.info("draining idle instance %s (idle %gs)", instance.instance_id, seconds)
            self.drain(instance.instance_id, f"idle for {seconds:g}s")
        else:
            # The Runner wants every instance it has; look again after another idle period.
            self._idle(instance)
