"""Caller identities at the edge: the interceptor that authenticates and authorises every call
before its handler runs, and AccessService (who am I, access tokens, the audit trail).

The interceptor reads what the call presented (``authorization: Bearer …`` metadata, the
client certificate of an mTLS connection), asks the access service who that is, and the
domain's table whether they may call the method; the handler then finds the identity with
``caller()``. It sits inside the error interceptor, so its refusals become statuses.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, Final, TypeAlias

import grpc
from heat.scheduler.v1 import access_pb2
from heat.scheduler.v1 import access_service_pb2 as pb
from heat.scheduler.v1 import access_service_pb2_grpc as pb_grpc

from scheduler.domain.access import AccessToken, Identity, IdentityKind, Presented, Role
from scheduler.domain.audit import AuditEvent, AuditFilter
from scheduler.domain.errors import PermissionDenied, Unauthenticated
from scheduler.domain.limits import Limits
from scheduler.domain.paging import PageRequest
from scheduler.service.access import Access
from scheduler.transport.convert import dict_to_struct, duration, to_timestamp

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("caller", default=None)

ROLES: Final = {
    Role.ADMIN: access_pb2.ROLE_ADMIN,
    Role.OPERATOR: access_pb2.ROLE_OPERATOR,
    Role.VIEWER: access_pb2.ROLE_VIEWER,
    Role.RUNNER: access_pb2.ROLE_RUNNER,
}
ROLE_OF: Final = {v: k for k, v in ROLES.items()}
KINDS: Final = {
    IdentityKind.TOKEN: access_pb2.CALLER_KIND_TOKEN,
    IdentityKind.CERTIFICATE: access_pb2.CALLER_KIND_CERTIFICATE,
    IdentityKind.RUNNER_CREDENTIAL: access_pb2.CALLER_KIND_RUNNER_CREDENTIAL,
    IdentityKind.SYSTEM: access_pb2.CALLER_KIND_SYSTEM,
}


def caller() -> Identity:
    """The identity of the call being handled (the interceptor let it through)."""
    identity = _CALLER.get()
    if identity is None:
        raise Unauthenticated("this call needs a caller identity")
    return identity


def runner_caller() -> str:
    """The Runner of the runner credential the call being handled came with."""
    identity = caller()
    if identity.role is not Role.RUNNER or not identity.runner:
        raise PermissionDenied("the runner protocol needs a runner credential")
    return identity.runner


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def presented(context: Context) -> Presented:
    """What the call brought: its bearer secret, and its client certificate's names."""
    bearer: str | None = None
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, secret = value.strip().partition(" ")
            bearer = secret.strip() if scheme.lower() == "bearer" else ""
    auth = context.auth_context() or {}
    subjects = list(auth.get("x509_subject") or ())
    names = list(auth.get("x509_subject_alternative_name") or ())
    return Presented(
        bearer=bearer,
        certificate_subject=_text(subjects[0]) if subjects else "",
        certificate_names=tuple(_text(n) for n in names),
    )


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates and authorises every call, then runs its handler as that caller."""

    def __init__(self, access: Access) -> None:
        self._access = access

    async def _admit(self, method: str, context: Context) -> None:
        _CALLER.set(await self._access.admit(method, presented(context)))

    def _unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        async def admitted(request: Any, context: Context) -> Any:
            await self._admit(method, context)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result

        return admitted

    def _stream(
        self, method: str, behavior: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def admitted(request: Any, context: Context) -> AsyncIterator[Any]:
            await self._admit(method, context)
            async for item in behavior(request, context):
                yield item

        return admitted

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
        method = handler_call_details.method.lstrip("/")
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
                wrap(method, behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


# -- AccessService ---------------------------------------------------------------------------


def caller_message(identity: Identity) -> access_pb2.Caller:
    return access_pb2.Caller(
        kind=KINDS[identity.kind], subject=identity.subject, role=ROLES[identity.role]
    )


def token_message(token: AccessToken) -> access_pb2.AccessToken:
    message = access_pb2.AccessToken(
        id=token.id,
        role=ROLES[token.role],
        secret=token.secret,
        description=token.description,
        created_by=token.created_by,
    )
    for field, value in (
        ("create_time", token.create_time),
        ("expire_time", token.expire_time),
        ("revoke_time", token.revoke_time),
    ):
        stamp = to_timestamp(value)
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    return message


def event_message(event: AuditEvent) -> access_pb2.AuditEvent:
    message = access_pb2.AuditEvent(
        id=event.id,
        caller=caller_message(event.actor),
        action=event.action,
        resource=event.resource,
        name=event.name,
        detail=dict_to_struct(event.detail),
        time=to_timestamp(event.time),
    )
    return message


class AccessServicer(pb_grpc.AccessServiceServicer):
    def __init__(self, access: Access, limits: Limits) -> None:
        self._access = access
        self._limits = limits

    async def GetCaller(
        self, request: pb.GetCallerRequest, context: Context
    ) -> pb.GetCallerResponse:
        return pb.GetCallerResponse(caller=caller_message(caller()))

    async def IssueAccessToken(
        self, request: pb.IssueAccessTokenRequest, context: Context
    ) -> pb.IssueAccessTokenResponse:
        ttl = duration(request.ttl) if request.HasField("ttl") else timedelta(0)
        issued = await self._access.issue_token(
            by=caller(),
            role=ROLE_OF.get(request.role),
            description=request.description,
            ttl=ttl,
        )
        return pb.IssueAccessTokenResponse(token=token_message(issued))

    async def ListAccessTokens(
        self, request: pb.ListAccessTokensRequest, context: Context
    ) -> pb.ListAccessTokensResponse:
        found = await self._access.list_tokens(show_revoked=request.show_revoked)
        return pb.ListAccessTokensResponse(tokens=[token_message(t) for t in found])

    async def RevokeAccessToken(
        self, request: pb.RevokeAccessTokenRequest, context: Context
    ) -> pb.RevokeAccessTokenResponse:
        revoked = await self._access.revoke_token(by=caller(), token_id=request.id)
        return pb.RevokeAccessTokenResponse(token=token_message(revoked))

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context
    ) -> pb.ListAuditEventsResponse:
        page = await self._access.audit(
            AuditFilter(subject=request.subject, resource=request.resource, name=request.name),
            PageRequest.parse(request.page_size, request.page_token, self._limits),
        )
        return pb.ListAuditEventsResponse(
            events=[event_message(e) for e in page.items], next_page_token=page.next_token
        )
