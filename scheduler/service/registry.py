"""Registry use cases: each call validates, then changes the store in one transaction."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from scheduler.domain import credentials
from scheduler.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InUse,
    InvalidArgument,
    NotFound,
    raise_if,
)
from scheduler.domain.limits import Limits
from scheduler.domain.paging import Page, PageRequest
from scheduler.domain.ports import RegistryRepository, RunnerFilter, Store
from scheduler.domain.provisioning import RunnerStatus
from scheduler.domain.registry import (
    NodeTemplate,
    Runner,
    RunnerCredential,
    SessionTemplate,
    apply_mask,
    check_node_template,
    check_runner,
    check_session_template,
)
from scheduler.domain.validation import check_dns_label


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
class _Plan:
    """What a manifest (or a single update) would write, split by kind and action."""

    outcomes: list[ApplyOutcome] = field(default_factory=list)
    new_runners: list[Runner] = field(default_factory=list)
    changed_runners: list[Runner] = field(default_factory=list)
    new_node_templates: list[NodeTemplate] = field(default_factory=list)
    changed_node_templates: list[NodeTemplate] = field(default_factory=list)
    new_session_templates: list[SessionTemplate] = field(default_factory=list)
    changed_session_templates: list[SessionTemplate] = field(default_factory=list)


def _required_name(name: str, what: str = "name") -> None:
    raise_if(check_dns_label(name, what))


def _classify(kind: str, name: str, old: object | None, new: object) -> ApplyAction:
    if old is None:
        return ApplyAction.CREATED
    return ApplyAction.UNCHANGED if old == new else ApplyAction.UPDATED


class Registry:
    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits

    # -- Runners ---------------------------------------------------------------------------

    async def create_runner(self, runner: Runner) -> Runner:
        raise_if(check_runner(runner, "runner", self._limits))
        async with self._store.transaction() as work:
            if await work.registry.runners_by_name([runner.name]):
                raise AlreadyExists("runner", runner.name)
            await self._check_ids_free(work.registry, [(0, runner)], "runner")
            (created,) = await work.registry.insert_runners([runner])
            return created

    async def get_runner(self, name: str) -> Runner:
        _required_name(name)
        async with self._store.transaction() as work:
            found = await work.registry.runners_by_name([name])
        if name not in found:
            raise NotFound("runner", name)
        return found[name]

    async def runner_status(self, names: Sequence[str]) -> dict[str, RunnerStatus]:
        """What the provisioner wants and sees for these Runners, with their task counts."""
        async with self._store.transaction() as work:
            return await work.provisioning.runner_status(names)

    async def list_runners(self, page: PageRequest, where: RunnerFilter) -> Page[Runner]:
        async with self._store.transaction() as work:
            rows = await work.registry.list_runners(page.after, page.size + 1, where)
        return Page.of(rows, page.size, lambda r: r.name)

    async def update_runner(self, runner: Runner, paths: Sequence[str]) -> Runner:
        _required_name(runner.name, "runner.name")
        async with self._store.transaction() as work:
            current = (await work.registry.runners_by_name([runner.name], lock=True)).get(
                runner.name
            )
            if current is None:
                raise NotFound("runner", runner.name)
            updated = apply_mask(current, runner, paths, "Runner")
            raise_if(check_runner(updated, "runner", self._limits))
            if updated == current:
                return current
            (stored,) = await work.registry.update_runners([updated])
            return stored

    async def delete_runner(self, name: str) -> None:
        _required_name(name)
        async with self._store.transaction() as work:
            if not await work.registry.runners_by_name([name], lock=True):
                raise NotFound("runner", name)
            users = await work.registry.node_templates_of_runner(name)
            if users:
                raise InUse("runner", name, "node templates", users)
            await work.registry.delete_runner(name)

    # -- Node Templates --------------------------------------------------------------------

    async def create_node_template(self, template: NodeTemplate) -> NodeTemplate:
        async with self._store.transaction() as work:
            plan = await self._plan(
                work.registry, Manifest(node_templates=(template,)), "node_template"
            )
            if not plan.new_node_templates:
                raise AlreadyExists("node template", template.name)
            (created,) = await work.registry.insert_node_templates(plan.new_node_templates)
            return created

    async def get_node_template(self, name: str) -> NodeTemplate:
        _required_name(name)
        async with self._store.transaction() as work:
            found = await work.registry.node_templates_by_name([name])
        if name not in found:
            raise NotFound("node template", name)
        return found[name]

    async def list_node_templates(self, page: PageRequest, runner: str) -> Page[NodeTemplate]:
        async with self._store.transaction() as work:
            rows = await work.registry.list_node_templates(page.after, page.size + 1, runner)
        return Page.of(rows, page.size, lambda t: t.name)

    async def update_node_template(
        self, template: NodeTemplate, paths: Sequence[str]
    ) -> NodeTemplate:
        _required_name(template.name, "node_template.name")
        async with self._store.transaction() as work:
            current = (await work.registry.node_templates_by_name([template.name], lock=True)).get(
                template.name
            )
            if current is None:
                raise NotFound("node template", template.name)
            updated = apply_mask(current, template, paths, "NodeTemplate")
            plan = await self._plan(
                work.registry, Manifest(node_templates=(updated,)), "node_template"
            )
            if not plan.changed_node_templates:
                return current
            (stored,) = await work.registry.update_node_templates(plan.changed_node_templates)
            return stored

    async def delete_node_template(self, name: str) -> None:
        _required_name(name)
        async with self._store.transaction() as work:
            if not await work.registry.node_templates_by_name([name], lock=True):
                raise NotFound("node template", name)
            users = await work.registry.session_templates_using([name])
            if users:
                raise InUse("node template", name, "session templates", [u.name for u in users])
            await work.registry.delete_node_template(name)

    # -- Session Templates -----------------------------------------------------------------

    async def create_session_template(self, template: SessionTemplate) -> SessionTemplate:
        async with self._store.transaction() as work:
            plan = await self._plan(
                work.registry, Manifest(session_templates=(template,)), "session_template"
            )
            if not plan.new_session_templates:
                raise AlreadyExists("session template", template.name)
            (created,) = await work.registry.insert_session_templates(plan.new_session_templates)
            return created

    async def get_session_template(self, name: str) -> SessionTemplate:
        _required_name(name)
        async with self._store.transaction() as work:
            found = await work.registry.session_templates_by_name([name])
        if name not in found:
            raise NotFound("session template", name)
        return found[name]

    async def list_session_templates(
        self, page: PageRequest, node_template: str
    ) -> Page[SessionTemplate]:
        async with self._store.transaction() as work:
            rows = await work.registry.list_session_templates(
                page.after, page.size + 1, node_template
            )
        return Page.of(rows, page.size, lambda t: t.name)

    async def update_session_template(
        self, template: SessionTemplate, paths: Sequence[str]
    ) -> SessionTemplate:
        _required_name(template.name, "session_template.name")
        async with self._store.transaction() as work:
            current = (
                await work.registry.session_templates_by_name([template.name], lock=True)
            ).get(template.name)
            if current is None:
                raise NotFound("session template", template.name)
            updated = apply_mask(current, template, paths, "SessionTemplate")
            plan = await self._plan(
                work.registry, Manifest(session_templates=(updated,)), "session_template"
            )
            if not plan.changed_session_templates:
                return current
            (stored,) = await work.registry.update_session_templates(plan.changed_session_templates)
            return stored

    async def delete_session_template(self, name: str) -> None:
        _required_name(name)
        async with self._store.transaction() as work:
            if not await work.registry.delete_session_template(name):
                raise NotFound("session template", name)

    # -- Manifest --------------------------------------------------------------------------

    async def apply_manifest(
        self, manifest: Manifest, *, validate_only: bool = False
    ) -> list[ApplyOutcome]:
        async with self._store.transaction() as work:
            plan = await self._plan(work.registry, manifest, "manifest")
            if not validate_only:
                await self._write(work.registry, plan)
            return plan.outcomes

    async def _write(self, registry: RegistryRepository, plan: _Plan) -> None:
        # Parents before children: node templates name runners, session templates name
        # node templates.
        if plan.new_runners:
            await registry.insert_runners(plan.new_runners)
        if plan.changed_runners:
            await registry.update_runners(plan.changed_runners)
        if plan.new_node_templates:
            await registry.insert_node_templates(plan.new_node_templates)
        if plan.changed_node_templates:
            await registry.update_node_templates(plan.changed_node_templates)
        if plan.new_session_templates:
            await registry.insert_session_templates(plan.new_session_templates)
        if plan.changed_session_templates:
            await registry.update_session_templates(plan.changed_session_templates)

    async def _plan(self, registry: RegistryRepository, manifest: Manifest, prefix: str) -> _Plan:
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
        runner_refs = {r.name for r in manifest.runners} | {
            t.runner for t in manifest.node_templates
        }
        template_refs = {t.name for t in manifest.node_templates} | {
            n.node_template for s in manifest.session_templates for n in s.nodes
        }
        old_runners = await registry.runners_by_name(sorted(runner_refs), lock=True)
        old_templates = await registry.node_templates_by_name(sorted(template_refs), lock=True)
        old_sessions = await registry.session_templates_by_name(
            sorted(t.name for t in manifest.session_templates), lock=True
        )
        plan = _Plan()

        runners: list[tuple[int, Runner]] = []
        for i, runner in enumerate(manifest.runners):
            old = old_runners.get(runner.name)
            p = path("runners", i)
            violations += check_runner(runner, p, self._limits)
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
        violations += await self._ids_taken(
            registry, runners, prefix if single else f"{prefix}.runners"
        )

        runner_names = set(old_runners) | {r.name for r in manifest.runners}
        new_templates = {t.name: t for t in manifest.node_templates}
        for i, template in enumerate(manifest.node_templates):
            violations += check_node_template(
                template,
                path("node_templates", i),
                self._limits,
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
            violations += check_session_template(
                session, path("session_templates", i), self._limits, templates=lookup
            )
            old_s = old_sessions.get(session.name)
            action = _classify("SessionTemplate", session.name, old_s, session)
            plan.outcomes.append(ApplyOutcome("SessionTemplate", session.name, action))
            if action is ApplyAction.CREATED:
                plan.new_session_templates.append(session)
            elif action is ApplyAction.UPDATED:
                plan.changed_session_templates.append(session)

        raise_if(violations)
        await self._check_dependents(registry, plan, manifest, lookup)
        return plan

    async def _check_dependents(
        self,
        registry: RegistryRepository,
        plan: _Plan,
        manifest: Manifest,
        lookup: object,
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
            problems = check_session_template(
                session, "session_template", self._limits, templates=resolve
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

    async def _ids_taken(
        self, registry: RegistryRepository, runners: Sequence[tuple[int, Runner]], prefix: str
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

    async def _check_ids_free(
        self, registry: RegistryRepository, runners: Sequence[tuple[int, Runner]], prefix: str
    ) -> None:
        violations = await self._ids_taken(registry, runners, prefix)
        if violations:
            raise AlreadyExists("runner", runners[0][1].name, violations[0].description)

    # -- Credentials -----------------------------------------------------------------------

    async def issue_credential(self, runner: str, description: str) -> RunnerCredential:
        _required_name(runner, "runner")
        secret = credentials.new_secret()
        credential = RunnerCredential(
            id=credentials.new_credential_id(), runner=runner, description=description
        )
        async with self._store.transaction() as work:
            if not await work.registry.runners_by_name([runner]):
                raise NotFound("runner", runner)
            stored = await work.registry.insert_credential(credential, credentials.digest(secret))
        return replace(stored, secret=secret)

    async def list_credentials(self, runner: str, *, show_revoked: bool) -> list[RunnerCredential]:
        _required_name(runner, "runner")
        async with self._store.transaction() as work:
            if not await work.registry.runners_by_name([runner]):
                raise NotFound("runner", runner)
            return await work.registry.list_credentials(runner, show_revoked=show_revoked)

    async def revoke_credential(self, credential_id: str) -> RunnerCredential:
        if not credential_id:
            raise InvalidArgument([FieldViolation("id", "is required: a credential id (rc-…)")])
        async with self._store.transaction() as work:
            revoked = await work.registry.revoke_credential(credential_id)
        if revoked is None:
            raise NotFound("runner credential", credential_id)
        return revoked
