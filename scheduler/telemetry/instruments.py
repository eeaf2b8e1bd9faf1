"""The scheduler's metrics: their names (OpenTelemetry semantic-convention style: dotted,
namespaced, unit apart from the name), and the last sampled values of its gauges.

Names and what each tells are listed in the README's "Telemetry" section; the Prometheus
endpoint shows them with dots as underscores, the unit appended (``_seconds``) and counters
ending in ``_total``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from scheduler.domain.leadership import Duty, Term
from scheduler.domain.provisioning import RunnerStatus
from scheduler.domain.sessions import SessionState
from scheduler.domain.telemetry import PoolUsage

TASK_COUNT: Final = "heat.task.count"
DISPATCH_DURATION: Final = "heat.task.dispatch.duration"
ATTEMPT_DURATION: Final = "heat.task.attempt.duration"
RESULTS: Final = "heat.task.results"
LEASE_EXPIRATIONS: Final = "heat.task.lease.expirations"
RETRIES: Final = "heat.task.retries"
SESSION_COUNT: Final = "heat.session.count"
INSTANCES_DESIRED: Final = "heat.runner.instance.desired"
INSTANCES_LIVE: Final = "heat.runner.instance.live"
INSTANCES_READY: Final = "heat.runner.instance.ready"
INSTANCE_FAILURES: Final = "heat.runner.instance.failures"
PROVISIONING_ERRORS: Final = "heat.provisioning.errors"
RPC_DURATION: Final = "rpc.server.call.duration"
LEADERSHIP_HELD: Final = "heat.leadership.held"
LEADERSHIP_TERM_START: Final = "heat.leadership.term.start_time"
DB_CONNECTIONS: Final = "db.client.connection.count"
DB_CONNECTIONS_MAX: Final = "db.client.connection.max"

# Attribute keys.
RUNNER: Final = "heat.runner"
DUTY: Final = "heat.leadership.duty"
EPOCH: Final = "heat.leadership.epoch"
HOLDER: Final = "heat.leadership.holder"
POOL_NAME: Final = "heat-scheduler"

# Seconds: from a millisecond (a claim) to an hour (a long attempt).
_FAST: Final = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)


@dataclass(slots=True)
class Sampled:
    """What the gauges show: read from the database now and then (``gauges.Sampler``)."""

    runners: list[RunnerStatus] = field(default_factory=list)
    sessions: dict[SessionState, int] = field(default_factory=dict)


class Instruments:
    """Every instrument, made once on one meter."""

    def __init__(self, meter: Meter) -> None:
        self.sampled = Sampled()
        self._lock = threading.Lock()  # the exporters read from their own threads
        self.pool_usage: Callable[[], PoolUsage] | None = None
        self._terms: dict[Duty, Term] = {}  # this replica's latest term of each duty
        self.dispatch_duration = meter.create_histogram(
            DISPATCH_DURATION,
            unit="s",
            description="Time a task waited in its Runner's queue: ready (queued) to claimed.",
            explicit_bucket_boundaries_advisory=_FAST,
        )
        self.attempt_duration = meter.create_histogram(
            ATTEMPT_DURATION,
            unit="s",
            description="Time from an attempt's claim to its settlement, by outcome.",
            explicit_bucket_boundaries_advisory=_SLOW,
        )
        self.results = meter.create_counter(
            RESULTS,
            unit="{result}",
            description="Outcomes answered, by verdict (accepted, rejected_stale, ...) and kind.",
        )
        self.lease_expirations = meter.create_counter(
            LEASE_EXPIRATIONS,
            unit="{attempt}",
            description="Attempts failed by the scheduler: no heartbeat in time, or timed out.",
        )
        self.retries = meter.create_counter(
            RETRIES, unit="{attempt}", description="Failed attempts that will be tried again."
        )
        self.instance_failures = meter.create_counter(
            INSTANCE_FAILURES,
            unit="{instance}",
            description="Runner instances the provisioner saw fail (exit non-zero, evicted, ...).",
        )
        self.provisioning_errors = meter.create_counter(
            PROVISIONING_ERRORS,
            unit="{error}",
            description="Failed calls to the provisioner's backend, by operation.",
        )
        self.rpc_duration = meter.create_histogram(
            RPC_DURATION,
            unit="s",
            description="Duration of incoming RPCs (of a stream: its life), by method and status.",
            explicit_bucket_boundaries_advisory=_FAST,
        )
        meter.create_observable_gauge(
            TASK_COUNT,
            [self._tasks],
            unit="{task}",
            description="Tasks per Runner: queued (waiting for an instance) and running (leased).",
        )
        meter.create_observable_gauge(
            SESSION_COUNT, [self._sessions], unit="{session}", description="Sessions by state."
        )
        for name, part, text in (
            (
                INSTANCES_DESIRED,
                "desired",
                "Instances the work asks for, within the Runner's min/max.",
            ),
            (INSTANCES_LIVE, "observed", "Instances started and not ended (pending or running)."),
            (INSTANCES_READY, "ready", "Instances up and ready."),
        ):
            meter.create_observable_gauge(
                name, [self._runner_gauge(part)], unit="{instance}", description=text
            )
        meter.create_observable_gauge(
            LEADERSHIP_HELD,
            [self._held],
            unit="{term}",
            description="1 while this replica leads the duty, else 0.",
        )
        meter.create_observable_gauge(
            LEADERSHIP_TERM_START,
            [self._term_start],
            unit="s",
            description="When this replica's current term of the duty began (Unix time, by "
            "the database's clock), with its epoch and this replica's name; none while it does "
            "not lead.",
        )
        meter.create_observable_up_down_counter(
            DB_CONNECTIONS,
            [self._connections],
            unit="{connection}",
            description="PostgreSQL connections of this replica's pool, idle and used.",
        )
        meter.create_observable_up_down_counter(
            DB_CONNECTIONS_MAX,
            [self._connections_max],
            unit="{connection}",
            description="The most connections this replica's pool opens.",
        )

    def sample(self, sampled: Sampled) -> None:
        with self._lock:
            self.sampled = sampled

    def leading(self, term: Term) -> None:
        with self._lock:
            self._terms[term.duty] = term

    def _held_terms(self) -> list[Term]:
        """The terms this replica holds now. ``lost`` is an asyncio.Event set on the event
        loop; reading its flag from an exporter's thread sees it set or not, nothing between."""
        with self._lock:
            terms = list(self._terms.values())
        return [t for t in terms if not t.lost.is_set()]

    def _held(self, options: CallbackOptions) -> Iterable[Observation]:
        held = {t.duty for t in self._held_terms()}
        for duty in Duty:
            yield Observation(int(duty in held), {DUTY: duty.key})

    def _term_start(self, options: CallbackOptions) -> Iterable[Observation]:
        for term in self._held_terms():
            if term.since is not None:
                labels: dict[str, str | int] = {DUTY: term.duty.key}
                if term.epoch is not None:
                    labels[EPOCH] = term.epoch
                if term.holder:
                    labels[HOLDER] = term.holder
                yield Observation(term.since.timestamp(), labels)

    def _current(self) -> Sampled:
        with self._lock:
            return self.sampled

    def _tasks(self, options: CallbackOptions) -> Iterable[Observation]:
        for status in self._current().runners:
            yield Observation(status.queued, {RUNNER: status.runner, "heat.task.state": "queued"})
            yield Observation(status.running, {RUNNER: status.runner, "heat.task.state": "running"})

    def _sessions(self, options: CallbackOptions) -> Iterable[Observation]:
        counts = self._current().sessions
        for state in SessionState:
            yield Observation(counts.get(state, 0), {"heat.session.state": state.value})

    def _runner_gauge(self, part: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            for status in self._current().runners:
                yield Observation(getattr(status, part), {RUNNER: status.runner})

        return observe

    def _connections(self, options: CallbackOptions) -> Iterable[Observation]:
        if self.pool_usage is None:
            return
        usage = self.pool_usage()
        pool = {"db.client.connection.pool.name": POOL_NAME}
        yield Observation(usage.idle, {**pool, "db.client.connection.state": "idle"})
        yield Observation(usage.size - usage.idle, {**pool, "db.client.connection.state": "used"})

    def _connections_max(self, options: CallbackOptions) -> Iterable[Observation]:
        if self.pool_usage is not None:
            yield Observation(
                self.pool_usage().max_size, {"db.client.connection.pool.name": POOL_NAME}
            )


def attributes(**values: str) -> Mapping[str, str]:
    """Attributes under their ``heat.`` names: ``runner=`` becomes ``heat.runner``."""
    return {f"heat.{key}": value for key, value in values.items()}
