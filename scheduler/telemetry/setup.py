"""The scheduler's telemetry put together from its settings: providers, exporters, the
Prometheus endpoint, the gauges' sampler, and what the rest of the scheduler is handed (the
port's ``reporter``, the RPC ``interceptor``).

The providers are this scheduler's own, never OpenTelemetry's global ones, so several
schedulers in one process (the tests) each report on their own. With nothing configured no
provider is made: the reporter only passes trace contexts along.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from scheduler.domain.ports import Store
from scheduler.domain.telemetry import PoolUsage
from scheduler.settings import SettingsError
from scheduler.telemetry.config import Sampling, TelemetryConfig
from scheduler.telemetry.gauges import INTERVAL
from scheduler.telemetry.gauges import Sampler as GaugeSampler
from scheduler.telemetry.instruments import Instruments
from scheduler.telemetry.interceptor import TelemetryInterceptor
from scheduler.telemetry.reporter import Reporter, SpanIds

SCOPE = "heat-scheduler"


def sampler(sampling: Sampling) -> Sampler:
    ratio = TraceIdRatioBased(sampling.ratio)
    root: Sampler = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ALWAYS_ON,
        "parentbased_always_off": ALWAYS_OFF,
        "parentbased_traceidratio": ratio,
    }[sampling.name]
    return ParentBased(root) if sampling.name.startswith("parentbased_") else root


class SchedulerTelemetry:
    """Everything telemetry of one scheduler; ``span_exporters`` and ``metric_readers`` are
    added to what the config names (tests hand in in-memory ones)."""

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        span_exporters: Sequence[SpanExporter] = (),
        metric_readers: Sequence[MetricReader] = (),
        gauge_interval: float = INTERVAL,
    ) -> None:
        self.config = config
        resource = Resource.create(dict(config.resource))
        self._tracer_provider: TracerProvider | None = None
        if config.traces or span_exporters:
            provider = TracerProvider(
                resource=resource, sampler=sampler(config.sampling), id_generator=SpanIds()
            )
            for processor in _span_processors(config, span_exporters):
                provider.add_span_processor(processor)
            self._tracer_provider = provider
        readers = [*metric_readers, *_metric_readers(config)]
        self._prometheus: Any = None
        if config.metrics_listen:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=True)
            readers.append(
                PrometheusMetricReader(scope_info_enabled=False, registry=self._registry)
            )
        # No exemplars: measurements are taken outside spans (a claim, a settlement batch), so
        # the trace-based filter would find none, at a cost per measurement.
        self._meter_provider = (
            MeterProvider(
                metric_readers=readers, resource=resource, exemplar_filter=AlwaysOffExemplarFilter()
            )
            if readers
            else None
        )
        tracer = self._tracer_provider.get_tracer(SCOPE) if self._tracer_provider else None
        self.instruments = (
            Instruments(self._meter_provider.get_meter(SCOPE)) if self._meter_provider else None
        )
        self.reporter = Reporter(tracer, self.instruments)
        self.interceptor = TelemetryInterceptor(tracer, self.instruments)
        self._gauge_interval = gauge_interval
        self.sampler: GaugeSampler | None = None
        self.metrics_port: int | None = None

    def start(self, store: Store, pool_usage: Callable[[], PoolUsage]) -> None:
        """Sample the gauges and serve the Prometheus endpoint (when metrics are on)."""
        if self.instruments is None:
            return
        self.instruments.pool_usage = pool_usage
        self.sampler = GaugeSampler(store, self.instruments, self._gauge_interval)
        self.sampler.start()
        if self.config.metrics_listen:
            self._serve_metrics(self.config.metrics_listen)

    def _serve_metrics(self, listen: str) -> None:
        from prometheus_client import start_http_server

        match = re.fullmatch(r"\[?(.*?)\]?:(\d+)", listen)
        assert match is not None  # checked with the settings
        host, port = match.group(1), int(match.group(2))
        try:
            server, thread = start_http_server(port, host or "0.0.0.0", self._registry)  # noqa: S104
        except OSError as exc:
            raise SettingsError(
                f"setting metrics_listen (--metrics-listen / HEAT_METRICS_LISTEN): cannot "
                f"listen on {listen}: {exc.strerror or exc}"
            ) from None
        self._prometheus = (server, thread)
        self.metrics_port = int(server.server_port)

    async def stop(self) -> None:
        """Stop sampling and serving."""
        if self.sampler is not None:
            await self.sampler.stop()
            self.sampler = None
        if self._prometheus is not None:
            server, thread = self._prometheus
            await asyncio.to_thread(server.shutdown)
            server.server_close()
            thread.join(timeout=5)
            self._prometheus = None

    async def shutdown(self) -> None:
        """Stop, and flush what the exporters still hold; nothing is reported after."""
        await self.stop()
        for provider in (self._tracer_provider, self._meter_provider):
            if provider is not None:
                await asyncio.to_thread(provider.shutdown)
        self._tracer_provider = self._meter_provider = None


def _span_processors(config: TelemetryConfig, extra: Sequence[SpanExporter]) -> list[SpanProcessor]:
    processors: list[SpanProcessor] = [SimpleSpanProcessor(e) for e in extra]
    for name in config.traces:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.traces_endpoint or None)
            processors.append(BatchSpanProcessor(exporter))
        elif name == "console":
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
    return processors


def _metric_readers(config: TelemetryConfig) -> list[MetricReader]:
    readers: list[MetricReader] = []
    millis = config.export_interval * 1000
    for name in config.metrics:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            exporter = OTLPMetricExporter(endpoint=config.metrics_endpoint or None)
            readers.append(PeriodicExportingMetricReader(exporter, export_interval_millis=millis))
        elif name == "console":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            readers.append(
                PeriodicExportingMetricReader(
                    ConsoleMetricExporter(), export_interval_millis=millis
                )
            )
    return readers
