"""Pure parts of the Kubernetes backend: names, labels, manifests, and pod → Observed.

Nothing here talks to the API; ``kubernetes.py`` does, with these.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from kubernetes_asyncio.client import V1ObjectMeta, V1Secret

from scheduler.domain.provisioning import InstanceSpec, Observed, Phase
from scheduler.provisioner._k8s_template import (
    CONTAINER_NAME,
    JsonObj,
    merge,
    restricted_defaults,
    runner_first,
)

MANAGED_BY: Final = "heat-scheduler"
CREDENTIAL_KEY: Final = "credential"

LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_RUNNER: Final = "heat.io/runner"
LABEL_SCHEDULER: Final = "heat.io/scheduler"
ANNOTATION_RUNNER: Final = "heat.io/runner"
ANNOTATION_RUNNER_ID: Final = "heat.io/runner-id"
ANNOTATION_SCHEDULER: Final = "heat.io/scheduler"

# Waiting reasons after which a container will not start without someone changing something.
FATAL_WAITING_REASONS: Final = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "CrashLoopBackOff",
    }
)

_LABEL_VALUE_MAX: Final = 63
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DIGEST_LEN: Final = 8
# The API server appends 5 random characters to a generateName prefix cut to 58.
_GENERATE_NAME_MAX: Final = 58
_SECRET_PREFIX: Final = "heat-runner-"  # noqa: S105 -- a name, not a password
_DNS_SUBDOMAIN_MAX: Final = 253


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:_DIGEST_LEN]


def label_safe(value: str) -> str:
    """``value`` as a Kubernetes label value: unchanged when it already is one, else cleaned,
    cut, and suffixed with a short hash of the original (so distinct inputs stay distinct)."""
    if value == "" or (len(value) <= _LABEL_VALUE_MAX and _LABEL_VALUE.fullmatch(value)):
        return value
    cleaned = re.sub(r"[^-A-Za-z0-9_.]+", "-", value)[: _LABEL_VALUE_MAX - _DIGEST_LEN - 1]
    cleaned = cleaned.strip("-_.")
    return f"{cleaned}-{_digest(value)}" if cleaned else _digest(value)


def dns_label(value: str, max_length: int = 63) -> str:
    """``value`` as a DNS label (RFC 1123: lowercase alphanumerics and '-') of at most
    ``max_length`` characters; hashed like :func:`label_safe` when it had to change."""
    if len(value) <= max_length and _DNS_LABEL.fullmatch(value):
        return value
    cleaned = re.sub(r"[^a-z0-9]+", "-", value.lower())[: max_length - _DIGEST_LEN - 1]
    cleaned = cleaned.strip("-")
    return f"{cleaned}-{_digest(value)}" if cleaned else _digest(value)


def secret_name(scheduler_name: str, runner: str) -> str:
    """The Secret holding a Runner's credential for one scheduler:
    ``heat-runner-<scheduler>-<runner>``, so two schedulers in a namespace never share one."""
    room = _DNS_SUBDOMAIN_MAX - len(_SECRET_PREFIX)
    return _SECRET_PREFIX + dns_label(f"{scheduler_name}-{runner}", room)


def generate_name(runner: str) -> str:
    """The ``metadata.generateName`` of a Runner's pods: ``<runner>-`` within 58 characters."""
    return dns_label(runner, _GENERATE_NAME_MAX - 1) + "-"


def selector(scheduler_name: str) -> str:
    """The label selector of every pod (and Secret) this scheduler manages."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_SCHEDULER}={label_safe(scheduler_name)}"


def owned_labels(runner: str, scheduler_name: str) -> dict[str, str]:
    return {
        LABEL_NAME: "heat-runner",
        LABEL_INSTANCE: label_safe(runner),
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_COMPONENT: "runner",
        LABEL_RUNNER: label_safe(runner),
        LABEL_SCHEDULER: label_safe(scheduler_name),
    }


def pod_manifest(
    spec: InstanceSpec,
    *,
    namespace: str,
    scheduler_name: str,
    termination_grace_seconds: int,
    image_pull_policy: str | None,
    template: Mapping[str, Any] | None = None,
) -> JsonObj:
    """The pod of one instance: the restricted defaults, then ``template`` (the file's), then
    the Runner's own template, then what the scheduler sets (see ``_k8s_template``)."""
    runner = spec.runner
    resources = {
        key: value
        for key, value in (("cpu", runner.cpu_limit), ("memory", runner.memory_limit))
        if value
    }
    env: list[JsonObj] = [
        {"name": "HEAT_SCHEDULER_ADDRESS", "value": spec.scheduler_address},
        {"name": "HEAT_RUNNER", "value": runner.name},
        {"name": "HEAT_CAPACITY", "value": str(runner.tasks_per_pod)},
        {"name": "HEAT_INSTANCE_ID",
         "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": "HEAT_RUNNER_CREDENTIAL",
         "valueFrom": {"secretKeyRef": {"name": secret_name(scheduler_name, runner.name),
                                        "key": CREDENTIAL_KEY}}},
        *({"name": name, "value": value} for name, value in spec.environment),
    ]  # fmt: skip
    ours: JsonObj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": generate_name(runner.name),
            "namespace": namespace,
            "labels": owned_labels(runner.name, scheduler_name),
            "annotations": {
                ANNOTATION_RUNNER: runner.name,
                ANNOTATION_RUNNER_ID: str(runner.id),
                ANNOTATION_SCHEDULER: scheduler_name,
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": CONTAINER_NAME,
                    "image": runner.container_image,
                    "env": env,
                    "resources": {"requests": dict(resources), "limits": dict(resources)},
                }
            ],
        },
    }
    pod = restricted_defaults(termination_grace_seconds, image_pull_policy)
    for layer in (template, runner.pod_template):
        if layer:
            pod = merge(pod, {k: v for k, v in layer.items() if k in ("metadata", "spec")})
    pod.setdefault("metadata", {}).pop("name", None)  # generateName names each pod
    return runner_first(merge(pod, ours))


def secret_manifest(runner: str, secret: str, *, namespace: str, scheduler_name: str) -> V1Secret:
    labels = owned_labels(runner, scheduler_name)
    return V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=V1ObjectMeta(
            name=secret_name(scheduler_name, runner),
            namespace=namespace,
            labels={
                k: labels[k] for k in (LABEL_MANAGED_BY, LABEL_SCHEDULER, LABEL_RUNNER, LABEL_NAME)
            },
            annotations={ANNOTATION_RUNNER: runner, ANNOTATION_SCHEDULER: scheduler_name},
        ),
        string_data={CREDENTIAL_KEY: secret},
    )


# --- reading pods -------------------------------------------------------------------------


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _with_message(reason: str, message: Any) -> str:
    return f"{reason}: {message}" if message else reason


def _container_statuses(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    for key in ("initContainerStatuses", "containerStatuses"):
        value = status.get(key)
        if isinstance(value, list):
            found.extend(_map(item) for item in value)
    return found


def _fatal_waiting(status: Mapping[str, Any]) -> str:
    for container in _container_statuses(status):
        waiting = _map(_map(container.get("state")).get("waiting"))
        reason = waiting.get("reason")
        if reason in FATAL_WAITING_REASONS:
            return _with_message(str(reason), waiting.get("message"))
    return ""


def _failure(status: Mapping[str, Any]) -> str:
    if status.get("reason"):  # the pod as a whole: Evicted, DeadlineExceeded, …
        return _with_message(str(status["reason"]), status.get("message"))
    terminated = []
    for container in _container_statuses(status):
        for state in ("state", "lastState"):
            term = _map(_map(container.get(state)).get("terminated"))
            if term:
                terminated.append(term)
    # The container that failed says why; a sidecar that exited 0 does not.
    terminated.sort(key=lambda t: t.get("exitCode") in (0, None))
    if terminated:
        term = terminated[0]
        return f"{term.get('reason') or 'Error'} (exit code {term.get('exitCode', '?')})"
    return str(status.get("message") or "Failed")


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    conditions = status.get("conditions")
    for condition in conditions if isinstance(conditions, list) else []:
        if _map(condition).get("type") == kind:
            return _map(condition)
    return {}


def _phase(status: Mapping[str, Any]) -> tuple[Phase, bool, str]:
    """(phase, ready, reason) from a pod's status."""
    phase = status.get("phase") or "Pending"
    if phase in ("Pending", "Running"):
        fatal = _fatal_waiting(status)
        if fatal:
            return Phase.FAILED, False, fatal
        if phase == "Running":
            return Phase.RUNNING, _condition(status, "Ready").get("status") == "True", ""
        scheduled = _condition(status, "PodScheduled")
        if scheduled.get("status") == "False" and scheduled.get("reason"):
            return (
                Phase.PENDING,
                False,
                _with_message(str(scheduled["reason"]), scheduled.get("message")),
            )
        return Phase.PENDING, False, ""
    if phase == "Succeeded":
        return Phase.SUCCEEDED, False, ""
    if phase == "Failed":
        return Phase.FAILED, False, _failure(status)
    return Phase.PENDING, False, ""  # Unknown: the node is not reporting; wait and see


def observe_pod(pod: Mapping[str, Any]) -> Observed:
    """A pod as the API returns it (JSON, camelCase) → what the reconciler sees."""
    meta = _map(pod.get("metadata"))
    phase, ready, reason = _phase(_map(pod.get("status")))
    annotations = _map(meta.get("annotations"))
    labels = _map(meta.get("labels"))
    return Observed(
        name=str(meta.get("name", "")),
        runner=str(annotations.get(ANNOTATION_RUNNER) or labels.get(LABEL_RUNNER) or ""),
        uid=str(meta.get("uid", "")),
        phase=phase,
        ready=ready,
        reason=reason,
        created=_parse_time(meta.get("creationTimestamp")),
        deleting=bool(meta.get("deletionTimestamp")),
    )
