"""SessionService: create, read, list, cancel and watch Sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any, Final, TypeAlias

import grpc
from heat.scheduler.v1 import session_pb2 as spb
from heat.scheduler.v1 import session_service_pb2 as pb
from heat.scheduler.v1 import session_service_pb2_grpc as pb_grpc

from scheduler.domain.errors import FieldViolation, InvalidArgument
from scheduler.domain.limits import Limits
from scheduler.domain.paging import PageRequest
from scheduler.domain.sessions import Session, SessionFilter
from scheduler.service.sessions import Sessions, Snapshot
from scheduler.transport import convert
from scheduler.transport import convert_sessions as sconvert
from scheduler.transport.access import caller
from scheduler.transport.artifacts import file_input

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
# Room left in a response for everything but the Session's nodes' outputs.
_RESPONSE_MARGIN: Final = 64 * 1024


def fitted(session: spb.Session, max_bytes: int) -> spb.Session:
    """The Session as one response can carry it: when its nodes' outputs together would
    exceed the message limit, the largest are left out (each node's outputs stay readable in
    the task inputs of its downstream nodes, and in GetSession once fewer are shown)."""
    budget = max_bytes - _RESPONSE_MARGIN
    if session.ByteSize() <= budget:
        return session
    by_size = sorted(
        (n for n in session.nodes if n.HasField("outputs")),
        key=lambda n: n.outputs.ByteSize(),
        reverse=True,
    )
    for node in by_size:
        node.ClearField("outputs")
        if session.ByteSize() <= budget:
            break
    return session


class SessionServicer(pb_grpc.SessionServiceServicer):
    def __init__(self, sessions: Sessions, limits: Limits) -> None:
        self._sessions = sessions
        self._limits = limits

    def _shown(self, session: Session) -> spb.Session:
        return fitted(sconvert.session_message(session), self._limits.max_message_bytes)

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> pb.CreateSessionResponse:
        source = request.WhichOneof("source")
        created = await self._sessions.create(
            by=caller(),
            session_template=request.session_template if source == "session_template" else "",
            dag=[convert.dag_node(n) for n in request.dag.nodes] if source == "dag" else None,
            parameters=convert.struct_to_dict(request.parameters),
            labels=dict(request.labels),
            request_id=request.request_id,
            files=[file_input(f) for f in request.files],
            priority=request.priority,
        )
        return pb.CreateSessionResponse(session=self._shown(created))

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Context
    ) -> pb.GetSessionResponse:
        found = await self._sessions.get(request.name)
        return pb.GetSessionResponse(session=self._shown(found))

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        states = []
        for i, state in enumerate(request.states):
            if state not in sconvert.SESSION_STATE_OF:
                raise InvalidArgument(
                    [
                        FieldViolation(
                            f"states[{i}]", "must be a SessionState other than UNSPECIFIED"
                        )
                    ]
                )
            states.append(sconvert.SESSION_STATE_OF[state])
        where = SessionFilter(
            states=tuple(states),
            session_template=request.session_template,
            create_time_after=(
                request.create_time_after.ToDatetime(tzinfo=UTC)
                if request.HasField("create_time_after")
                else None
            ),
            create_time_before=(
                request.create_time_before.ToDatetime(tzinfo=UTC)
                if request.HasField("create_time_before")
                else None
            ),
        )
        page = await self._sessions.list(
            where, PageRequest.parse(request.page_size, request.page_token, self._limits)
        )
        return pb.ListSessionsResponse(
            sessions=[sconvert.session_message(s) for s in page.items],
            next_page_token=page.next_token,
        )

    async def CancelSession(
        self, request: pb.CancelSessionRequest, context: Context
    ) -> pb.CancelSessionResponse:
        cancelled = await self._sessions.cancel(request.name, request.reason, by=caller())
        return pb.CancelSessionResponse(session=self._shown(cancelled))

    async def CancelNode(
        self, request: pb.CancelNodeRequest, context: Context
    ) -> pb.CancelNodeResponse:
        session = await self._sessions.cancel_node(
            request.session, request.key, request.reason, by=caller()
        )
        node = next(n for n in session.nodes if n.key == request.key)
        return pb.CancelNodeResponse(node=sconvert.node_message(node))

    async def UpdateSession(
        self, request: pb.UpdateSessionRequest, context: Context
    ) -> pb.UpdateSessionResponse:
        paths = list(request.update_mask.paths)
        bad = [
            FieldViolation(
                f"update_mask.paths[{i}]",
                f"{path!r} is not an updatable field of Session; use: priority",
            )
            for i, path in enumerate(paths)
            if path != "priority"
        ]
        if bad:
            raise InvalidArgument(bad)
        updated = await self._sessions.set_priority(
            request.session.name, request.session.priority, by=caller()
        )
        return pb.UpdateSessionResponse(session=self._shown(updated))

    async def WatchSession(
        self, request: pb.WatchSessionRequest, context: Context
    ) -> AsyncIterator[pb.WatchSessionResponse]:
        async for item in self._sessions.watch(request.name, request.cursor):
            if isinstance(item, Snapshot):
                yield pb.WatchSessionResponse(
                    cursor=item.cursor, snapshot=self._shown(item.session)
                )
            else:
                yield sconvert.change_message(item.cursor, item.event)
