"""Telemetry seen from outside, with in-memory exporters: one trace from a caller's
CreateSession through each node's dispatch to the runner's attempt and a span the processor
opens itself; the caller's traceparent honoured (with tracing off too); metrics that move as
tasks run, fail, retry and expire.

The scheduler's spans go to its own provider (an in-memory exporter handed to it); the
runtime's and the processor's to OpenTelemetry's global provider, which this module sets up
once for the process (``runner_spans``) and records only while a test holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from heat.scheduler.v1 import session_pb2
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc
from heat_runtime import HeatRuntime, current_task
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from scheduler.telemetry import SchedulerTelemetry, TelemetryConfig
from scheduler.telemetry.config import Sampling
from tests.integration.fake_scheduler import serving as runtime_serving
from tests.integration.test_protocol import Claimer, dag, failed, post, setup_registry, success
from tests.support import Scheduler, eventually, serving

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


# --- the runner side's spans: OpenTelemetry's global provider ---------------------------------


class _Recorder(SpanProcessor):
    """Keeps ended spans while a test listens; drops them otherwise."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] | None = None
        self._lock = threading.Lock()

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            if self.spans is not None:
                self.spans.append(span)


_RECORDER = _Recorder()


@contextmanager
def runner_spans() -> Iterator[list[ReadableSpan]]:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
        provider.add_span_processor(_RECORDER)
        trace.set_tracer_provider(provider)
    spans: list[ReadableSpan] = []
    _RECORDER.spans = spans
    try:
        yield spans
    finally:
        _RECORDER.spans = None


# --- a scheduler reporting to memory ----------------------------------------------------------


class Traced:
    def __init__(
        self, scheduler: Scheduler, spans: InMemorySpanExporter, reader: InMemoryMetricReader
    ):
        self.scheduler = scheduler
        self.exporter = spans
        self.reader = reader
        self.sessions = spb_grpc.SessionServiceStub(scheduler.channel)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """name -> [(attributes, value)], value a number or (count, sum) for a histogram."""
        data: MetricsData | None = self.reader.get_metrics_data()
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value: Any = getattr(point, "value", None)
                        if value is None:
                            value = (getattr(point, "count", 0), getattr(point, "sum", 0))
                        labels = dict(point.attributes or {})
                        out.setdefault(metric.name, []).append((labels, value))
        return out


@asynccontextmanager
async def traced(db_dsn: str, **overrides: Any) -> AsyncIterator[Traced]:
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = SchedulerTelemetry(
        TelemetryConfig(sampling=Sampling("parentbased_always_on")),
        span_exporters=[exporter],
        metric_readers=[reader],
    )
    async with serving(db_dsn, telemetry=telemetry, **overrides) as scheduler:
        yield Traced(scheduler, exporter, reader)


def named(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    found: int = span.context.span_id
    return found


# --- one trace per Session ----------------------------------------------------------------------


class Traces(HeatRuntime):
    pass


@Traces.register
class Step:
    TEMPLATE_NAME = "step"

    async def validate(self, inputs: Any, config: Any) -> None:
        return None

    async def process(self, inputs: Any, config: Any) -> Any:
        with trace.get_tracer("the-author").start_as_current_span("author's own work"):
            return {"node": current_task().node_key}


async def test_one_trace_from_the_callers_create_session_to_the_processors_own_span(
    db_dsn: str,
) -> None:
    async with traced(db_dsn) as t:
        secret = await setup_registry(t.scheduler)
        with runner_spans() as runner:
            created = await t.sessions.CreateSession(
                dag(("a", []), ("b", ["a"])), metadata=(("traceparent", CALLER),)
            )
            name = created.session.name
            assert created.session.trace_id == CALLER_TRACE
            runtime = Traces(
                address=t.scheduler.address,
                runner="w",
                credential=secret,
                instance_id="traced-0",
                heartbeat_interval=0.2,
            )
            async with runtime_serving(runtime):

                async def ended() -> bool:
                    got = await t.sessions.GetSession(spb.GetSessionRequest(name=name))
                    return got.session.state == session_pb2.SESSION_STATE_SUCCEEDED

                for _ in range(200):
                    if await ended():
                        break
                    await asyncio.sleep(0.05)
                assert await ended()
            runner_side = list(runner)
    ours = t.spans()
    (create,) = [s for s in ours if s.name == "heat.scheduler.v1.SessionService/CreateSession"]
    assert hex_trace(create) == CALLER_TRACE and parent_of(create) == int(CALLER_SPAN, 16)
    assert create.kind is trace.SpanKind.SERVER
    assert create.attributes is not None
    assert create.attributes["rpc.response.status_code"] == "OK"
    # Database spans under it, named after the SQL blocks.
    assert {"insert_session", "insert_nodes"} <= {
        s.name for s in ours if parent_of(s) == span_id(create)
    }
    dispatches = {
        s.attributes["heat.node.key"]: s for s in named(ours, "dispatch step") if s.attributes
    }
    assert set(dispatches) == {"a", "b"}
    for dispatch in dispatches.values():
        assert hex_trace(dispatch) == CALLER_TRACE
        assert parent_of(dispatch) == span_id(create), "a dispatch is under the Session's root"
        assert dispatch.kind is trace.SpanKind.PRODUCER
        assert dispatch.start_time is not None and dispatch.end_time is not None
        assert dispatch.start_time <= dispatch.end_time, "queued -> claimed"
    settles = named(ours, "settle success")
    assert {parent_of(s) for s in settles} == {span_id(d) for d in dispatches.values()}
    attempts = {
        s.attributes["heat.node.key"]: s for s in named(runner_side, "attempt step") if s.attributes
    }
    assert set(attempts) == {"a", "b"}
    for key, attempt in attempts.items():
        assert hex_trace(attempt) == CALLER_TRACE
        assert parent_of(attempt) == span_id(dispatches[key]), "the attempt is under its dispatch"
        assert attempt.kind is trace.SpanKind.CONSUMER
        (process,) = [
            s for s in runner_side if s.name == "process" and parent_of(s) == span_id(attempt)
        ]
        (own,) = [s for s in runner_side if parent_of(s) == span_id(process)]
        assert own.name == "author's own work" and hex_trace(own) == CALLER_TRACE
        assert [s.name for s in runner_side if parent_of(s) == span_id(attempt)] == [
            "validate",
            "process",
        ]


async def test_without_a_caller_create_session_is_the_root_of_the_sessions_trace(
    db_dsn: str,
) -> None:
    async with traced(db_dsn) as t:
        await setup_registry(t.scheduler)
        created = await t.sessions.CreateSession(dag(("a", [])))
        (create,) = [s for s in t.spans() if s.name.endswith("/CreateSession")]
        assert create.parent is None
        assert created.session.trace_id == hex_trace(create)
        missing = t.sessions.GetSession(spb.GetSessionRequest(name="s-nothing-here"))
        with pytest.raises(grpc.aio.AioRpcError):
            await missing
        (get,) = [s for s in t.spans() if s.name.endswith("/GetSession")]
        assert get.attributes is not None
        assert get.attributes["rpc.response.status_code"] == "NOT_FOUND"
        assert get.status.status_code is trace.StatusCode.ERROR
        # A caller the access check refuses is seen too: the interceptor is outermost.
        async with grpc.aio.insecure_channel(t.scheduler.address) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await spb_grpc.SessionServiceStub(anonymous).ListSessions(spb.ListSessionsRequest())
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        (listed,) = [s for s in t.spans() if s.name.endswith("/ListSessions")]
        assert listed.attributes is not None
        assert listed.attributes["rpc.response.status_code"] == "UNAUTHENTICATED"


async def test_with_tracing_off_the_callers_context_still_reaches_the_runner(
    scheduler: Scheduler,
) -> None:
    secret = await setup_registry(scheduler)
    sessions = spb_grpc.SessionServiceStub(scheduler.channel)
    created = await sessions.CreateSession(
        dag(("a", [])), metadata=(("traceparent", CALLER), ("tracestate", "vendor=1"))
    )
    assert created.session.trace_id == CALLER_TRACE
    claimer = Claimer(scheduler, secret, "i1", credits=1)
    try:
        task = await claimer.task()
    finally:
        await claimer.close()
    assert dict(task.trace_context) == {"traceparent": CALLER, "tracestate": "vendor=1"}
    plain = await sessions.CreateSession(dag(("b", [])))
    assert plain.session.trace_id == "", "nothing traced it"


# --- metrics --------------------------------------------------------------------------------


def total(metrics: dict[str, list[tuple[dict[str, Any], Any]]], name: str, **where: str) -> float:
    found = 0.0
    for attributes, value in metrics.get(name, []):
        if all(attributes.get(k) == v for k, v in where.items()):
            found += value[0] if isinstance(value, tuple) else value
    return found


async def test_metrics_move_as_tasks_run_fail_retry_and_expire(db_dsn: str) -> None:
    async with traced(db_dsn, lease_duration=1.0, heartbeat_interval=0.25) as t:
        s = t.scheduler
        secret = await setup_registry(s, max_attempts=2)
        await t.sessions.CreateSession(dag(("ok", []), ("flaky", []), ("bad", []), ("lost", [])))
        sampler = s.running.telemetry.sampler
        assert sampler is not None
        await sampler.refresh()
        before = t.metrics()
        assert (
            total(before, "heat.task.count", **{"heat.runner": "w", "heat.task.state": "queued"})
            == 4
        )
        assert total(before, "heat.session.count", **{"heat.session.state": "pending"}) == 1
        assert total(before, "db.client.connection.max") == s.running.store.pool_usage().max_size
        claimer = Claimer(s, secret, "i1", credits=4)
        try:
            tasks = {}
            for _ in range(4):
                task = await claimer.task()
                tasks[task.node_key] = task
            await sampler.refresh()
            assert total(t.metrics(), "heat.task.count", **{"heat.task.state": "running"}) == 4
            await post(
                s,
                secret,
                success(tasks["ok"].attempt_id, 1),
                failed(tasks["flaky"].attempt_id),
                failed(tasks["bad"].attempt_id, permanent=True),
            )
        finally:
            await claimer.close()
        # "lost" gets no heartbeat: its lease expires and it is retried; "flaky" is retried.
        # A second instance takes them, settling each at once (it does not heartbeat: one
        # that holds a task and owes heartbeats is silent, and gets no more).
        second = Claimer(s, secret, "i2", credits=2)
        try:
            retried = []
            for _ in range(2):
                task = await second.task(timeout=15)
                retried.append(task.node_key)
                await post(s, secret, success(task.attempt_id, 2))
            assert sorted(retried) == ["flaky", "lost"]
            # A repeated post gets the same answer, counted as such.
            await post(s, secret, success(tasks["ok"].attempt_id, 1))
        finally:
            await second.close()
        await sampler.refresh()
        m = t.metrics()
    accepted = {"heat.verdict": "accepted"}
    # Every answer counts: three successes settled, and the repeat answered as before.
    assert total(m, "heat.task.results", **accepted, **{"heat.outcome": "success"}) == 4
    assert total(m, "heat.task.results", **accepted, **{"heat.outcome": "failure"}) == 2
    assert total(m, "heat.task.results", **accepted, **{"heat.outcome": "expired"}) == 1
    assert total(m, "heat.task.retries", **{"heat.runner": "w"}) == 2
    assert total(m, "heat.task.lease.expirations", **{"heat.expiry.reason": "lease"}) == 1
    assert total(m, "heat.task.dispatch.duration", **{"heat.runner": "w"}) == 6  # claims
    assert total(m, "heat.task.attempt.duration", **{"heat.outcome": "success"}) == 3
    assert total(m, "heat.task.count", **{"heat.task.state": "running"}) == 0
    assert total(m, "heat.session.count", **{"heat.session.state": "failed"}) == 1
    assert (
        total(
            m,
            "rpc.server.call.duration",
            **{
                "rpc.method": "heat.scheduler.v1.SessionService/CreateSession",
                "rpc.response.status_code": "OK",
            },
        )
        == 1
    )
    assert (
        total(
            m,
            "rpc.server.call.duration",
            **{"rpc.method": "heat.scheduler.v1.RunnerService/PostResult"},
        )
        >= 3
    )


TIMEKEEPER = {"heat.leadership.duty": "timekeeper"}
PROVISIONING = {"heat.leadership.duty": "provisioning"}


def term_starts(t: Traced, duty: str) -> list[tuple[int, float, str]]:
    """(epoch, start as Unix time, holder) of this replica's current term of ``duty``, if it
    leads."""
    return [
        (attributes["heat.leadership.epoch"], value, attributes["heat.leadership.holder"])
        for attributes, value in t.metrics().get("heat.leadership.term.start_time", [])
        if attributes["heat.leadership.duty"] == duty
    ]


async def test_the_leadership_metrics_follow_a_term_from_one_replica_to_the_next(
    db_dsn: str,
) -> None:
    first_served = contextlib.AsyncExitStack()
    try:
        first = await first_served.enter_async_context(traced(db_dsn))
        await eventually(lambda: total(first.metrics(), "heat.leadership.held", **TIMEKEEPER))
        conn = await asyncpg.connect(db_dsn)
        try:
            row = await conn.fetchrow("SELECT * FROM leadership WHERE duty = 'timekeeper'")
        finally:
            await conn.close()
        assert row is not None
        assert term_starts(first, "timekeeper") == [
            (row["epoch"], row["start_time"].timestamp(), row["holder"])
        ]
        # Without a provisioner nobody provisions, and the metrics say so.
        assert total(first.metrics(), "heat.leadership.held", **PROVISIONING) == 0
        async with traced(db_dsn) as second:
            notes = second.scheduler.running.model.notes
            await eventually(lambda: "leader timekeeper" in notes(), timeout=30)
            assert total(second.metrics(), "heat.leadership.held", **TIMEKEEPER) == 0
            assert term_starts(second, "timekeeper") == []
            await first_served.aclose()  # the leader leaves: its term ends, the next begins
            await eventually(
                lambda: total(second.metrics(), "heat.leadership.held", **TIMEKEEPER), timeout=30
            )
            ((epoch, start, _holder),) = term_starts(second, "timekeeper")
            assert epoch == row["epoch"] + 1 and start >= row["start_time"].timestamp()
    finally:
        await first_served.aclose()


async def test_the_health_watch_stream_works_under_the_interceptor(db_dsn: str) -> None:
    async with traced(db_dsn) as t:
        stub = health_pb2_grpc.HealthStub(t.scheduler.channel)
        call = stub.Watch(health_pb2.HealthCheckRequest())
        first = await asyncio.wait_for(call.read(), 5)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        call.cancel()
        checked = await stub.Check(health_pb2.HealthCheckRequest())
        assert checked.status == health_pb2.HealthCheckResponse.SERVING

        def watch_ended() -> list[ReadableSpan]:
            return [s for s in t.spans() if s.name == "grpc.health.v1.Health/Watch"]

        for _ in range(100):
            if watch_ended():
                break
            await asyncio.sleep(0.02)
        (watch,) = watch_ended()
        assert watch.attributes is not None
        assert watch.attributes["rpc.response.status_code"] == "CANCELLED"
