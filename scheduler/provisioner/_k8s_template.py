"""Runner pod templates: what a deployment adds to the pods the scheduler makes.

A template is a PodTemplateSpec (``metadata`` and ``spec``, the API's JSON field names) given
as a file (``--k8s-pod-template``, YAML or JSON: image pull secrets, node selector,
tolerations, affinity, priority class, service account, extra env, volumes and mounts,
annotations, termination grace, image pull policy, …) and per Runner (its ``pod_template``).
A pod is built in layers, each merged over the one before:

1. the defaults: the restricted Pod Security Standard (run as non-root, no privilege
   escalation, every capability dropped, seccomp ``RuntimeDefault``, a read-only root
   filesystem with an ``emptyDir`` named ``scratch`` mounted on ``/tmp``), no service-account
   token, the scheduler's termination grace and image pull policy;
2. the file's template;
3. the Runner's template;
4. what the scheduler sets, which always wins: the name, its labels and annotations, the
   ``runner`` container's image, HEAT_* environment and cpu/memory requests and limits,
   ``restartPolicy: Never``.

Merging follows the API's strategic merge for what a template uses: objects merge key by key;
lists of named things (containers, volumes, env, image pull secrets, ports, …) merge item by
item on their name (volume mounts on their mountPath); other lists and plain values are
replaced. So a Runner that needs a writable root filesystem says only
``{"spec": {"containers": [{"name": "runner",
"securityContext": {"readOnlyRootFilesystem": false}}]}}``.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml
from kubernetes_asyncio.client import models

JsonObj = dict[str, Any]

CONTAINER_NAME: Final = "runner"
SCRATCH_VOLUME: Final = "scratch"
SCRATCH_PATH: Final = "/tmp"  # noqa: S108 -- the container's own tmp, an emptyDir

# Lists merged item by item, on this key (as the API's strategic merge patch does).
_MERGE_KEYS: Final[Mapping[str, str]] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "resourceClaims": "name",
}
MAX_TEMPLATE_BYTES: Final = 64 * 1024


class TemplateError(ValueError):
    """A pod template that cannot be used; ``field`` is the path of the field at fault."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


def restricted_defaults(termination_grace_seconds: int, image_pull_policy: str | None) -> JsonObj:
    """The first layer: the restricted Pod Security Standard and a scratch folder."""
    container: JsonObj = {
        "name": CONTAINER_NAME,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH}],
    }
    if image_pull_policy:
        container["imagePullPolicy"] = image_pull_policy
    return {
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": termination_grace_seconds,
            "securityContext": {
                "runAsNonRoot": True,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [{"name": SCRATCH_VOLUME, "emptyDir": {}}],
        }
    }


def merge(base: Any, over: Any, key: str = "") -> Any:
    """``over`` merged onto ``base`` (neither is changed)."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        merged = {k: copy.deepcopy(v) for k, v in base.items()}
        for k, v in over.items():
            merged[k] = merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return merged
    merge_key = _MERGE_KEYS.get(key)
    if merge_key and isinstance(base, list) and isinstance(over, list):
        items = [copy.deepcopy(item) for item in base]
        for item in over:
            name = item.get(merge_key) if isinstance(item, Mapping) else None
            at = next(
                (i for i, old in enumerate(items)
                 if name is not None and isinstance(old, Mapping) and old.get(merge_key) == name),
                None,
            )  # fmt: skip
            if at is None:
                items.append(copy.deepcopy(item))
            else:
                items[at] = merge(items[at], item)
        return items
    return copy.deepcopy(over)


def runner_first(pod: JsonObj) -> JsonObj:
    """The ``runner`` container first (the one ``kubectl logs`` shows, the one HEAT runs)."""
    containers = pod.get("spec", {}).get("containers") or []
    ours = [c for c in containers if c.get("name") == CONTAINER_NAME]
    pod["spec"]["containers"] = ours + [c for c in containers if c.get("name") != CONTAINER_NAME]
    return pod


# --- checking a template against the API's types -------------------------------------------


def load_pod_template(path: Path) -> JsonObj:
    """A template file (YAML or JSON), checked; TemplateError says which field is wrong."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise TemplateError("", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateError("", f"{path} is not YAML or JSON: {exc}") from None
    if loaded is None:
        loaded = {}
    check_pod_template(loaded)
    return dict(loaded)


def check_pod_template(template: Any, prefix: str = "") -> None:
    """TemplateError naming the first field that a PodTemplateSpec cannot have."""
    if not isinstance(template, Mapping):
        raise TemplateError(prefix, "a pod template is an object with metadata and spec")
    if len(json.dumps(template, default=str)) > MAX_TEMPLATE_BYTES:
        raise TemplateError(prefix, f"a pod template is at most {MAX_TEMPLATE_BYTES} bytes")
    _check(template, "V1PodTemplateSpec", prefix)


_SCALARS: Final[Mapping[str, tuple[type, ...]]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check(value: Any, kind: str, where: str) -> None:
    if kind == "object":
        return
    if kind.startswith("list[") and kind.endswith("]"):
        if not isinstance(value, list):
            raise TemplateError(where, f"expected a list, got {_type_name(value)}")
        for i, item in enumerate(value):
            _check(item, kind[5:-1], f"{where}[{i}]")
        return
    if kind.startswith("dict(") and kind.endswith(")"):
        if not isinstance(value, Mapping):
            raise TemplateError(where, f"expected an object, got {_type_name(value)}")
        inner = kind[5:-1].split(", ", 1)[1]
        quantities = where.rsplit(".", 1)[-1] in _QUANTITY_MAPS
        for k, item in value.items():
            # a quantity (cpu: 1) is a number in YAML as often as a string
            if not (quantities and isinstance(item, int | float) and not isinstance(item, bool)):
                _check(item, inner, f"{where}[{k}]")
        return
    if kind in _SCALARS:
        wanted = _SCALARS[kind]
        if not isinstance(value, wanted) or (bool not in wanted and isinstance(value, bool)):
            raise TemplateError(where, f"expected {_KIND_NAMES[kind]}, got {_type_name(value)}")
        return
    model = getattr(models, kind, None)
    if model is None:  # a type this client does not know: the API will say
        return
    if not isinstance(value, Mapping):
        raise TemplateError(where, f"expected an object, got {_type_name(value)}")
    fields = {json_name: model.openapi_types[py] for py, json_name in model.attribute_map.items()}
    for name, item in value.items():
        if name not in fields:
            close = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise TemplateError(_join(where, str(name)), f"unknown field{hint}")
        if item is not None:
            _check(item, fields[name], _join(where, name))


_QUANTITY_MAPS: Final = frozenset({"limits", "requests", "overhead"})
_KIND_NAMES: Final = {
    "str": "a string",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "datetime": "a time",
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, Mapping) else type(value).__name__
