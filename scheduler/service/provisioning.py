"""The reconciler: runner instances follow the work, one replica at a time.

Level-triggered: every pass compares what each Runner should have (from queued and running
tasks) with what the provisioner observes, creates what is missing, removes instances that
have ended, and records the Runner's status. A pass runs when something changes — work
becomes ready, the provisioner's watch sees an instance change — or when a failure backoff
ends; never on a polling interval. Scale-down is not decided here: an instance that stays
idle for its Runner's idle period is drained by the runner protocol's dispatch, within a
budget this pass records (live instances beyond the desired count).

Only the replica that leads the duty acts, and every act is fenced by its term: the pass's
records in one fenced transaction, and each instance created or deleted inside a fenced
transaction of its own, held open across the call, so no takeover completes meanwhile. An
instance created while the fence was lost (the transaction did not commit) is deleted again.
The provisioner itself lives as long as the reconciler, not as long as a term: a replica that
stops leading stops acting, and leaves the instances that exist alone.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from scheduler.domain.access import SYSTEM
from scheduler.domain.backoff import Backoff
from scheduler.domain.clock import Clock
from scheduler.domain.errors import Aborted, Unavailable
from scheduler.domain.leadership import Duty, NotLeader, Term
from scheduler.domain.ports import Leadership, Provisioner, Store
from scheduler.domain.provisioning import (
    CrashBackoff,
    InstanceSpec,
    Observed,
    Phase,
    RunnerStatus,
    RunnerWork,
    desired_instances,
    plan,
)
from scheduler.domain.registry import Runner
from scheduler.domain.telemetry import NO_TELEMETRY, Telemetry
from scheduler.service.leadership import lead_forever
from scheduler.service.registry import Registry
from scheduler.service.signals import Signals
from scheduler.service.supervisor import Supervisor

log = logging.getLogger(__name__)

LOOP: Final = "reconciler"
# What ends a pass (the term is over, the database failed) rather than show on a Runner.
_STOP: Final = (NotLeader, Unavailable, Aborted)
SETTLE_GAP: Final = 0.25
PROVEN_AFTER: Final = timedelta(seconds=10)
CRASH_BACKOFF: Final = Backoff(timedelta(seconds=1), timedelta(minutes=5), spread=0)


@dataclass(frozen=True, slots=True)
class ProvisionSettings:
    scheduler_address: str
    scheduler_name: str
    failure_backoff: Backoff = CRASH_BACKOFF
    instance_environment: tuple[tuple[str, str], ...] = ()


class Reconciler:
    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        provisioner: Provisioner,
        registry: Registry,
        signals: Signals,
        clock: Clock,
        settings: ProvisionSettings,
        *,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self._store = store
        self._telemetry = telemetry
        self._leadership = leadership
        self._provisioner = provisioner
        self._registry = registry
        self._signals = signals
        self._clock = clock
        self._settings = settings
        self._wake = asyncio.Event()
        self._backoff: dict[str, CrashBackoff] = defaultdict(CrashBackoff)
        self._rng = random.Random()  # noqa: S311 (backoff jitter, not secrets)
        self._errors: dict[str, str] = {}
        self._supervisor: Supervisor | None = None
        self._started = False
        self.passes = 0

    def start(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        supervisor.start(LOOP, self.run)

    async def stop(self) -> None:
        """Stop acting, then stop the provisioner (which may stop what it started)."""
        if self._supervisor is not None:
            await self._supervisor.stop(LOOP)
        if self._started:
            self._started = False
            await self._provisioner.stop()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Watch instances for as long as the process lives; provision whenever this replica
        leads."""
        if not self._started:
            await self._provisioner.start(self.wake)
            self._started = True
        await lead_forever(
            self._leadership,
            Duty.PROVISIONING,
            self._lead,
            what=self._provisioner.name,
            telemetry=self._telemetry,
        )

    async def _lead(self, term: Term) -> None:
        # Ready work wakes a pass at once (scale-up latency matters). Any other change of a
        # Session (tasks finishing) may lower the desired count: that wakes a pass too, but
        # at most every SETTLE_GAP, so a busy scheduler does not reconcile per result.
        lost = term.lost
        unsubscribe = self._signals.on_any_ready(self.wake)
        changed = self._signals.watch_any_session()
        try:
            while not lost.is_set():
                self._wake.clear()
                changed.clear()
                next_at = await self.reconcile(term)
                timeout = None
                if next_at is not None:
                    timeout = max((next_at - self._clock.now()).total_seconds(), 0.0) + 0.01
                hard = [asyncio.create_task(e.wait()) for e in (self._wake, lost)]
                soft = asyncio.create_task(self._after(changed, SETTLE_GAP))
                try:
                    await asyncio.wait(
                        [*hard, soft], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for waiter in [*hard, soft]:
                        waiter.cancel()
        finally:
            unsubscribe()
            self._signals.unwatch_any_session(changed)

    @staticmethod
    async def _after(event: asyncio.Event, gap: float) -> None:
        await event.wait()
        await asyncio.sleep(gap)

    async def reconcile(self, term: Term) -> datetime | None:
        """One pass over every Runner, as the holder of ``term``; when the next pass is due
        without a wake-up. NotLeader once the term is over."""
        self.passes += 1
        now = self._clock.now()
        async with self._store.transaction() as unit:
            runners = await unit.registry.all_runners()
            work = await unit.provisioning.work_by_runner()
        observed: dict[str, list[Observed]] = defaultdict(list)
        for instance in self._provisioner.observed():
            observed[instance.runner].append(instance)
        statuses: list[RunnerStatus] = []
        ended: list[str] = []
        exited: list[str] = []
        for runner in runners:
            load = work.get(runner.name, RunnerWork())
            desired = desired_instances(runner, load.queued, load.running)
            instances = observed.pop(runner.name, [])
            error = await self._converge(term, runner, desired, instances, now, ended, exited)
            if error:
                self._errors[runner.name] = error
            shown = self._errors.get(runner.name, "")
            live = [i for i in self._provisioner.observed() if i.runner == runner.name and i.live]
            statuses.append(
                RunnerStatus(
                    runner=runner.name,
                    desired=desired,
                    observed=len(live),
                    ready=sum(i.ready for i in live),
                    last_error=shown,
                    last_error_time=now if shown else None,
                )
            )
        for orphans in observed.values():
            # Instances of Runners that were deleted: nothing will ever claim for them.
            for instance in orphans:
                if not instance.deleting:
                    await self._delete(term, instance)
                    ended.append(instance.name)
        async with self._store.fenced(term) as unit:
            await unit.provisioning.save_runner_status(statuses, now)
            await unit.provisioning.forget_drains(ended)
            expired = await unit.tasks.expire_leases_of(exited, now)
        if expired:
            log.info("requeueing %d tasks of instances that exited", expired)
        waits = [b.until for b in self._backoff.values() if b.until is not None and b.until > now]
        return min(waits, default=None)

    async def _converge(
        self,
        term: Term,
        runner: Runner,
        desired: int,
        instances: list[Observed],
        now: datetime,
        ended: list[str],
        exited: list[str],
    ) -> str:
        """Create and remove this Runner's instances; the error to show on its status."""
        error = ""
        if any(self._proven(i, now) for i in instances):
            self._backoff[runner.name] = CrashBackoff()
            self._errors.pop(runner.name, None)
        steps = plan(runner, desired, instances, now=now, backoff=self._backoff[runner.name])
        for instance in steps.delete:
            # It exited: whatever lease it still holds ends now (it cannot post any more).
            exited.append(instance.name)
            if instance.phase is Phase.FAILED:
                error = f"instance {instance.name} failed: {instance.reason or 'unknown reason'}"
                self._telemetry.instance_failed(runner.name)
                self._backoff[runner.name] = self._backoff[runner.name].after_failure(
                    now, self._settings.failure_backoff, self._rng
                )
                log.warning("runner %s: %s", runner.name, error)
            error = await self._delete(term, instance) or error
            ended.append(instance.name)
        if steps.create and self._backoff[runner.name].allows(now):
            error = await self._create(term, runner, steps.create, now) or error
        return error

    @staticmethod
    def _proven(instance: Observed, now: datetime) -> bool:
        """An instance that shows the Runner works: it drained and exited 0, or it has been up
        a while (a container that crashes at start looks ready for a moment)."""
        if instance.phase is Phase.SUCCEEDED:
            return True
        up = instance.created is not None and now - instance.created >= PROVEN_AFTER
        return instance.phase is Phase.RUNNING and instance.ready and up

    async def _create(self, term: Term, runner: Runner, count: int, now: datetime) -> str:
        try:
            if not await self._provisioner.has_credential(runner.name):
                credential = await self._registry.issue_credential(
                    runner.name,
                    f"{self._provisioner.name} instances of scheduler "
                    f"{self._settings.scheduler_name}",
                    by=SYSTEM,
                )
                await self._provisioner.store_credential(runner.name, credential.secret)
            spec = InstanceSpec(
                runner,
                self._settings.scheduler_address,
                self._settings.scheduler_name,
                self._settings.instance_environment,
            )
            for _ in range(count):
                created = await self._fenced_create(term, spec)
                log.info("runner %s: created instance %s", runner.name, created.name)
        except _STOP:
            raise
        except Exception as exc:  # the backend's errors are shown on the Runner, then retried
            self._telemetry.provisioning_error(runner.name, "create")
            message = f"cannot create an instance: {exc}"
            log.warning("runner %s: %s", runner.name, message)
            self._backoff[runner.name] = self._backoff[runner.name].after_failure(
                now, self._settings.failure_backoff, self._rng
            )
            return message
        return ""

    async def _fenced_create(self, term: Term, spec: InstanceSpec) -> Observed:
        """Create an instance while the term is held; delete it again if the fence did not
        hold until the end (the term was lost meanwhile)."""
        created: Observed | None = None
        try:
            async with self._store.fenced(term):
                term.check()
                created = await self._provisioner.create(spec)
        except (*_STOP, asyncio.CancelledError):
            if created is not None:
                log.warning(
                    "instance %s was created as this replica's term ended; deleting it",
                    created.name,
                    extra={"term": term.describe()},
                )
                await self._provisioner.delete(created)
            raise
        return created

    async def _delete(self, term: Term, instance: Observed) -> str:
        try:
            async with self._store.fenced(term):
                term.check()
                await self._provisioner.delete(instance)
        except _STOP:
            raise
        except Exception as exc:  # retried on the next pass, shown meanwhile
            self._telemetry.provisioning_error(instance.runner, "delete")
            return f"cannot delete instance {instance.name}: {exc}"
        return ""
