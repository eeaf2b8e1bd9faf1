"""An OTLP/gRPC receiver for the tests and bench/: the OpenTelemetry protocol's own collector
services (TraceService, MetricsService, from opentelemetry-proto), served on loopback, keeping
what they receive (or only counting it, for bench/)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name
    span: trace_pb2.Span

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    def attribute(self, key: str) -> Any:
        for kv in self.span.attributes:
            if kv.key == key:
                return getattr(kv.value, kv.value.WhichOneof("value") or "string_value")
        return None


@dataclass
class _Store:
    keep: bool
    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    span_count: int = 0


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: _Store) -> None:
        self._store = store

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self._store.span_count += len(scope.spans)
        if self._store.keep:
            self._store.traces.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, store: _Store) -> None:
        self._store = store

    async def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        if self._store.keep:
            self._store.metrics.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class Receiver:
    """``async with Receiver() as r``: an OTLP/gRPC endpoint at ``r.endpoint``."""

    def __init__(self, *, keep: bool = True) -> None:
        self._store = _Store(keep)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def span_count(self) -> int:
        return self._store.span_count

    async def __aenter__(self) -> Receiver:
        server = grpc.aio.server()
        # (the generated registration functions are untyped)
        add_traces: Any = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        add_metrics: Any = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server
        add_traces(_Traces(self._store), server)
        add_metrics(_Metrics(self._store), server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.stop(0)

    def spans(self) -> list[ReceivedSpan]:
        return list(self._spans())

    def _spans(self) -> Iterator[ReceivedSpan]:
        for request in self._store.traces:
            for resource in request.resource_spans:
                service = ""
                for kv in resource.resource.attributes:
                    if kv.key == "service.name":
                        service = kv.value.string_value
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        yield ReceivedSpan(service, span)

    def metric_names(self) -> set[str]:
        return {
            metric.name
            for request in self._store.metrics
            for resource in request.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
