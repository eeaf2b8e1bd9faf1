"""Registry entities (Runner, NodeTemplate, SessionTemplate) and their rules."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

from scheduler.domain.dispatch_order import priority_problem
from scheduler.domain.errors import FieldViolation, InvalidArgument
from scheduler.domain.limits import (
    MAX_ATTEMPT_TIMEOUT,
    MAX_BACKOFF,
    MAX_BACKOFF_MULTIPLIER,
    MAX_IDLE_PERIOD,
    MAX_PODS,
    Limits,
)
from scheduler.domain.validation import (
    ConfigChecker,
    DagNodeSpec,
    check_config,
    check_config_size,
    check_cpu,
    check_dag,
    check_dns_label,
    check_image_reference,
    check_json_schema,
    check_memory,
    check_text,
    config_checker,
    merge_config,
)

DEFAULT_MAX_PODS: Final = 10
DEFAULT_TASKS_PER_POD: Final = 1
DEFAULT_IDLE_PERIOD: Final = timedelta(minutes=5)
DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_INITIAL_BACKOFF: Final = timedelta(seconds=1)
DEFAULT_MAX_BACKOFF: Final = timedelta(minutes=5)
DEFAULT_BACKOFF_MULTIPLIER: Final = 2.0
DEFAULT_ATTEMPT_TIMEOUT: Final = timedelta(hours=1)

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Runner:
    name: str
    container_image: str
    cpu_limit: str
    memory_limit: str
    id: int = 0
    description: str = ""
    feature_internal_name: str = ""
    enabled: bool = True
    min_pods: int = 0
    max_pods: int = DEFAULT_MAX_PODS
    tasks_per_pod: int = DEFAULT_TASKS_PER_POD
    idle_period: timedelta = DEFAULT_IDLE_PERIOD
    # A PodTemplateSpec (JSON) merged into this Runner's pods; None: the scheduler's alone.
    pod_template: JsonObject | None = None
    create_time: datetime | None = field(default=None, compare=False)
    update_time: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_backoff: timedelta = DEFAULT_INITIAL_BACKOFF
    max_backoff: timedelta = DEFAULT_MAX_BACKOFF
    backoff_multiplier: float = DEFAULT_BACKOFF_MULTIPLIER


@dataclass(frozen=True, slots=True)
class NodeTemplate:
    name: str
    runner: str
    description: str = ""
    config_schema: JsonObject | None = None
    default_config: JsonObject = field(default_factory=dict)
    multiple_inputs: bool = False
    retry_policy: RetryPolicy = RetryPolicy()
    attempt_timeout: timedelta = DEFAULT_ATTEMPT_TIMEOUT
    create_time: datetime | None = field(default=None, compare=False)
    update_time: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class DagNode:
    key: str
    node_template: str
    config: JsonObject = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()

    def spec(self) -> DagNodeSpec:
        return DagNodeSpec(self.key, self.node_template, self.depends_on)


@dataclass(frozen=True, slots=True)
class SessionTemplate:
    name: str
    nodes: tuple[DagNode, ...]
    description: str = ""
    default_parameters: JsonObject = field(default_factory=dict)
    create_time: datetime | None = field(default=None, compare=False)
    update_time: datetime | None = field(default=None, compare=False)
    default_priority: int = 0  # dispatch_order.UNSET_PRIORITY: the scheduler's default


@dataclass(frozen=True, slots=True)
class RunnerCredential:
    id: str
    runner: str
    description: str = ""
    secret: str = ""
    create_time: datetime | None = None
    revoke_time: datetime | None = None


Entity = TypeVar("Entity", Runner, NodeTemplate, SessionTemplate)

# Fields a caller may name in an update mask; the name (and a Runner's id) never change.
UPDATABLE: Final[Mapping[type, frozenset[str]]] = {
    Runner: frozenset(
        f.name for f in fields(Runner) if f.name not in {"id", "name", "create_time", "update_time"}
    ),
    NodeTemplate: frozenset(
        f.name for f in fields(NodeTemplate) if f.name not in {"name", "create_time", "update_time"}
    )
    | {
        "retry_policy.max_attempts",
        "retry_policy.initial_backoff",
        "retry_policy.max_backoff",
        "retry_policy.backoff_multiplier",
    },
    SessionTemplate: frozenset({"description", "nodes", "default_parameters", "default_priority"}),
}


def apply_mask(current: Entity, new: Entity, paths: Sequence[str], prefix: str) -> Entity:
    """``current`` with the fields named by ``paths`` taken from ``new`` (all when empty)."""
    allowed = UPDATABLE[type(current)]
    bad = [
        FieldViolation(
            f"update_mask.paths[{i}]",
            f"{path!r} is not an updatable field of {prefix}; use one of: "
            + ", ".join(sorted(allowed)),
        )
        for i, path in enumerate(paths)
        if path not in allowed
    ]
    if bad:
        raise InvalidArgument(bad)
    chosen = set(paths) if paths else {p for p in allowed if "." not in p}
    changes: dict[str, Any] = {p: getattr(new, p) for p in chosen if "." not in p}
    nested = {p.split(".", 1)[1] for p in chosen if p.startswith("retry_policy.")}
    if nested and isinstance(current, NodeTemplate) and isinstance(new, NodeTemplate):
        base = changes.get("retry_policy", current.retry_policy)
        changes["retry_policy"] = replace(base, **{f: getattr(new.retry_policy, f) for f in nested})
    return replace(current, **changes)


def check_runner(runner: Runner, prefix: str, limits: Limits) -> list[FieldViolation]:
    p = prefix
    out = [
        *check_dns_label(runner.name, f"{p}.name"),
        *check_image_reference(runner.container_image, f"{p}.container_image"),
        *check_cpu(runner.cpu_limit, f"{p}.cpu_limit"),
        *check_memory(runner.memory_limit, f"{p}.memory_limit"),
        *check_text(runner.description, f"{p}.description", max_len=limits.max_description),
        *check_text(
            runner.feature_internal_name, f"{p}.feature_internal_name", max_len=limits.max_name
        ),
    ]
    if runner.id < 0:
        out.append(FieldViolation(f"{p}.id", "must be 0 (assigned) or a positive id"))
    # The operator's ceiling (max_runner_pods), never above the format's bound (MAX_PODS).
    ceiling = min(limits.max_runner_pods, MAX_PODS)
    if not 0 <= runner.min_pods <= ceiling:
        out.append(
            FieldViolation(
                f"{p}.min_pods", f"must be 0 to {ceiling} (the scheduler's max_runner_pods)"
            )
        )
    if runner.max_pods > ceiling:
        out.append(
            FieldViolation(
                f"{p}.max_pods",
                f"must be at most {ceiling} (the scheduler's max_runner_pods); "
                f"got {runner.max_pods}",
            )
        )
    elif runner.max_pods < max(runner.min_pods, 0) or runner.max_pods < 1:
        out.append(
            FieldViolation(
                f"{p}.max_pods",
                f"must be between 1 and {ceiling} and at least min_pods ({runner.min_pods}); "
                f"got {runner.max_pods}",
            )
        )
    if not 1 <= runner.tasks_per_pod <= limits.max_tasks_per_pod:
        out.append(
            FieldViolation(
                f"{p}.tasks_per_pod", f"must be between 1 and {limits.max_tasks_per_pod}"
            )
        )
    out += _check_duration(
        runner.idle_period, f"{p}.idle_period", positive=False, most=MAX_IDLE_PERIOD
    )
    if runner.pod_template is not None:
        out += check_pod_template_shape(runner.pod_template, f"{p}.pod_template")
    return out


POD_TEMPLATE_MAX_BYTES: Final = 64 * 1024


def check_pod_template_shape(template: JsonObject, path: str) -> list[FieldViolation]:
    """A PodTemplateSpec's outline: an object of ``metadata`` and ``spec`` objects, bounded.
    (The provisioner checks its fields against the Kubernetes API's types, and the API its
    values, when a pod is made.)"""
    out = [
        FieldViolation(f"{path}.{key}", "unknown field; a pod template has metadata and spec")
        for key in template
        if key not in ("metadata", "spec")
    ]
    out += [
        FieldViolation(f"{path}.{key}", "must be an object")
        for key in ("metadata", "spec")
        if key in template and not isinstance(template[key], dict)
    ]
    size = len(json.dumps(template, separators=(",", ":"), default=str))
    if size > POD_TEMPLATE_MAX_BYTES:
        out.append(FieldViolation(path, f"is {size} bytes; at most {POD_TEMPLATE_MAX_BYTES}"))
    return out


def _check_duration(
    value: timedelta, path: str, *, positive: bool, most: timedelta
) -> list[FieldViolation]:
    if value < timedelta(0) or (positive and value == timedelta(0)) or value > most:
        low = "greater than 0s" if positive else "0s or more"
        return [
            FieldViolation(
                path,
                f"must be {low} and at most {most.total_seconds():g}s ({_days(most)});"
                f" got {value.total_seconds():g}s",
            )
        ]
    return []


def _days(value: timedelta) -> str:
    return f"{value.days} days" if value.days != 1 else "1 day"


def check_node_template(
    template: NodeTemplate,
    prefix: str,
    limits: Limits,
    *,
    runner_exists: Callable[[str], bool],
) -> list[FieldViolation]:
    p = prefix
    out = [
        *check_dns_label(template.name, f"{p}.name"),
        *check_text(template.description, f"{p}.description", max_len=limits.max_description),
    ]
    if not template.runner:
        out.append(FieldViolation(f"{p}.runner", "is required: the name of a Runner"))
    elif not runner_exists(template.runner):
        out.append(FieldViolation(f"{p}.runner", f"runner {template.runner!r} does not exist"))
    schema_violations = check_json_schema(template.config_schema, f"{p}.config_schema")
    out += schema_violations
    size_violations = check_config_size(template.default_config, f"{p}.default_config")
    out += size_violations
    if not schema_violations and not size_violations:
        # Defaults may leave required properties to each node; a node's merged configuration
        # is checked in full where the node is defined.
        out += check_config(
            template.default_config, template.config_schema, f"{p}.default_config", partial=True
        )
    policy = template.retry_policy
    rp = f"{p}.retry_policy"
    if not 1 <= policy.max_attempts <= limits.max_attempts:
        out.append(
            FieldViolation(f"{rp}.max_attempts", f"must be between 1 and {limits.max_attempts}")
        )
    out += _check_duration(
        policy.initial_backoff, f"{rp}.initial_backoff", positive=False, most=MAX_BACKOFF
    )
    out += _check_duration(
        policy.max_backoff, f"{rp}.max_backoff", positive=False, most=MAX_BACKOFF
    )
    if policy.max_backoff < policy.initial_backoff:
        out.append(FieldViolation(f"{rp}.max_backoff", "must be at least initial_backoff"))
    # Written so that NaN fails it too.
    if not 1 <= policy.backoff_multiplier <= MAX_BACKOFF_MULTIPLIER:
        out.append(
            FieldViolation(
                f"{rp}.backoff_multiplier",
                f"must be between 1 and {MAX_BACKOFF_MULTIPLIER:g};"
                f" got {policy.backoff_multiplier:g}",
            )
        )
    out += _check_duration(
        template.attempt_timeout, f"{p}.attempt_timeout", positive=True, most=MAX_ATTEMPT_TIMEOUT
    )
    return out


def check_dag_nodes(
    nodes: Sequence[DagNode],
    prefix: str,
    limits: Limits,
    *,
    templates: Callable[[str], NodeTemplate | None],
    out_of_time: Callable[[], bool] = lambda: False,
) -> list[FieldViolation]:
    """The DAG's shape, then each node's configuration against its template's schema, for as
    long as ``out_of_time()`` is false (asked after each node)."""

    def multiple_inputs(name: str) -> bool | None:
        template = templates(name)
        return None if template is None else template.multiple_inputs

    out = check_dag(
        nodes,
        f"{prefix}.nodes",
        multiple_inputs=multiple_inputs,
        max_nodes=limits.max_dag_nodes,
    )
    checkers: dict[str, ConfigChecker] = {}
    for i, node in enumerate(nodes):
        if out_of_time():
            out.append(
                FieldViolation(
                    f"{prefix}.nodes",
                    f"checking the configurations took too long (stopped at node {i} of"
                    f" {len(nodes)}); simplify the templates' schemas or split the DAG",
                )
            )
            break
        sized = check_config_size(node.config, f"{prefix}.nodes[{i}].config")
        out += sized
        template = templates(node.node_template)
        if sized or template is None or not template.config_schema:
            continue
        check = checkers.get(template.name)
        if check is None:
            check = checkers[template.name] = config_checker(template.config_schema)
        out += check(effective_config(template, node), f"{prefix}.nodes[{i}].config")
    return out


def effective_config(template: NodeTemplate, node: DagNode) -> JsonObject:
    """Defaults merged with the node's overrides. Without overrides it is the template's
    own (shared, so never to be changed in place: configurations are read-only from here)."""
    if not node.config:
        return template.default_config
    return merge_config(template.default_config, node.config)


def check_session_template(
    template: SessionTemplate,
    prefix: str,
    limits: Limits,
    *,
    templates: Callable[[str], NodeTemplate | None],
    out_of_time: Callable[[], bool] = lambda: False,
) -> list[FieldViolation]:
    out = [
        *check_dns_label(template.name, f"{prefix}.name"),
        *check_text(template.description, f"{prefix}.description", max_len=limits.max_description),
        *check_dag_nodes(
            template.nodes, prefix, limits, templates=templates, out_of_time=out_of_time
        ),
    ]
    problem = priority_problem(template.default_priority, unset_allowed=True)
    if problem:
        out.append(FieldViolation(f"{prefix}.default_priority", problem))
    return out
