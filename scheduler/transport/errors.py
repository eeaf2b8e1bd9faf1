"""The one table that maps domain errors to gRPC status codes, applied to every call.

Callers get the code, a message, and rich details (google.rpc.ErrorInfo, and
google.rpc.BadRequest field violations for INVALID_ARGUMENT), each bounded so the whole
status fits the trailing metadata peers accept. An error we did not raise on purpose is
logged with its stack and reaches the caller as a bare INTERNAL.

The same interceptor decodes every request itself and sweeps it (``scheduler.transport.bounds``)
before the servicer runs, so a request protobuf cannot decode, or one out of the edge's bounds,
is answered INVALID_ARGUMENT like any other bad field.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from scheduler.domain import errors
from scheduler.domain.limits import ERROR_MESSAGE_MAX_LENGTH, ERROR_METADATA_VALUE_MAX_LENGTH
from scheduler.transport import bounds

log = logging.getLogger(__name__)

DOMAIN: Final = "scheduler.heat"
MAX_VIOLATIONS: Final = 12
OFF_LOOP_BYTES: Final = 256 * 1024

CODES: Final[dict[type[errors.SchedulerError], grpc.StatusCode]] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
}


def code_of(error: errors.SchedulerError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_of(error: errors.SchedulerError) -> grpc.Status:
    code = code_of(error)
    metadata: dict[str, str] = {}
    for attr in ("kind", "name"):
        value = getattr(error, attr, None)
        if isinstance(value, str) and value:
            metadata[attr] = _cut(value, ERROR_METADATA_VALUE_MAX_LENGTH)
    if isinstance(error, errors.InUse):
        metadata["users"] = _cut(",".join(error.users), ERROR_METADATA_VALUE_MAX_LENGTH)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata)
    details = [_pack(info)]
    if isinstance(error, errors.InvalidArgument):
        # Details travel in trailing metadata, which peers cap (8 KiB by default).
        shown = error.violations[:MAX_VIOLATIONS]
        violations = [
            error_details_pb2.BadRequest.FieldViolation(
                field=v.field[:200], description=v.description[:300]
            )
            for v in shown
        ]
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    message = _cut(error.message, ERROR_MESSAGE_MAX_LENGTH)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _internal() -> grpc.Status:
    converted: grpc.Status = rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.INTERNAL, message="internal error; the scheduler's log has the details"
        )
    )
    return converted


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    if isinstance(exc, errors.SchedulerError) and not isinstance(exc, errors.Internal):
        await context.abort_with_status(status_of(exc))
    if isinstance(exc, NotImplementedError):
        # The generated base servicers raise this for methods a later release implements.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this method is not implemented yet")
    log.exception("unexpected error in %s", context.__class__.__name__, exc_info=exc)
    await context.abort_with_status(_internal())


Decode = Callable[[Any], Any]


def _decode_into(
    behavior: Callable[..., Any], decode: Decode, streaming: bool
) -> Callable[..., Any]:
    """``behavior`` taking raw requests: decoded and swept first (in the guard, so a bad one
    is answered like any other error)."""
    if streaming:

        def streamed(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return behavior(bounds.decoded(requests, decode), context)

        return streamed
    if inspect.isasyncgenfunction(behavior):

        async def single_streamed(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async for item in behavior(await _decoded(decode, request), context):
                yield item

        return single_streamed

    async def single(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        result = behavior(await _decoded(decode, request), context)
        return await result if inspect.isawaitable(result) else result

    return single


async def _decoded(decode: Decode, data: bytes) -> Any:
    """A large request (a DAG of many nodes) is decoded and swept off the event loop."""
    if len(data) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(decode, data)
    return decode(data)


def _guard_unary(behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as exc:
            await _abort(context, exc)

    return guarded


def _guard_stream(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def guarded(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as exc:
            await _abort(context, exc)

    return guarded


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler so no exception leaves as UNKNOWN."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        for kind, build in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        ):
            behavior = getattr(handler, kind)
            if behavior is None:
                continue
            # Streaming handlers are async generators, or coroutines that call write().
            guard = _guard_stream if inspect.isasyncgenfunction(behavior) else _guard_unary
            if handler.request_deserializer is not None:
                # gRPC hands the raw bytes over; decoding happens inside the guard.
                behavior = _decode_into(
                    behavior,
                    bounds.decoder(handler.request_deserializer),
                    handler.request_streaming,
                )
            return build(
                guard(behavior),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        return handler
