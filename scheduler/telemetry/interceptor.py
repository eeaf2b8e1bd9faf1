"""RPC telemetry: a server span and a duration for every call, our own interceptor.

(The contrib gRPC instrumentation breaks the health service's Watch stream; this one wraps
handlers the way ``transport.errors.ErrorInterceptor`` does: async-generator streams as
generators, everything else — unary calls and streams that call ``context.write()`` — as
coroutines.) It sits first in the chain, so the span and the status it records are what the
caller sees after every inner interceptor had its say.

The caller's ``traceparent`` (W3C trace context in the call's metadata) is the parent of the
server span; with tracing off, that context alone becomes current, so what the call creates
(a Session) still carries the caller's trace to the runners.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeAlias

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from scheduler.telemetry.instruments import Instruments
from scheduler.telemetry.reporter import PROPAGATOR

_PROPAGATED: Final = frozenset({"traceparent", "tracestate"})
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _status(context: grpc.aio.ServicerContext[Any, Any], failed: BaseException | None) -> str:
    if isinstance(failed, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for known in grpc.StatusCode:
            if known.value[0] == code:
                return known.name
    if failed is not None and not isinstance(failed, grpc.aio.AbortError):
        return "UNKNOWN"
    return "OK"


class _Call:
    """One call's span and clock."""

    def __init__(self, owner: TelemetryInterceptor, method: str, carrier: dict[str, str]):
        self._owner = owner
        self._method = method
        self._started = time.perf_counter()
        parent = PROPAGATOR.extract(carrier) if carrier else None
        self._span: trace.Span | None = None
        if owner.tracer is not None:
            service = method.partition("/")[0]
            self._span = owner.tracer.start_span(
                method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={
                    "rpc.system.name": "grpc",
                    "rpc.method": method,
                    "rpc.service": service,
                },
            )
            self._context = trace.set_span_in_context(self._span, parent)
        else:
            self._context = parent if parent is not None else otel_context.get_current()
        self._token: object | None = None

    def enter(self) -> None:
        self._token = otel_context.attach(self._context)

    def leave(self) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None

    def end(
        self, context: grpc.aio.ServicerContext[Any, Any], failed: BaseException | None
    ) -> None:
        status = _status(context, failed)
        instruments = self._owner.instruments
        if instruments is not None:
            instruments.rpc_duration.record(
                time.perf_counter() - self._started,
                {
                    "rpc.system.name": "grpc",
                    "rpc.method": self._method,
                    "rpc.response.status_code": status,
                },
            )
        if self._span is not None:
            self._span.set_attribute("rpc.response.status_code", status)
            if status != "OK":
                self._span.set_status(Status(StatusCode.ERROR, status))
            self._span.end()


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tracer: Tracer | None, instruments: Instruments | None) -> None:
        self.tracer = tracer
        self.instruments = instruments

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.lstrip("/")
        carrier = {
            key: value
            for key, value in handler_call_details.invocation_metadata or ()
            if key in _PROPAGATED and isinstance(value, str)
        }
        if self.tracer is None and self.instruments is None and not carrier:
            return handler  # nothing to record, no context to pass on
        for kind, build in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        ):
            behavior = getattr(handler, kind)
            if behavior is None:
                continue
            wrap = self._stream if inspect.isasyncgenfunction(behavior) else self._unary
            return build(
                wrap(behavior, method, carrier),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(
        self, behavior: Callable[..., Any], method: str, carrier: dict[str, str]
    ) -> Callable[..., Awaitable[Any]]:
        async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = _Call(self, method, carrier)
            call.enter()
            failed: BaseException | None = None
            try:
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            except BaseException as exc:
                failed = exc
                raise
            finally:
                call.leave()
                call.end(context, failed)

        return traced

    def _stream(
        self, behavior: Callable[..., AsyncIterator[Any]], method: str, carrier: dict[str, str]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def traced(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            call = _Call(self, method, carrier)
            failed: BaseException | None = None
            # The call's task runs the generator; the context is current while it runs.
            call.enter()
            try:
                async for item in behavior(request, context):
                    call.leave()
                    yield item
                    call.enter()
            except BaseException as exc:
                failed = exc
                raise
            finally:
                call.leave()
                call.end(context, failed)

        return traced
