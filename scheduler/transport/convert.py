"""Proto messages <-> domain entities. Unset optional fields take the domain's defaults here."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from heat.scheduler.v1 import (
    node_template_pb2,
    registry_service_pb2,
    runner_pb2,
    session_template_pb2,
)

from scheduler.domain import registry as reg
from scheduler.domain.provisioning import RunnerStatus
from scheduler.service.manifests import ApplyAction, ApplyOutcome, Manifest


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return {key: value_to_python(item) for key, item in message.fields.items()}


def value_to_python(message: struct_pb2.Value) -> Any:
    """A Value as plain Python, whole numbers as ints (JSON numbers arrive as doubles). Walked
    by hand: json_format's generic walk costs several times as much, on every result."""
    kind = message.WhichOneof("kind")
    if kind == "number_value":
        number = message.number_value
        if not math.isfinite(number):  # as json_format refuses it: JSON has no such number
            raise json_format.SerializeToJsonError(
                "Fail to serialize Infinity/NaN for Value.number_value"
            )
        return int(number) if number.is_integer() else number
    if kind == "string_value":
        return message.string_value
    if kind == "bool_value":
        return message.bool_value
    if kind == "struct_value":
        return struct_to_dict(message.struct_value)
    if kind == "list_value":
        return [value_to_python(item) for item in message.list_value.values]
    return None


def python_to_value(value: Any) -> struct_pb2.Value:
    """Plain JSON-able Python as a Value (Struct.update's walk, not json_format's)."""
    holder = struct_pb2.Struct()
    holder.update({"v": value})
    return holder.fields["v"]


def dict_to_struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if value:
        message.update(value)
    return message


def optional_struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    """Empty objects stay unset, so JSON output does not grow ``{}`` the caller never wrote."""
    return dict_to_struct(value) if value else None


def duration(message: duration_pb2.Duration) -> timedelta:
    return message.ToTimedelta()


def to_duration(value: timedelta) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


def to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


# -- Runner -----------------------------------------------------------------------------------


def runner(message: runner_pb2.Runner) -> reg.Runner:
    return reg.Runner(
        id=message.id,
        name=message.name,
        description=message.description,
        container_image=message.container_image,
        cpu_limit=message.cpu_limit,
        memory_limit=message.memory_limit,
        feature_internal_name=message.feature_internal_name,
        enabled=message.enabled if message.HasField("enabled") else True,
        min_pods=message.min_pods,
        max_pods=message.max_pods if message.HasField("max_pods") else reg.DEFAULT_MAX_PODS,
        tasks_per_pod=message.tasks_per_pod or reg.DEFAULT_TASKS_PER_POD,
        idle_period=(
            duration(message.idle_period)
            if message.HasField("idle_period")
            else reg.DEFAULT_IDLE_PERIOD
        ),
        pod_template=(
            struct_to_dict(message.pod_template) if message.HasField("pod_template") else None
        ),
    )


def status_message(value: RunnerStatus) -> runner_pb2.RunnerStatus:
    return runner_pb2.RunnerStatus(
        desired_pods=value.desired,
        observed_pods=value.observed,
        ready_pods=value.ready,
        queued_tasks=value.queued,
        running_tasks=value.running,
        last_provisioning_error=value.last_error,
        last_provisioning_error_time=to_timestamp(value.last_error_time),
    )


def runner_message(value: reg.Runner, status: RunnerStatus | None = None) -> runner_pb2.Runner:
    return runner_pb2.Runner(
        status=status_message(status) if status is not None else None,
        id=value.id,
        name=value.name,
        description=value.description,
        container_image=value.container_image,
        cpu_limit=value.cpu_limit,
        memory_limit=value.memory_limit,
        feature_internal_name=value.feature_internal_name,
        enabled=value.enabled,
        min_pods=value.min_pods,
        max_pods=value.max_pods,
        tasks_per_pod=value.tasks_per_pod,
        idle_period=to_duration(value.idle_period),
        pod_template=dict_to_struct(value.pod_template) if value.pod_template is not None else None,
        create_time=to_timestamp(value.create_time),
        update_time=to_timestamp(value.update_time),
    )


# -- Node Template ----------------------------------------------------------------------------


def retry_policy(message: node_template_pb2.RetryPolicy) -> reg.RetryPolicy:
    return reg.RetryPolicy(
        max_attempts=message.max_attempts or reg.DEFAULT_MAX_ATTEMPTS,
        initial_backoff=(
            duration(message.initial_backoff)
            if message.HasField("initial_backoff")
            else reg.DEFAULT_INITIAL_BACKOFF
        ),
        max_backoff=(
            duration(message.max_backoff)
            if message.HasField("max_backoff")
            else reg.DEFAULT_MAX_BACKOFF
        ),
        backoff_multiplier=message.backoff_multiplier or reg.DEFAULT_BACKOFF_MULTIPLIER,
    )


def node_template(message: node_template_pb2.NodeTemplate) -> reg.NodeTemplate:
    return reg.NodeTemplate(
        name=message.name,
        runner=message.runner,
        description=message.description,
        config_schema=(
            struct_to_dict(message.config_schema) if message.HasField("config_schema") else None
        ),
        default_config=struct_to_dict(message.default_config),
        multiple_inputs=message.multiple_inputs,
        retry_policy=retry_policy(message.retry_policy),
        attempt_timeout=(
            duration(message.attempt_timeout)
            if message.HasField("attempt_timeout")
            else reg.DEFAULT_ATTEMPT_TIMEOUT
        ),
    )


def node_template_message(value: reg.NodeTemplate) -> node_template_pb2.NodeTemplate:
    policy = value.retry_policy
    message = node_template_pb2.NodeTemplate(
        name=value.name,
        runner=value.runner,
        description=value.description,
        default_config=optional_struct(value.default_config),
        multiple_inputs=value.multiple_inputs,
        retry_policy=node_template_pb2.RetryPolicy(
            max_attempts=policy.max_attempts,
            initial_backoff=to_duration(policy.initial_backoff),
            max_backoff=to_duration(policy.max_backoff),
            backoff_multiplier=policy.backoff_multiplier,
        ),
        attempt_timeout=to_duration(value.attempt_timeout),
        create_time=to_timestamp(value.create_time),
        update_time=to_timestamp(value.update_time),
    )
    if value.config_schema is not None:
        message.config_schema.CopyFrom(dict_to_struct(value.config_schema))
    return message


# -- Session Template -------------------------------------------------------------------------


def dag_node(message: session_template_pb2.DagNode) -> reg.DagNode:
    # Positional, and the configuration only when set: CreateSession converts 100,000 of these.
    return reg.DagNode(
        message.key,
        message.node_template,
        struct_to_dict(message.config) if message.HasField("config") else {},
        tuple(message.depends_on),
    )


def dag_node_message(value: reg.DagNode) -> session_template_pb2.DagNode:
    return session_template_pb2.DagNode(
        key=value.key,
        node_template=value.node_template,
        config=optional_struct(value.config),
        depends_on=list(value.depends_on),
    )


def session_template(message: session_template_pb2.SessionTemplate) -> reg.SessionTemplate:
    return reg.SessionTemplate(
        name=message.name,
        description=message.description,
        nodes=tuple(dag_node(n) for n in message.nodes),
        default_parameters=struct_to_dict(message.default_parameters),
        default_priority=message.default_priority,
    )


def session_template_message(value: reg.SessionTemplate) -> session_template_pb2.SessionTemplate:
    return session_template_pb2.SessionTemplate(
        name=value.name,
        description=value.description,
        nodes=[dag_node_message(n) for n in value.nodes],
        default_parameters=optional_struct(value.default_parameters),
        create_time=to_timestamp(value.create_time),
        update_time=to_timestamp(value.update_time),
        default_priority=value.default_priority,
    )


# -- Credentials and manifests ----------------------------------------------------------------


def credential_message(value: reg.RunnerCredential) -> runner_pb2.RunnerCredential:
    return runner_pb2.RunnerCredential(
        id=value.id,
        runner=value.runner,
        secret=value.secret,
        description=value.description,
        create_time=to_timestamp(value.create_time),
        revoke_time=to_timestamp(value.revoke_time),
    )


def manifest(message: registry_service_pb2.Manifest) -> Manifest:
    return Manifest(
        runners=tuple(runner(r) for r in message.runners),
        node_templates=tuple(node_template(t) for t in message.node_templates),
        session_templates=tuple(session_template(s) for s in message.session_templates),
    )


_ACTIONS = {
    ApplyAction.CREATED: registry_service_pb2.APPLY_ACTION_CREATED,
    ApplyAction.UPDATED: registry_service_pb2.APPLY_ACTION_UPDATED,
    ApplyAction.UNCHANGED: registry_service_pb2.APPLY_ACTION_UNCHANGED,
}


def apply_result_message(value: ApplyOutcome) -> registry_service_pb2.ApplyResult:
    return registry_service_pb2.ApplyResult(
        kind=value.kind, name=value.name, action=_ACTIONS[value.action]
    )
