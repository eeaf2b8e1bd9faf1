"""The telemetry port (``scheduler.domain.telemetry.Telemetry``) kept with OpenTelemetry.

Spans (when a tracer is given): a node's dispatch span runs from its ``ready_time`` to its
claim, under the Session's stored context, with the span id its attempt id gives
(``dispatch_span_id``); a settlement is a span under the dispatch span of the attempt it
settles, with an event for a scheduled retry or an expiry; a named SQL statement is a client
span under whatever traced span is current. Without a tracer only contexts pass: a Task carries
its Session's context (the caller's, when only propagating). Metrics (when instruments are
given) are recorded at the same points.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime
from typing import Final

from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from scheduler.domain.leadership import Term
from scheduler.domain.runner_protocol import ClaimedTask
from scheduler.domain.sessions import NO_TRACE, NodeState, TraceContext
from scheduler.domain.telemetry import Answered, Settled, dispatch_span_id
from scheduler.domain.verdicts import OutcomeKind, ResultStatus
from scheduler.telemetry.instruments import RUNNER, Instruments

PROPAGATOR: Final = TraceContextTextMapPropagator()
_NOTHING: Final = nullcontext()
_NEXT_SPAN_ID: contextvars.ContextVar[int] = contextvars.ContextVar("heat_next_span_id", default=0)


class SpanIds(RandomIdGenerator):
    """Random ids, except where the caller names the next span's id (a dispatch span)."""

    def generate_span_id(self) -> int:
        wanted = _NEXT_SPAN_ID.get()
        return wanted if wanted else super().generate_span_id()


def context_of(span: trace.Span) -> TraceContext:
    """The W3C context of ``span`` (empty when it has none)."""
    found = span.get_span_context()
    if not found.is_valid:
        return NO_TRACE
    # As TraceContextTextMapPropagator.inject writes it, without a Context and a carrier.
    return TraceContext(
        f"00-{found.trace_id:032x}-{found.span_id:016x}-{found.trace_flags:02x}",
        found.trace_state.to_header() if found.trace_state else "",
    )


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1e9)


class Reporter:
    """Tells OpenTelemetry what the services report."""

    def __init__(self, tracer: Tracer | None, instruments: Instruments | None) -> None:
        self._tracer = tracer
        self._instruments = instruments
        self.tracing = tracer is not None
        self._attributes: dict[tuple[str, str], dict[str, str]] = {}

    def _labels(self, runner: str, outcome: str = "") -> dict[str, str]:
        """The attributes of a per-task measurement, made once (a record per task is the hot
        path of metrics)."""
        found = self._attributes.get((runner, outcome))
        if found is None:
            found = {RUNNER: runner, "heat.outcome": outcome} if outcome else {RUNNER: runner}
            if len(self._attributes) > 10_000:
                self._attributes.clear()
            self._attributes[runner, outcome] = found
        return found

    # -- traces ------------------------------------------------------------------------------

    def current(self) -> TraceContext:
        span = trace.get_current_span()
        if not span.get_span_context().is_valid:
            return NO_TRACE
        return context_of(span)

    def dispatched(self, tasks: Sequence[ClaimedTask], now: datetime) -> list[ClaimedTask]:
        instruments = self._instruments
        if instruments is not None:
            record = instruments.dispatch_duration.record
            labels = self._labels
            for task in tasks:
                if task.ready_time is not None:
                    waited = (now - task.ready_time).total_seconds()
                    record(waited if waited > 0.0 else 0.0, labels(task.runner))
        if self._tracer is None:
            return list(tasks)
        # A Session whose trace is not sampled records nothing below it: its tasks carry its
        # own context (not sampled either), and no span is made for them at all. (The flag is
        # read once per Session context in the batch: its tasks share it.)
        sampled: dict[str, bool] = {}
        out: list[ClaimedTask] = []
        for task in tasks:
            parent = task.trace.traceparent
            wanted = sampled.get(parent)
            if wanted is None:
                wanted = sampled[parent] = task.trace.sampled
            out.append(self._dispatch_span(task, now) if wanted else task)
        return out

    def _dispatch_span(self, task: ClaimedTask, now: datetime) -> ClaimedTask:
        assert self._tracer is not None
        parent = PROPAGATOR.extract(task.trace.carrier())
        token = _NEXT_SPAN_ID.set(dispatch_span_id(task.attempt_id))
        try:
            span = self._tracer.start_span(
                f"dispatch {task.node_template}",
                context=parent,
                kind=SpanKind.PRODUCER,
                start_time=_ns(task.ready_time or now),
                attributes={
                    "heat.session": task.session,
                    "heat.node.key": task.node_key,
                    "heat.node_template": task.node_template,
                    RUNNER: task.runner,
                    "heat.attempt": task.attempt,
                    "heat.attempt_id": task.attempt_id,
                    "heat.instance_id": task.owner,
                },
            )
        finally:
            _NEXT_SPAN_ID.reset(token)
        span.end(end_time=_ns(now))
        return replace(task, trace=context_of(span))

    def settled(
        self, settled: Sequence[Settled], answered: Sequence[Answered], now: datetime
    ) -> None:
        if self._instruments is not None:
            self._count(settled, answered, now)
        if self._tracer is not None:
            sampled: dict[str, bool] = {}
            for item in settled:
                parent = item.node.trace.traceparent
                wanted = sampled.get(parent)
                if wanted is None:
                    wanted = sampled[parent] = item.node.trace.sampled
                if wanted:
                    self._settle_span(item, now)

    def _settle_span(self, item: Settled, now: datetime) -> None:
        assert self._tracer is not None
        node = item.node
        session = PROPAGATOR.extract(node.trace.carrier())
        session_span = trace.get_current_span(session).get_span_context()
        if not session_span.is_valid:
            return
        dispatch = trace.SpanContext(
            session_span.trace_id,
            dispatch_span_id(node.attempt_id),
            is_remote=True,
            trace_flags=session_span.trace_flags,
            trace_state=session_span.trace_state,
        )
        outcome = _outcome(item)
        span = self._tracer.start_span(
            f"settle {outcome}",
            context=trace.set_span_in_context(trace.NonRecordingSpan(dispatch)),
            start_time=_ns(now),
            attributes={
                RUNNER: node.runner,
                "heat.attempt": node.attempt,
                "heat.attempt_id": node.attempt_id,
                "heat.outcome": outcome,
                "heat.verdict": item.status.value,
                "heat.node.state": item.new_state.value if item.new_state else "",
            },
        )
        if not span.is_recording():
            return
        if item.expiry:
            span.add_event(
                "attempt timed out" if item.expiry == "timeout" else "lease expired",
                {"heat.expiry.reason": item.expiry},
                timestamp=_ns(now),
            )
        if item.new_state is NodeState.RETRY_WAIT and item.not_before is not None:
            span.add_event(
                "retry scheduled",
                {
                    "heat.retry.not_before": item.not_before.isoformat(),
                    "heat.retry.delay_s": (item.not_before - now).total_seconds(),
                },
                timestamp=_ns(now),
            )
        if item.new_state is NodeState.FAILED or item.kind is OutcomeKind.FAILURE:
            span.set_status(Status(StatusCode.ERROR, item.message[:500]))
        span.end(end_time=_ns(now))

    def statement(self, name: str) -> AbstractContextManager[object]:
        if self._tracer is None or not trace.get_current_span().is_recording():
            return _NOTHING
        return self._statement(name)

    @contextmanager
    def _statement(self, name: str) -> Iterator[object]:
        assert self._tracer is not None
        with self._tracer.start_as_current_span(
            name,
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": "postgresql", "db.query.summary": name},
        ) as span:
            yield span

    # -- metrics -----------------------------------------------------------------------------

    def _count(
        self, settled: Sequence[Settled], answered: Sequence[Answered], now: datetime
    ) -> None:
        """Counted per batch (a settlement holds up to hundreds of results), one add per
        distinct set of attributes; durations recorded one by one."""
        instruments = self._instruments
        assert instruments is not None
        results: Counter[tuple[str, str, str]] = Counter()
        expirations: Counter[tuple[str, str]] = Counter()
        retries: Counter[str] = Counter()
        record = instruments.attempt_duration.record
        labels = self._labels
        forbidden = ResultStatus.FORBIDDEN
        for item in settled:
            node = item.node
            runner = node.runner
            outcome = _outcome(item)
            results[runner, item.status.value, outcome] += 1
            if node.started is not None and item.status is not forbidden:
                took = (now - node.started).total_seconds()
                record(took if took > 0.0 else 0.0, labels(runner, outcome))
            if item.expiry and item.new_state is not None:
                expirations[runner, item.expiry] += 1
            if item.new_state is NodeState.RETRY_WAIT:
                retries[runner] += 1
        for answer in answered:
            if answer.runner is not None:
                results[answer.runner, answer.status.value, answer.kind.value] += 1
        for (runner, verdict, outcome), count in results.items():
            instruments.results.add(
                count, {RUNNER: runner, "heat.verdict": verdict, "heat.outcome": outcome}
            )
        for (runner, reason), count in expirations.items():
            instruments.lease_expirations.add(count, {RUNNER: runner, "heat.expiry.reason": reason})
        for runner, count in retries.items():
            instruments.retries.add(count, {RUNNER: runner})

    def instance_failed(self, runner: str) -> None:
        if self._instruments is not None:
            self._instruments.instance_failures.add(1, {RUNNER: runner})

    def provisioning_error(self, runner: str, operation: str) -> None:
        if self._instruments is not None:
            self._instruments.provisioning_errors.add(
                1, {RUNNER: runner, "heat.provisioning.operation": operation}
            )

    def leading(self, term: Term) -> None:
        if self._instruments is not None:
            self._instruments.leading(term)


def _outcome(item: Settled) -> str:
    """success, failure, release, or expired (the scheduler failed the attempt)."""
    return "expired" if item.expiry else item.kind.value
