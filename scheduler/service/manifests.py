"""Manifests: validating a set of registry entries against each other and the store, and
deciding what each one does (created, updated, unchanged). A single create or update is a
manifest of one entry.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from scheduler.domain.errors import FailedPrecondition, FieldViolation, raise_if
from scheduler.domain.limits import Limits
from scheduler.domain.ports import RegistryRepository
from scheduler.domain.registry import (
    NodeTemplate,
    Runner,
    SessionTemplate,
    check_node_template,
    check_runner,
    check_session_template,
)
from scheduler.service.offload import off_loop, within_budget


class ApplyAction(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    kind: str
    name: str
    action: ApplyAction


@dataclass(frozen=True, slots=True)
class Manifest:
    runners: tuple[Runner, ...] = ()
    node_templates: tuple[NodeTemplate, ...] = ()
    session_templates: tuple[SessionTemplate, ...] = ()


@dataclass(slots=True)
class Plan:
    """What a manifest (or a single update) would write, split by kind and action."""

    outcomes: list[ApplyOutcome] = field(default_factory=list)
    new_runners: list[Runner] = field(default_factory=list)
    changed_runners: list[Runner] = field(default_factory=list)
    new_node_templates: list[NodeTemplate] = field(default_factory=list)
    changed_node_templates: list[NodeTemplate] = field(default_factory=list)
    new_session_templates: list[SessionTemplate] = field(default_factory=list)
    changed_session_templates: list[SessionTemplate] = field(default_factory=list)


def _classify(kind: str, name: str, old: object | None, new: object) -> ApplyAction:
    if old is None:
        return ApplyAction.CREATED
    return ApplyAction.UNCHANGED if old == new else ApplyAction.UPDATED


async def plan(
    registry: RegistryRepository, manifest: Manifest, prefix: str, limits: Limits
) -> Plan:
    """Validate a set of entries against each other and the store; decide each one's action.

    ``prefix`` names the request field the entries came from: "manifest" for a manifest
    (paths like ``manifest.runners[2].name``) or the single entry's field name.
    """
    single = prefix != "manifest"
    violations: list[FieldViolation] = []

    def path(collection: str, i: int) -> str:
        return prefix if single else f"{prefix}.{collection}[{i}]"

    for collection, names in (
        ("runners", [r.name for r in manifest.runners]),
        ("node_templates", [t.name for t in manifest.node_templates]),
        ("session_templates", [t.name for t in manifest.session_templates]),
    ):
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in seen:
                violations.append(
                    FieldViolation(
                        f"{path(collection, i)}.name",
                        f"{name!r} appears twice in the manifest (first at index {seen[name]})",
                    )
                )
            seen.setdefault(name, i)

    # Everything the entries name, read (and locked) in one query per kind.
    runner_refs = {r.name for r in manifest.runners} | {t.runner for t in manifest.node_templates}
    template_refs = {t.name for t in manifest.node_templates} | {
        n.node_template for s in manifest.session_templates for n in s.nodes
    }
    old_runners = await registry.runners_by_name(sorted(runner_refs), lock=True)
    old_templates = await registry.node_templates_by_name(sorted(template_refs), lock=True)
    old_sessions = await registry.session_templates_by_name(
        sorted(t.name for t in manifest.session_templates), lock=True
    )
    plan = Plan()

    runners: list[tuple[int, Runner]] = []
    for i, runner in enumerate(manifest.runners):
        old = old_runners.get(runner.name)
        p = path("runners", i)
        violations += check_runner(runner, p, limits)
        if old is not None:
            if runner.id not in (0, old.id):
                violations.append(
                    FieldViolation(
                        f"{p}.id",
                        f"runner {runner.name!r} has id {old.id}; an id cannot change "
                        "(leave it 0 to keep it)",
                    )
                )
            runner = replace(runner, id=old.id)
        else:
            runners.append((i, runner))
        action = _classify("Runner", runner.name, old, runner)
        plan.outcomes.append(ApplyOutcome("Runner", runner.name, action))
        if action is ApplyAction.CREATED:
            plan.new_runners.append(runner)
        elif action is ApplyAction.UPDATED:
            plan.changed_runners.append(runner)
    violations += await ids_taken(registry, runners, prefix if single else f"{prefix}.runners")

    runner_names = set(old_runners) | {r.name for r in manifest.runners}
    new_templates = {t.name: t for t in manifest.node_templates}
    for i, template in enumerate(manifest.node_templates):
        violations += await off_loop(
            check_node_template,
            template,
            path("node_templates", i),
            limits,
            runner_exists=runner_names.__contains__,
        )
        old_t = old_templates.get(template.name)
        action = _classify("NodeTemplate", template.name, old_t, template)
        plan.outcomes.append(ApplyOutcome("NodeTemplate", template.name, action))
        if action is ApplyAction.CREATED:
            plan.new_node_templates.append(template)
        elif action is ApplyAction.UPDATED:
            plan.changed_node_templates.append(template)

    def lookup(name: str) -> NodeTemplate | None:
        return new_templates.get(name) or old_templates.get(name)

    for i, session in enumerate(manifest.session_templates):
        violations += await within_budget(
            check_session_template, session, path("session_templates", i), limits, templates=lookup
        )
        old_s = old_sessions.get(session.name)
        action = _classify("SessionTemplate", session.name, old_s, session)
        plan.outcomes.append(ApplyOutcome("SessionTemplate", session.name, action))
        if action is ApplyAction.CREATED:
            plan.new_session_templates.append(session)
        elif action is ApplyAction.UPDATED:
            plan.changed_session_templates.append(session)

    raise_if(violations)
    await _check_dependents(registry, plan, manifest, limits)
    return plan


async def _check_dependents(
    registry: RegistryRepository,
    plan: Plan,
    manifest: Manifest,
    limits: Limits,
) -> None:
    """A changed Node Template must not invalidate a Session Template left as it is."""
    changed = [t.name for t in plan.changed_node_templates]
    if not changed:
        return
    in_manifest = {s.name for s in manifest.session_templates}
    dependents = [
        s for s in await registry.session_templates_using(changed) if s.name not in in_manifest
    ]
    if not dependents:
        return
    extra = {n.node_template for s in dependents for n in s.nodes} - {
        t.name for t in manifest.node_templates
    }
    stored = await registry.node_templates_by_name(sorted(extra))
    overrides = {t.name: t for t in manifest.node_templates}

    def resolve(name: str) -> NodeTemplate | None:
        return overrides.get(name) or stored.get(name)

    broken = []
    for session in dependents:
        problems = await within_budget(
            check_session_template, session, "session_template", limits, templates=resolve
        )
        if problems:
            broken.append(f"{session.name} ({problems[0].field}: {problems[0].description})")
    if broken:
        raise FailedPrecondition(
            "the change to node templates "
            + ", ".join(sorted(changed))
            + " would invalidate session templates that use them: "
            + "; ".join(broken)
        )


async def ids_taken(
    registry: RegistryRepository, runners: Sequence[tuple[int, Runner]], prefix: str
) -> list[FieldViolation]:
    wanted = {r.id: (i, r) for i, r in runners if r.id}
    if not wanted:
        return []
    taken = await registry.runner_ids_taken(sorted(wanted))
    single = prefix == "runner"
    return [
        FieldViolation(
            f"{prefix}.id" if single else f"{prefix}[{wanted[rid][0]}].id",
            f"id {rid} is already used by runner {owner!r}",
        )
        for rid, owner in taken.items()
    ]
