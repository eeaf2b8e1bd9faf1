"""Proto messages <-> Session and runner-protocol values."""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import struct_pb2
from heat.scheduler.v1 import runner_service_pb2 as rpb
from heat.scheduler.v1 import session_pb2 as spb
from heat.scheduler.v1 import session_service_pb2 as sspb

from scheduler.domain.runner_protocol import ClaimedTask, Drain, HeartbeatReply
from scheduler.domain.sessions import (
    Node,
    NodeError,
    NodeState,
    Session,
    SessionState,
    StoredEvent,
)
from scheduler.domain.verdicts import Outcome, OutcomeKind, ResultStatus
from scheduler.transport.convert import (
    dict_to_struct,
    optional_struct,
    python_to_value,
    struct_to_dict,
    to_duration,
    to_timestamp,
    value_to_python,
)

NODE_STATES: Final = {
    NodeState.WAITING: spb.NODE_STATE_WAITING,
    NodeState.QUEUED: spb.NODE_STATE_QUEUED,
    NodeState.RUNNING: spb.NODE_STATE_RUNNING,
    NodeState.RETRY_WAIT: spb.NODE_STATE_RETRY_WAIT,
    NodeState.SUCCEEDED: spb.NODE_STATE_SUCCEEDED,
    NodeState.FAILED: spb.NODE_STATE_FAILED,
    NodeState.CANCELLED: spb.NODE_STATE_CANCELLED,
    NodeState.UPSTREAM_FAILED: spb.NODE_STATE_UPSTREAM_FAILED,
}
SESSION_STATES: Final = {
    SessionState.PENDING: spb.SESSION_STATE_PENDING,
    SessionState.RUNNING: spb.SESSION_STATE_RUNNING,
    SessionState.SUCCEEDED: spb.SESSION_STATE_SUCCEEDED,
    SessionState.FAILED: spb.SESSION_STATE_FAILED,
    SessionState.CANCELLED: spb.SESSION_STATE_CANCELLED,
}
SESSION_STATE_OF: Final = {v: k for k, v in SESSION_STATES.items()}
RESULT_STATUSES: Final = {
    ResultStatus.ACCEPTED: rpb.RESULT_STATUS_ACCEPTED,
    ResultStatus.REJECTED_STALE: rpb.RESULT_STATUS_REJECTED_STALE,
    ResultStatus.REJECTED_CANCELLED: rpb.RESULT_STATUS_REJECTED_CANCELLED,
    ResultStatus.REJECTED_INVALID: rpb.RESULT_STATUS_REJECTED_INVALID,
}


def value_message(value: Any) -> struct_pb2.Value:
    return python_to_value(value)


def value_of(message: struct_pb2.Value) -> Any:
    return value_to_python(message)


def error_message(error: NodeError | None) -> spb.NodeError | None:
    if error is None:
        return None
    return spb.NodeError(
        attempt=error.attempt,
        retryable=error.retryable,
        message=error.message,
        details=optional_struct(error.details),
    )


def node_message(node: Node) -> spb.Node:
    return spb.Node(
        key=node.key,
        node_template=node.node_template,
        runner=node.runner,
        config=optional_struct(node.config),
        depends_on=list(node.depends_on),
        state=NODE_STATES[node.state],
        attempt=node.attempt,
        outputs=value_message(node.outputs) if node.outputs is not None else None,
        error=error_message(node.error),
        ready_time=to_timestamp(node.ready_time),
        start_time=to_timestamp(node.start_time),
        end_time=to_timestamp(node.end_time),
        next_attempt_time=to_timestamp(node.next_attempt_time),
        files=node.files,
    )


def session_message(session: Session) -> spb.Session:
    return spb.Session(
        name=session.name,
        session_template=session.session_template,
        parameters=optional_struct(session.parameters),
        state=SESSION_STATES[session.state],
        nodes=[node_message(n) for n in session.nodes],
        node_counts={spb.NodeState.Name(NODE_STATES[k]): v for k, v in session.node_counts.items()},
        labels=session.labels,
        create_time=to_timestamp(session.create_time),
        start_time=to_timestamp(session.start_time),
        end_time=to_timestamp(session.end_time),
        state_reason=session.state_reason,
        trace_id=session.trace_id,
        priority=session.priority,
        fairness_key=session.fairness_key,
    )


def change_message(cursor: str, event: StoredEvent) -> sspb.WatchSessionResponse:
    if event.node_key is None:
        reason = (event.detail or {}).get("reason", "")
        return sspb.WatchSessionResponse(
            cursor=cursor,
            session_change=sspb.SessionChange(
                state=SESSION_STATES[SessionState(event.state)],
                state_reason=str(reason),
                time=to_timestamp(event.time),
            ),
        )
    state = NodeState(event.state)
    detail = event.detail or {}
    at = to_timestamp(event.time)
    node = spb.Node(
        key=event.node_key,
        node_template=event.node_template or "",
        runner=event.runner or "",
        state=NODE_STATES[state],
        attempt=event.attempt,
        error=error_message(NodeError.from_json(detail)) if "message" in detail else None,
        start_time=at if state is NodeState.RUNNING else None,
        ready_time=at if state is NodeState.QUEUED else None,
        end_time=at if state.final else None,
    )
    return sspb.WatchSessionResponse(cursor=cursor, node_change=sspb.NodeChange(node=node))


def task_message(task: ClaimedTask) -> rpb.Task:
    message = rpb.Task(
        attempt_id=task.attempt_id,
        session=task.session,
        node_key=task.node_key,
        node_template=task.node_template,
        attempt=task.attempt,
        config=dict_to_struct(task.config),
        inputs={k: value_message(v) for k, v in (task.inputs or {}).items()},
        parameters=dict_to_struct(task.parameters),
        lease_deadline=to_timestamp(task.lease_deadline),
        attempt_deadline=to_timestamp(task.attempt_deadline),
        trace_context=task.trace.carrier(),
    )
    heartbeat_seconds = task.heartbeat_interval.total_seconds()
    message.heartbeat_interval.FromSeconds(int(heartbeat_seconds))
    message.heartbeat_interval.nanos = int((heartbeat_seconds % 1) * 1e9)
    return message


def drain_message(drain: Drain) -> rpb.DrainRequest:
    return rpb.DrainRequest(reason=drain.reason, deadline=to_timestamp(drain.deadline))


def heartbeat_message(reply: HeartbeatReply) -> rpb.HeartbeatResponse:
    return rpb.HeartbeatResponse(
        leases=[
            rpb.Lease(attempt_id=lease.attempt_id, deadline=to_timestamp(lease.deadline))
            for lease in reply.leases
        ],
        cancellations=[
            rpb.TaskCancellation(attempt_id=c.attempt_id, reason=c.reason)
            for c in reply.cancellations
        ],
        lost_attempt_ids=reply.lost,
        drain=drain_message(reply.drain) if reply.drain else None,
        heartbeat_interval=to_duration(reply.interval),
    )


def outcome(message: rpb.PostResultRequest) -> Outcome:
    kind = message.WhichOneof("outcome")
    if kind == "success":
        outputs = value_of(message.success.outputs) if message.success.HasField("outputs") else None
        size = message.success.outputs.ByteSize()
        return Outcome(message.attempt_id, OutcomeKind.SUCCESS, outputs=outputs, outputs_size=size)
    if kind == "failure":
        failure = message.failure
        return Outcome(
            message.attempt_id,
            OutcomeKind.FAILURE,
            retryable=failure.kind != rpb.FAILURE_KIND_PERMANENT,
            message=failure.message,
            details=struct_to_dict(failure.details),
        )
    return Outcome(message.attempt_id, OutcomeKind.RELEASE, message=message.release.reason)
