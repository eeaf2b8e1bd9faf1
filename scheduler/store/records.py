"""Conversion between registry rows and domain entities."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, TypeAlias

import asyncpg

from scheduler.domain.registry import (
    DagNode,
    NodeTemplate,
    RetryPolicy,
    Runner,
    RunnerCredential,
    SessionTemplate,
)

Row: TypeAlias = Mapping[str, Any] | asyncpg.Record


def _ms(value: timedelta) -> int:
    return round(value.total_seconds() * 1000)


def _duration(ms: int) -> timedelta:
    return timedelta(milliseconds=ms)


def runner_row(runner: Runner) -> dict[str, Any]:
    return {
        "id": runner.id,
        "name": runner.name,
        "description": runner.description,
        "container_image": runner.container_image,
        "cpu_limit": runner.cpu_limit,
        "memory_limit": runner.memory_limit,
        "feature_internal_name": runner.feature_internal_name,
        "enabled": runner.enabled,
        "min_pods": runner.min_pods,
        "max_pods": runner.max_pods,
        "tasks_per_pod": runner.tasks_per_pod,
        "idle_period_ms": _ms(runner.idle_period),
        "pod_template": runner.pod_template,
    }


def runner_from(row: Row) -> Runner:
    return Runner(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        container_image=row["container_image"],
        cpu_limit=row["cpu_limit"],
        memory_limit=row["memory_limit"],
        feature_internal_name=row["feature_internal_name"],
        enabled=row["enabled"],
        min_pods=row["min_pods"],
        max_pods=row["max_pods"],
        tasks_per_pod=row["tasks_per_pod"],
        idle_period=_duration(row["idle_period_ms"]),
        pod_template=row["pod_template"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def node_template_row(template: NodeTemplate) -> dict[str, Any]:
    policy = template.retry_policy
    return {
        "name": template.name,
        "runner": template.runner,
        "description": template.description,
        "config_schema": template.config_schema,
        "default_config": template.default_config,
        "multiple_inputs": template.multiple_inputs,
        "max_attempts": policy.max_attempts,
        "initial_backoff_ms": _ms(policy.initial_backoff),
        "max_backoff_ms": _ms(policy.max_backoff),
        "backoff_multiplier": policy.backoff_multiplier,
        "attempt_timeout_ms": _ms(template.attempt_timeout),
    }


def node_template_from(row: Row) -> NodeTemplate:
    return NodeTemplate(
        name=row["name"],
        runner=row["runner"],
        description=row["description"],
        config_schema=row["config_schema"],
        default_config=row["default_config"],
        multiple_inputs=row["multiple_inputs"],
        retry_policy=RetryPolicy(
            max_attempts=row["max_attempts"],
            initial_backoff=_duration(row["initial_backoff_ms"]),
            max_backoff=_duration(row["max_backoff_ms"]),
            backoff_multiplier=row["backoff_multiplier"],
        ),
        attempt_timeout=_duration(row["attempt_timeout_ms"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def session_template_row(template: SessionTemplate) -> dict[str, Any]:
    return {
        "name": template.name,
        "description": template.description,
        "default_parameters": template.default_parameters,
        "default_priority": template.default_priority,
        "nodes": [
            {
                "key": n.key,
                "node_template": n.node_template,
                "config": n.config,
                "depends_on": list(n.depends_on),
            }
            for n in template.nodes
        ],
    }


def session_template_from(row: Row) -> SessionTemplate:
    return SessionTemplate(
        name=row["name"],
        description=row["description"],
        default_parameters=row["default_parameters"],
        nodes=tuple(
            DagNode(
                key=n["key"],
                node_template=n["node_template"],
                config=n["config"],
                depends_on=tuple(n["depends_on"]),
            )
            for n in row["nodes"]
        ),
        create_time=row["create_time"],
        update_time=row["update_time"],
        default_priority=row["default_priority"],
    )


def credential_from(row: Row) -> RunnerCredential:
    return RunnerCredential(
        id=row["id"],
        runner=row["runner"],
        description=row["description"],
        create_time=row["create_time"],
        revoke_time=row["revoke_time"],
    )
