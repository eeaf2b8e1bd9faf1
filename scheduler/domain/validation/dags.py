"""A DAG's shape: keys, templates, edges, and that it has no cycle."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from scheduler.domain.errors import FieldViolation
from scheduler.domain.validation.names import check_dns_label, is_dns_label
from scheduler.domain.validation.wording import joined, shown

_CYCLE_SHOWN: Final = 20


class DagNodeShape(Protocol):
    """What check_dag reads of a node (a DagNodeSpec, or the registry's DagNode)."""

    @property
    def key(self) -> str: ...
    @property
    def node_template(self) -> str: ...
    @property
    def depends_on(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class DagNodeSpec:
    """The shape of one DAG node as check_dag needs it; its configuration is checked elsewhere."""

    key: str
    node_template: str
    depends_on: tuple[str, ...] = ()


def check_dag(
    nodes: Sequence[DagNodeShape],
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
        edges = _plain_node(node, i, first_index, flags)
        if edges is None:  # something is wrong with it: say what
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


def _plain_node(
    node: DagNodeShape,
    index: int,
    first_index: Mapping[str, int],
    flags: Callable[[str], bool | None],
) -> list[int] | None:
    """The upstream indices of a node with nothing wrong (the common case, checked fast);
    None when something is, for the checks that say what."""
    key = node.key
    if first_index[key] != index or not is_dns_label(key):
        return None
    flag = flags(node.node_template) if node.node_template else None
    depends_on = node.depends_on
    if flag is None or (flag is False and len(depends_on) > 1):
        return None
    try:
        edges = [first_index[d] for d in depends_on]
    except KeyError:
        return None
    if len(set(edges)) != len(edges) or index in edges:
        return None
    return edges


def _memoized(lookup: Callable[[str], bool | None]) -> Callable[[str], bool | None]:
    # The callback may be a database-backed lookup; 100,000 nodes often share a few templates.
    cache: dict[str, bool | None] = {}

    def cached(name: str) -> bool | None:
        if name not in cache:
            cache[name] = lookup(name)
        return cache[name]

    return cached


def _check_node_key(
    node: DagNodeShape, index: int, path: str, first_index: Mapping[str, int], field: str
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
    node: DagNodeShape, path: str, flags: Callable[[str], bool | None]
) -> list[FieldViolation]:
    field = f"{path}.node_template"
    if not node.node_template:
        return [FieldViolation(field, "node template is required; name an existing node template")]
    flag = flags(node.node_template)
    if flag is None:
        return [
            FieldViolation(
                field,
                f"node template {shown(node.node_template)} does not exist; name an existing"
                " node template",
            )
        ]
    if flag is False:
        return _check_single_upstream(node, path)
    return []


def _check_single_upstream(node: DagNodeShape, path: str) -> list[FieldViolation]:
    names = list(dict.fromkeys(d for d in node.depends_on if d and d != node.key))
    if len(names) <= 1:
        return []
    return [
        FieldViolation(
            f"{path}.depends_on",
            f"node template {shown(node.node_template)} accepts a single upstream input;"
            f" {shown(node.key)} has {len(names)}: {joined(names)}; keep one dependency or use a"
            " template that accepts multiple inputs",
        )
    ]


def _resolve_upstreams(
    node: DagNodeShape, path: str, first_index: Mapping[str, int]
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
    node: DagNodeShape, key: str, seen: Mapping[str, int], first_index: Mapping[str, int]
) -> str | None:
    if not key:
        return "is empty; name the key of another node in this DAG"
    if key == node.key:
        return f"node {shown(node.key)} depends on itself; name the key of another node in this DAG"
    if key in seen:
        return (
            f"{shown(key)} is already listed at depends_on[{seen[key]}]; list each upstream"
            " node once"
        )
    if key not in first_index:
        return f"no node has the key {shown(key)}; name the key of another node in this DAG"
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
