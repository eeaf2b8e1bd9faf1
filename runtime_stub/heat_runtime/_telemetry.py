"""Tracing of attempts, with OpenTelemetry when it is there (``pip install heat-runtime[otel]``).

An attempt is a span (``attempt <template>``, kind CONSUMER) under the context the Task carries
(the scheduler's dispatch span of the node), with ``validate`` and ``process`` spans inside it:
spans the processor opens itself, with OpenTelemetry's global tracer, land under ``process``
(a synchronous hook's thread runs in a copy of that context).

Whether it traces is decided once, as serving starts:

- the standard ``OTEL_*`` variables ask for traces (``OTEL_TRACES_EXPORTER``, or an OTLP
  endpoint, and not ``OTEL_SDK_DISABLED=true``): the runtime sets up OpenTelemetry's global
  tracer provider from them, unless the application already did (then it joins that one); the
  sampler is the standard one the variables name, by default parent-based at a trace-id ratio
  of 0.1 — an attempt follows the scheduler's decision for its Session;
- or the application imported OpenTelemetry itself before serving: the runtime joins
  whatever provider it set up;
- else nothing: OpenTelemetry is not imported at all, and a runner image without the extra
  pays nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final

from heat_runtime._errors import ConfigError
from heat_runtime._version import VERSION

__all__ = ["NO_TRACING", "Tracing", "setup"]

log = logging.getLogger("heat_runtime")

DEFAULT_RATIO: Final = 0.1
_NOTHING: Final = nullcontext()
_UNSAMPLED_CACHE: Final = 1024  # unsampled traces whose context is kept parsed


class Tracing:
    """No spans (the base class): every call returns at once."""

    def attempt(
        self, template: str, trace_context: Mapping[str, str], attributes: Mapping[str, Any]
    ) -> AbstractContextManager[Any]:
        """The attempt's span, current inside the block; yields it (None without tracing)."""
        return _NOTHING

    def hook(self, name: str) -> AbstractContextManager[Any]:
        """A hook's span (``validate``, ``process``), current inside the block."""
        return _NOTHING

    def finished(self, span: Any, outcome: str, message: str) -> None:
        """What the attempt came to (success, permanent-failure, ...)."""

    def shutdown(self) -> None:
        """Flush what the exporter holds (only a provider this runtime set up)."""


NO_TRACING: Final = Tracing()


class _OtelTracing(Tracing):
    def __init__(self, provider: Any | None) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._context = context
        self._propagator = TraceContextTextMapPropagator()
        self._provider = provider  # set up here: flushed at shutdown
        self._tracer = trace.get_tracer("heat_runtime", VERSION)
        self._unsampled: dict[tuple[str, str], Any] = {}  # context of an unsampled trace

    def attempt(
        self, template: str, trace_context: Mapping[str, str], attributes: Mapping[str, Any]
    ) -> AbstractContextManager[Any]:
        traceparent = trace_context.get("traceparent", "")
        if not _sampled(traceparent):
            # The scheduler does not record this trace: nothing below it is either. Only its
            # context is made current, so the processor's own spans follow that decision. The
            # tasks of one unsampled Session all carry its one context: parsed once.
            key = (traceparent, trace_context.get("tracestate", ""))
            parent = self._unsampled.get(key)
            if parent is None:
                if len(self._unsampled) >= _UNSAMPLED_CACHE:
                    self._unsampled.clear()
                parent = self._unsampled[key] = self._propagator.extract(dict(trace_context))
            return _Attached(self._context, parent)
        return self._span(template, trace_context, attributes)

    @contextlib.contextmanager
    def _span(
        self, template: str, trace_context: Mapping[str, str], attributes: Mapping[str, Any]
    ) -> Iterator[Any]:
        with self._tracer.start_as_current_span(
            f"attempt {template}",
            context=self._propagator.extract(dict(trace_context)),
            kind=self._trace.SpanKind.CONSUMER,
            attributes=dict(attributes),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def hook(self, name: str) -> AbstractContextManager[Any]:
        if not self._trace.get_current_span().is_recording():
            return _NOTHING
        return self._tracer.start_as_current_span(name)

    def finished(self, span: Any, outcome: str, message: str) -> None:
        if span is None or not span.is_recording():
            return
        span.set_attribute("heat.outcome", outcome)
        if outcome.endswith("failure"):
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, message[:500]))

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


class _Attached:
    """``context`` current inside the block (an unsampled attempt: no span); yields None."""

    __slots__ = ("_api", "_context", "_token")

    def __init__(self, api: Any, context: Any) -> None:
        self._api = api
        self._context = context
        self._token: Any = None

    def __enter__(self) -> None:
        self._token = self._api.attach(self._context)

    def __exit__(self, *exc: object) -> None:
        self._api.detach(self._token)


def _sampled(traceparent: str) -> bool:
    """Whether a W3C traceparent says its trace is recorded; True without one (a root)."""
    if not traceparent:
        return True
    flags = traceparent.rsplit("-", 1)[-1]
    try:
        return bool(int(flags, 16) & 1)
    except ValueError:
        return True


def _wanted(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


def setup(runner: str, instance_id: str, env: Mapping[str, str] | None = None) -> Tracing:
    """The tracing of this serve(), as the module docstring says."""
    environ = os.environ if env is None else env
    wanted = _wanted(environ)
    if not wanted and "opentelemetry.trace" not in sys.modules:
        return NO_TRACING
    try:
        from opentelemetry import trace
    except ImportError:
        log.warning(
            "OTEL_* variables ask for traces, but OpenTelemetry is not installed:"
            " pip install 'heat-runtime[otel]'; not tracing"
        )
        return NO_TRACING
    provider = None
    if wanted and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        provider = _provider(runner, instance_id, environ)
        if provider is None:
            return NO_TRACING
        trace.set_tracer_provider(provider)
    return _OtelTracing(provider)


def _provider(runner: str, instance_id: str, env: Mapping[str, str]) -> Any | None:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        log.warning(
            "OTEL_* variables ask for traces, but the OpenTelemetry SDK is not installed:"
            " pip install 'heat-runtime[otel]'; not tracing"
        )
        return None
    attributes = {"heat.runner": runner, "service.instance.id": instance_id}
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    if not named:
        attributes["service.name"] = f"heat-runner-{runner}" if runner else "heat-runner"
    sampler = None  # the SDK reads OTEL_TRACES_SAMPLER itself
    if not env.get("OTEL_TRACES_SAMPLER", "").strip():
        sampler = ParentBased(TraceIdRatioBased(DEFAULT_RATIO))
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    for name in (e.strip() for e in exporters.split(",")):
        if name == "otlp":
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc"
            ).strip()
            if protocol != "grpc":
                raise ConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported; the runtime"
                    " exports OTLP over gRPC only: use grpc (or leave it unset)"
                )
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            endpoint = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or None
            )
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name != "none":
            raise ConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not one of: otlp, console, none")
    return provider
