"""Pure validation rules for registry and session requests.

Every ``check_*`` function returns the list of FieldViolations it found (empty when the value is
valid) instead of raising, so a caller can collect the violations of a whole request and report
them together. ``field`` is the dotted path the caller wants to see in the violation.
"""

from __future__ import annotations

import copy
import decimal
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import (
    Draft3Validator,
    Draft4Validator,
    Draft6Validator,
    Draft7Validator,
    Draft201909Validator,
    Draft202012Validator,
)
from referencing.exceptions import Unresolvable

from scheduler.domain.errors import FieldViolation

__all__ = [
    "DagNodeSpec",
    "check_config",
    "check_cpu",
    "check_dag",
    "check_dns_label",
    "check_image_reference",
    "check_json_schema",
    "check_memory",
    "check_text",
    "merge_config",
    "parse_quantity",
]

# Values are echoed back in descriptions; a megabyte of garbage must not be.
_SHOWN_MAX: Final = 80
_MESSAGE_MAX: Final = 300
_NAMES_SHOWN: Final = 10

# --- Kubernetes quantities -------------------------------------------------------------------

# ASCII digits only: Decimal() would happily accept Arabic-Indic digits, Kubernetes would not.
_QUANTITY: Final = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<decimal>[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?"
)
_BINARY_MULTIPLIER: Final = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_DECIMAL_EXPONENT: Final = {
    "n": -9,
    "u": -6,
    "m": -3,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
# Far beyond anything Kubernetes can represent, yet small enough for exact Decimal arithmetic.
_EXPONENT_MAX: Final = 1000
_QUANTITY_LENGTH_MAX: Final = 64
# Kubernetes caps larger quantities silently; reject them so the stored value is the real one.
_QUANTITY_MAX: Final = decimal.Decimal(2**63 - 1)
_CPU_MIN: Final = decimal.Decimal("0.001")
_CPU_EXAMPLES: Final = "500m, 1, 2.5"
_MEMORY_EXAMPLES: Final = "512Mi, 1Gi, 100M"


def parse_quantity(value: str) -> decimal.Decimal:
    """The exact value of a Kubernetes resource.Quantity; ValueError when it is not one."""
    match = _QUANTITY.fullmatch(value)
    if match is None:
        raise ValueError(f"{_shown(value)} is not a Kubernetes quantity")
    number = match["number"]
    if match["binary"]:
        # Enough precision that the product is exact: 2**60 has 19 digits.
        with decimal.localcontext(prec=len(number) + 25):
            return decimal.Decimal(number) * _BINARY_MULTIPLIER[match["binary"]]
    exponent = _DECIMAL_EXPONENT[match["decimal"]] if match["decimal"] else 0
    if match["exponent"]:
        exponent = int(match["exponent"])
        if abs(exponent) > _EXPONENT_MAX:
            raise ValueError(f"{_shown(value)} has an exponent beyond ±{_EXPONENT_MAX}")
    return decimal.Decimal(f"{number}e{exponent}")


def check_cpu(value: str, field: str) -> list[FieldViolation]:
    """A CPU limit: a positive Kubernetes quantity of at least one millicore."""
    quantity, violations = _positive_quantity(value, field, _CPU_EXAMPLES)
    if quantity is not None and quantity < _CPU_MIN:
        return [
            FieldViolation(
                field, f"{_shown(value)} is less than one millicore; use at least 1m, e.g. 100m"
            )
        ]
    return violations


def check_memory(value: str, field: str) -> list[FieldViolation]:
    """A memory limit: a positive Kubernetes quantity that is a whole number of bytes."""
    quantity, violations = _positive_quantity(value, field, _MEMORY_EXAMPLES)
    if quantity is not None and quantity != quantity.to_integral_value():
        return [
            FieldViolation(
                field,
                f"{_shown(value)} is not a whole number of bytes; use a byte count or a suffix"
                f" such as {_MEMORY_EXAMPLES}",
            )
        ]
    return violations


def _positive_quantity(
    value: str, field: str, examples: str
) -> tuple[decimal.Decimal | None, list[FieldViolation]]:
    """The parsed quantity when it is acceptable, else the one violation explaining why not."""
    if not value:
        return None, [
            FieldViolation(field, f"is required; use a Kubernetes quantity such as {examples}")
        ]
    if len(value) > _QUANTITY_LENGTH_MAX:
        return None, [_too_long(field, len(value), _QUANTITY_LENGTH_MAX, f"use e.g. {examples}")]
    try:
        quantity = parse_quantity(value)
    except ValueError:
        return None, [
            FieldViolation(
                field,
                f"{_shown(value)} is not a Kubernetes quantity; use a number with an optional"
                f" suffix such as {examples}",
            )
        ]
    if quantity <= 0:
        return None, [
            FieldViolation(
                field,
                f"{_shown(value)} is not positive; use a quantity above zero such as {examples}",
            )
        ]
    if quantity > _QUANTITY_MAX:
        return None, [
            FieldViolation(
                field,
                f"{_shown(value)} exceeds the largest Kubernetes quantity (2^63-1); use a smaller"
                f" one such as {examples}",
            )
        ]
    return quantity, []


# --- names -----------------------------------------------------------------------------------

_DNS_LABEL: Final = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_DNS_LABEL_MAX: Final = 63
_DNS_LABEL_FORM: Final = (
    "a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter"
    " or digit, e.g. 'csv-parser'"
)


def check_dns_label(value: str, field: str, *, what: str = "name") -> list[FieldViolation]:
    """A DNS-1123 label, the shape Kubernetes demands of the names it derives from ours."""
    if not value:
        return [FieldViolation(field, f"{what} is required; use {_DNS_LABEL_FORM}")]
    if len(value) > _DNS_LABEL_MAX:
        return [
            _too_long(field, len(value), _DNS_LABEL_MAX, f"the {what} must be {_DNS_LABEL_FORM}")
        ]
    if not _DNS_LABEL.fullmatch(value):
        return [FieldViolation(field, f"{what} {_shown(value)} is not {_DNS_LABEL_FORM}")]
    return []


def check_text(value: str, field: str, *, max_len: int) -> list[FieldViolation]:
    """Free text such as a description: bounded, and storable in a PostgreSQL text column."""
    if len(value) > max_len:
        return [_too_long(field, len(value), max_len, "shorten it")]
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL; reject it here rather than fail at the INSERT.
        return [FieldViolation(field, "contains a NUL character; remove it")]
    return []


# --- container images ------------------------------------------------------------------------

# The docker distribution grammar, rewritten so that no two alternatives can match the same text:
# its separator `[-]*` may be empty, which makes Python's backtracking engine exponential.
_IMAGE_PATH: Final = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_IMAGE_DOMAIN: Final = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_IMAGE_TAG: Final = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_IMAGE_DIGEST: Final = re.compile(
    r"(?P<algorithm>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*):(?P<hex>[0-9a-fA-F]{32,})"
)
# The registered algorithms have a fixed length; a truncated hash would never match a manifest.
_DIGEST_HEX_LENGTH: Final = {"sha256": 64, "sha384": 96, "sha512": 128}
_IMAGE_NAME_MAX: Final = 255
# name + tag + a sha512 digest, with room to spare; bounds the work the regexes can be asked for.
_IMAGE_REFERENCE_MAX: Final = 1024
_IMAGE_FORM: Final = (
    "use [registry[:port]/]repository[:tag][@digest], e.g. 'python:3.11-slim' or"
    " 'registry.example.com/team/app:1.2'"
)


def check_image_reference(value: str, field: str) -> list[FieldViolation]:
    """A container image reference as docker and Kubernetes parse it."""
    if not value:
        return [FieldViolation(field, f"is required; {_IMAGE_FORM}")]
    if len(value) > _IMAGE_REFERENCE_MAX:
        return [_too_long(field, len(value), _IMAGE_REFERENCE_MAX, _IMAGE_FORM)]
    problem = _image_reference_problem(value)
    if problem is None:
        return []
    return [
        FieldViolation(
            field, f"{_shown(value)} is not a container image reference: {problem}; {_IMAGE_FORM}"
        )
    ]


def _image_reference_problem(reference: str) -> str | None:
    name_and_tag, at, digest = reference.partition("@")
    if at:
        problem = _digest_problem(digest)
        if problem:
            return problem
    name, tag = _split_tag(name_and_tag)
    if tag == "":
        return "the tag after ':' is empty"
    if tag is not None and not _IMAGE_TAG.fullmatch(tag):
        return (
            f"the tag {_shown(tag)} must be 1-128 letters, digits, '_', '.' or '-',"
            " not starting with '.' or '-'"
        )
    return _name_problem(name)


def _name_problem(name: str) -> str | None:
    if not name:
        return "the repository name is missing"
    if len(name) > _IMAGE_NAME_MAX:
        return f"the name is {len(name)} characters long, at most {_IMAGE_NAME_MAX} are accepted"
    domain, path = _split_domain(name)
    if domain is not None and not _IMAGE_DOMAIN.fullmatch(domain):
        return f"{_shown(domain)} is not a registry host with an optional :port"
    if _IMAGE_PATH.fullmatch(path):
        return None
    if _IMAGE_PATH.fullmatch(path.lower()):
        return "the repository path must be lowercase"
    return (
        "the repository path must be '/'-separated components of lowercase letters and digits,"
        " joined within a component by '.', '_', '__' or dashes"
    )


def _digest_problem(digest: str) -> str | None:
    match = _IMAGE_DIGEST.fullmatch(digest)
    if match is None:
        return f"the digest {_shown(digest)} must be algorithm:hex with at least 32 hex digits"
    expected = _DIGEST_HEX_LENGTH.get(match["algorithm"])
    if expected is not None and len(match["hex"]) != expected:
        return f"a {match['algorithm']} digest has exactly {expected} hex digits"
    return None


def _split_tag(name_and_tag: str) -> tuple[str, str | None]:
    # A colon before the last '/' belongs to the registry's port, not to a tag.
    colon = name_and_tag.rfind(":")
    if colon > name_and_tag.rfind("/"):
        return name_and_tag[:colon], name_and_tag[colon + 1 :]
    return name_and_tag, None


def _split_domain(name: str) -> tuple[str | None, str]:
    # Docker's rule: the first component is a registry only if it looks like a host, so
    # 'team/app' is a Docker Hub repository and 'UPPER/case' is not a registry named UPPER.
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, name


# --- JSON Schema and configurations -----------------------------------------------------------

_DIALECTS: Final[Mapping[str, type[Validator]]] = {
    str(cls.META_SCHEMA.get("$id") or cls.META_SCHEMA["id"]).rstrip("#"): cls
    for cls in (
        Draft3Validator,
        Draft4Validator,
        Draft6Validator,
        Draft7Validator,
        Draft201909Validator,
        Draft202012Validator,
    )
}
_SCHEMA_FORM: Final = (
    "write a JSON Schema (Draft 2020-12 unless $schema says otherwise), e.g."
    ' {"type": "object", "properties": {"threshold": {"type": "number"}}}'
)


def check_json_schema(schema: Mapping[str, Any] | None, field: str) -> list[FieldViolation]:
    """The schema is itself a valid JSON Schema; None or {} means "any object"."""
    if not schema:
        return []
    dialect = _dialect(schema)
    if dialect is None:
        known = ", ".join(sorted(_DIALECTS))
        return [
            FieldViolation(
                field,
                f"$schema {_bounded(repr(schema['$schema']))} is not a dialect this scheduler"
                f" knows; omit it for Draft 2020-12 or use one of {known}",
            )
        ]
    try:
        dialect.check_schema(dict(schema))
    except SchemaError as error:
        return [
            FieldViolation(
                field,
                f"is not a valid JSON Schema: {_bounded(error.message)} (at {error.json_path});"
                f" {_SCHEMA_FORM}",
            )
        ]
    except RecursionError:
        return [FieldViolation(field, f"is nested too deeply to check; {_SCHEMA_FORM}")]
    return []


ConfigChecker = Callable[[Mapping[str, Any], str], list[FieldViolation]]


def config_checker(schema: Mapping[str, Any] | None, *, partial: bool = False) -> ConfigChecker:
    """``check_config`` for one schema, its validator built once: a DAG of 100,000 nodes of one
    template checks each node's configuration without compiling the schema again."""
    if not schema:
        return lambda config, field: []
    validator = (_dialect(schema) or Draft202012Validator)(schema)

    def check(config: Mapping[str, Any], field: str) -> list[FieldViolation]:
        try:
            errors = sorted(validator.iter_errors(config), key=_error_order)
        except Unresolvable as error:
            # Remote references are never fetched: validation stays pure and offline.
            return [
                FieldViolation(
                    field,
                    f"cannot be checked: the schema's reference {_shown(error.ref)} does not "
                    "resolve; a schema may only refer to its own parts",
                )
            ]
        except RecursionError:
            return [
                FieldViolation(field, "is nested too deeply to check; flatten the configuration")
            ]
        return [
            FieldViolation(_config_path(field, e.absolute_path), _bounded(e.message))
            for e in errors
            if not (partial and e.validator == "required")
        ]

    return check


def check_config(
    config: Mapping[str, Any],
    schema: Mapping[str, Any] | None,
    field: str,
    *,
    partial: bool = False,
) -> list[FieldViolation]:
    """One violation per place where ``config`` breaks ``schema`` (checked by check_json_schema).

    ``partial`` is for defaults that nodes complete: a missing required property is fine there,
    a present property of the wrong kind is not.
    """
    return config_checker(schema, partial=partial)(config, field)


def merge_config(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` laid over ``defaults``: objects merge key by key, anything else is replaced.

    The result shares nothing mutable with either input, so neither can be changed through it.
    """
    merged = {
        key: _merge_value(value, overrides[key]) if key in overrides else copy.deepcopy(value)
        for key, value in defaults.items()
    }
    merged.update((k, copy.deepcopy(v)) for k, v in overrides.items() if k not in defaults)
    return merged


def _merge_value(default: Any, override: Any) -> Any:
    if isinstance(default, Mapping) and isinstance(override, Mapping):
        return merge_config(default, override)
    return copy.deepcopy(override)


def _dialect(schema: Mapping[str, Any]) -> type[Validator] | None:
    """The validator class for the schema's $schema; None when that names no known dialect.

    Unlike jsonschema's validator_for, an unknown $schema is not silently read as the default
    dialect: a typo there would change what the schema means without anyone noticing.
    """
    if "$schema" not in schema:
        return Draft202012Validator
    declared = schema["$schema"]
    if not isinstance(declared, str):
        return None
    return _DIALECTS.get(declared.rstrip("#"))


def _error_order(error: ValidationError) -> tuple[tuple[int, int, str], ...]:
    # Paths mix str keys and int indices, which do not compare with each other directly.
    return tuple((1, p, "") if isinstance(p, int) else (0, 0, str(p)) for p in error.absolute_path)


def _config_path(field: str, path: Iterable[str | int]) -> str:
    # Indices are written as [i], like the request paths of the rest of the API (nodes[3]).
    return field + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


# --- DAGs ------------------------------------------------------------------------------------

_CYCLE_SHOWN: Final = 20


@dataclass(frozen=True, slots=True)
class DagNodeSpec:
    """The shape of one DAG node as check_dag needs it; its configuration is checked elsewhere."""

    key: str
    node_template: str
    depends_on: tuple[str, ...] = ()


def check_dag(
    nodes: Sequence[DagNodeSpec],
    field: str,
    *,
    multiple_inputs: Callable[[str], bool | None],
    max_nodes: int,
) -> list[FieldViolation]:
    """Keys, templates and edges of a DAG, and that it is acyclic; linear in nodes + edges.

    ``multiple_inputs(template)`` is the template's flag, or None when it does not exist; it is
    called once per distinct template name.
    """
    if not nodes:
        return [
            FieldViolation(
                field, "a DAG needs at least one node; add a node with a key and a node template"
            )
        ]
    if len(nodes) > max_nodes:
        return [FieldViolation(field, f"has {len(nodes)} nodes; a DAG has at most {max_nodes}")]
    first_index: dict[str, int] = {}
    for i, node in enumerate(nodes):
        first_index.setdefault(node.key, i)
    flags = _memoized(multiple_inputs)
    violations: list[FieldViolation] = []
    upstreams: list[list[int]] = []
    for i, node in enumerate(nodes):
        path = f"{field}[{i}]"
        violations += _check_node_key(node, i, path, first_index, field)
        violations += _check_node_template(node, path, flags)
        edges, edge_violations = _resolve_upstreams(node, path, first_index)
        violations += edge_violations
        upstreams.append(edges)
    cycle = _find_cycle(upstreams)
    if cycle:
        shown = _cycle_text([nodes[i].key for i in cycle])
        violations.append(
            FieldViolation(
                field, f"the dependencies form a cycle: {shown}; remove one of these dependencies"
            )
        )
    return violations


def _memoized(lookup: Callable[[str], bool | None]) -> Callable[[str], bool | None]:
    # The callback may be a database-backed lookup; 100,000 nodes often share a few templates.
    cache: dict[str, bool | None] = {}

    def cached(name: str) -> bool | None:
        if name not in cache:
            cache[name] = lookup(name)
        return cache[name]

    return cached


def _check_node_key(
    node: DagNodeSpec, index: int, path: str, first_index: Mapping[str, int], field: str
) -> list[FieldViolation]:
    violations = check_dns_label(node.key, f"{path}.key", what="node key")
    if violations:
        return violations
    first = first_index[node.key]
    if first != index:
        return [
            FieldViolation(
                f"{path}.key",
                f"node key {node.key!r} is already used by {field}[{first}]; give every node a"
                " unique key",
            )
        ]
    return []


def _check_node_template(
    node: DagNodeSpec, path: str, flags: Callable[[str], bool | None]
) -> list[FieldViolation]:
    field = f"{path}.node_template"
    if not node.node_template:
        return [FieldViolation(field, "node template is required; name an existing node template")]
    flag = flags(node.node_template)
    if flag is None:
        return [
            FieldViolation(
                field,
                f"node template {_shown(node.node_template)} does not exist; name an existing"
                " node template",
            )
        ]
    if flag is False:
        return _check_single_upstream(node, path)
    return []


def _check_single_upstream(node: DagNodeSpec, path: str) -> list[FieldViolation]:
    names = list(dict.fromkeys(d for d in node.depends_on if d and d != node.key))
    if len(names) <= 1:
        return []
    return [
        FieldViolation(
            f"{path}.depends_on",
            f"node template {_shown(node.node_template)} accepts a single upstream input;"
            f" {_shown(node.key)} has {len(names)}: {_joined(names)}; keep one dependency or use a"
            " template that accepts multiple inputs",
        )
    ]


def _resolve_upstreams(
    node: DagNodeSpec, path: str, first_index: Mapping[str, int]
) -> tuple[list[int], list[FieldViolation]]:
    """The indices of the node's valid upstreams, and a violation per invalid entry."""
    edges: list[int] = []
    violations: list[FieldViolation] = []
    seen: dict[str, int] = {}
    for j, key in enumerate(node.depends_on):
        problem = _dependency_problem(node, key, seen, first_index)
        seen.setdefault(key, j)
        if problem:
            violations.append(FieldViolation(f"{path}.depends_on[{j}]", problem))
        else:
            edges.append(first_index[key])
    return edges, violations


def _dependency_problem(
    node: DagNodeSpec, key: str, seen: Mapping[str, int], first_index: Mapping[str, int]
) -> str | None:
    if not key:
        return "is empty; name the key of another node in this DAG"
    if key == node.key:
        return (
            f"node {_shown(node.key)} depends on itself; name the key of another node in this DAG"
        )
    if key in seen:
        return (
            f"{_shown(key)} is already listed at depends_on[{seen[key]}]; list each upstream"
            " node once"
        )
    if key not in first_index:
        return f"no node has the key {_shown(key)}; name the key of another node in this DAG"
    return None


def _find_cycle(upstreams: Sequence[Sequence[int]]) -> list[int]:
    """One cycle, in depends-on order from its lowest index; [] when the graph is acyclic.

    Kahn's algorithm, iterative on purpose: recursion would overflow on deep DAGs.
    """
    waiting = [len(edges) for edges in upstreams]
    downstreams: list[list[int]] = [[] for _ in upstreams]
    for node, edges in enumerate(upstreams):
        for upstream in edges:
            downstreams[upstream].append(node)
    ready = deque(node for node, count in enumerate(waiting) if count == 0)
    while ready:
        for downstream in downstreams[ready.popleft()]:
            waiting[downstream] -= 1
            if waiting[downstream] == 0:
                ready.append(downstream)
    start = next((node for node, count in enumerate(waiting) if count), None)
    if start is None:
        return []
    return _walk_to_cycle(start, upstreams, waiting)


def _walk_to_cycle(
    start: int, upstreams: Sequence[Sequence[int]], waiting: Sequence[int]
) -> list[int]:
    # Every node Kahn left behind still waits on some upstream that was also left behind, so
    # following those upstreams must eventually revisit a node: that loop is a cycle.
    position: dict[int, int] = {}
    walk: list[int] = []
    node = start
    while node not in position:
        position[node] = len(walk)
        walk.append(node)
        node = next(upstream for upstream in upstreams[node] if waiting[upstream])
    cycle = walk[position[node] :]
    lowest = cycle.index(min(cycle))
    return cycle[lowest:] + cycle[:lowest]


def _cycle_text(keys: Sequence[str]) -> str:
    if len(keys) > _CYCLE_SHOWN:
        hidden = len(keys) - _CYCLE_SHOWN + 1
        keys = [*keys[: _CYCLE_SHOWN - 1], f"… {hidden} more"]
    return " -> ".join([*keys, keys[0]])


# --- shared wording --------------------------------------------------------------------------


def _too_long(field: str, length: int, limit: int, advice: str) -> FieldViolation:
    return FieldViolation(
        field, f"is {length} characters long, more than the {limit} accepted; {advice}"
    )


def _shown(value: str) -> str:
    if len(value) > _SHOWN_MAX:
        return repr(value[: _SHOWN_MAX - 1] + "…")
    return repr(value)


def _bounded(message: str) -> str:
    if len(message) > _MESSAGE_MAX:
        return message[: _MESSAGE_MAX - 1] + "…"
    return message


def _joined(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    if len(names) > _NAMES_SHOWN:
        return f"{shown}, … {len(names) - _NAMES_SHOWN} more"
    return shown
