"""The runner protocol's one door: what the transport's three streams may ask, each call past
the authorisation first. Behind it, each part has one job (``dispatch``, ``leases``,
``results``, ``timekeeper``) and the background loops are tasks of their own.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence

from scheduler.domain.clock import Clock
from scheduler.domain.limits import Limits
from scheduler.domain.ports import Leadership, Store
from scheduler.domain.runner_protocol import (
    FIRST_VERSION,
    ClaimedTask,
    Drain,
    HeartbeatReply,
    StreamTerms,
)
from scheduler.domain.telemetry import NO_TELEMETRY, Telemetry
from scheduler.domain.verdicts import Outcome, Reply
from scheduler.service.runner_protocol.authorisation import Authorisation
from scheduler.service.runner_protocol.dispatch import Dispatch, Instance
from scheduler.service.runner_protocol.leases import Leases, Push
from scheduler.service.runner_protocol.results import Results
from scheduler.service.runner_protocol.settings import ProtocolSettings
from scheduler.service.runner_protocol.timekeeper import Timekeeper
from scheduler.service.signals import Signals
from scheduler.service.supervisor import Supervisor

TIMEKEEPER = "timekeeper"


class RunnerProtocol:
    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        signals: Signals,
        clock: Clock,
        settings: ProtocolSettings,
        limits: Limits,
        supervisor: Supervisor,
        *,
        rng: random.Random | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        """Its background loops (the timekeeper, the dispatchers) run under ``supervisor``."""
        self.settings = settings
        rng = rng or random.Random()  # noqa: S311 (backoff jitter, not secrets)
        self._supervisor = supervisor
        # Leases and the authorisation ask the dispatch about instances, which is built last:
        # it gives back to results what it cannot hand out, and results forget leases.
        self.authorisation = Authorisation(store, clock, lambda i: self.dispatch.runner_of(i))
        self.leases = Leases(
            store,
            clock,
            settings,
            self.authorisation,
            drain_of=lambda i: self.dispatch.drain_of(i),
            released=lambda i, a: self.dispatch.released(i, a),
        )
        self.results = Results(
            store,
            clock,
            settings,
            limits,
            self.authorisation,
            self.leases,
            rng=rng,
            telemetry=telemetry,
            hand_off=lambda: self.dispatch,
        )
        self.dispatch = Dispatch(
            store,
            signals,
            clock,
            settings,
            self.leases,
            limits,
            supervisor,
            release=self.results.release,
            fail=self.results.fail,
            telemetry=telemetry,
        )
        self.timekeeper = Timekeeper(
            store, leadership, clock, settings, self.results, telemetry=telemetry
        )
        self._unsubscribe = [
            signals.on_cancel(self.leases.cancelled),
            signals.on_deadline(self.timekeeper.deadline_written),
        ]

    def start(self) -> None:
        """The timekeeper's loop; the dispatchers' start with their first instance."""
        self._supervisor.start(TIMEKEEPER, self.timekeeper.run)

    async def stop(self) -> None:
        await self.dispatch.stop()
        await self._supervisor.stop(TIMEKEEPER)
        await self.results.stop()
        await self.leases.stop()
        for unsubscribe in self._unsubscribe:
            unsubscribe()

    async def authenticate(self, secret: str | None) -> str:
        """The Runner a bearer credential belongs to (UNAUTHENTICATED without one)."""
        return await self.authorisation.runner_of(secret)

    # -- ClaimTask -------------------------------------------------------------------------

    def connect(
        self,
        runner: str,
        declared: str,
        instance_id: str,
        templates: Sequence[str],
        credits: int,
        terms: StreamTerms = FIRST_VERSION,
    ) -> Instance:
        """An instance opened its ClaimTask stream, for the Runner it ``declared``, on the
        ``terms`` granted to what it asked for (``domain.runner_protocol.stream_terms``)."""
        self.authorisation.check_start(runner, declared)
        self.authorisation.check_instance(runner, instance_id, connecting=True)
        return self.dispatch.connect(runner, instance_id, templates, credits, terms)

    def stream(self, instance: Instance) -> AsyncIterator[list[ClaimedTask] | Drain]:
        """Tasks (in batches up to the stream's terms) and drains for the instance, pushed as
        they come, until it hangs up."""
        return self.dispatch.stream(instance)

    def grant(self, instance: Instance, credits: int) -> None:
        self.dispatch.grant(instance, credits)

    def hang_up(self, instance: Instance) -> None:
        self.dispatch.hang_up(instance)

    def disconnect(self, instance: Instance, *, unsent: Sequence[ClaimedTask] = ()) -> None:
        """The instance's stream ended; ``unsent``: tasks taken for it that it may not have
        received (the call ended while they were being sent), given back like the unsent ones."""
        self.dispatch.disconnect(instance, unsent=unsent)

    # -- Heartbeat -------------------------------------------------------------------------

    def attach_heartbeats(self, instance_id: str, push: Push) -> Callable[[], None]:
        """Where replies go unprompted (cancellations) for the instance; returns the detach."""
        return self.leases.attach(instance_id, push)

    async def heartbeat(
        self, runner: str, instance_id: str, attempt_ids: Sequence[str]
    ) -> HeartbeatReply:
        self.authorisation.check_instance(runner, instance_id)
        self.dispatch.heard(instance_id)
        return await self.leases.heartbeat(runner, instance_id, attempt_ids)

    # -- PostResult ------------------------------------------------------------------------

    async def post(self, runner: str, outcome: Outcome) -> Reply:
        return await self.results.post(runner, outcome)

    async def post_many(self, runner: str, outcomes: Sequence[Outcome]) -> list[Reply]:
        return await self.results.post_many(runner, outcomes)
