"""Registry use cases: each call validates, then changes the store in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from scheduler.domain import credentials
from scheduler.domain.access import Identity
from scheduler.domain.audit import AuditEvent
from scheduler.domain.errors import (
    AlreadyExists,
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
    check_runner,
)
from scheduler.domain.validation import check_dns_label, check_text
from scheduler.service import manifests
from scheduler.service.manifests import ApplyOutcome, Manifest


def _required_name(name: str, what: str = "name") -> None:
    raise_if(check_dns_label(name, what))


def _updated(by: Identity, kind: str, name: str, paths: Sequence[str]) -> AuditEvent:
    return AuditEvent(by, "update", kind, name, {"fields": ",".join(paths) or "all"})


class Registry:
    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits

    # -- Runners ---------------------------------------------------------------------------

    async def create_runner(self, runner: Runner, *, by: Identity) -> Runner:
        raise_if(check_runner(runner, "runner", self._limits))
        async with self._store.transaction() as work:
            if await work.registry.runners_by_name([runner.name]):
                raise AlreadyExists("runner", runner.name)
            await self._check_ids_free(work.registry, [(0, runner)], "runner")
            (created,) = await work.registry.insert_runners([runner])
            await work.audit.record([AuditEvent(by, "create", "runner", created.name)])
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

    async def update_runner(self, runner: Runner, paths: Sequence[str], *, by: Identity) -> Runner:
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
            await work.audit.record([_updated(by, "runner", stored.name, paths)])
            return stored

    async def delete_runner(self, name: str, *, by: Identity) -> None:
        _required_name(name)
        async with self._store.transaction() as work:
            if not await work.registry.runners_by_name([name], lock=True):
                raise NotFound("runner", name)
            users = await work.registry.node_templates_of_runner(name)
            if users:
                raise InUse("runner", name, "node templates", users)
            await work.registry.delete_runner(name)
            await work.audit.record([AuditEvent(by, "delete", "runner", name)])

    # -- Node Templates --------------------------------------------------------------------

    async def create_node_template(self, template: NodeTemplate, *, by: Identity) -> NodeTemplate:
        async with self._store.transaction() as work:
            plan = await manifests.plan(
                work.registry, Manifest(node_templates=(template,)), "node_template", self._limits
            )
            if not plan.new_node_templates:
                raise AlreadyExists("node template", template.name)
            (created,) = await work.registry.insert_node_templates(plan.new_node_templates)
            await work.audit.record([AuditEvent(by, "create", "node_template", created.name)])
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
        self, template: NodeTemplate, paths: Sequence[str], *, by: Identity
    ) -> NodeTemplate:
        _required_name(template.name, "node_template.name")
        async with self._store.transaction() as work:
            current = (await work.registry.node_templates_by_name([template.name], lock=True)).get(
                template.name
            )
            if current is None:
                raise NotFound("node template", template.name)
            updated = apply_mask(current, template, paths, "NodeTemplate")
            plan = await manifests.plan(
                work.registry, Manifest(node_templates=(updated,)), "node_template", self._limits
            )
            if not plan.changed_node_templates:
                return current
            (stored,) = await work.registry.update_node_templates(plan.changed_node_templates)
            await work.audit.record([_updated(by, "node_template", stored.name, paths)])
            return stored

    async def delete_node_template(self, name: str, *, by: Identity) -> None:
        _required_name(name)
        async with self._store.transaction() as work:
            if not await work.registry.node_templates_by_name([name], lock=True):
                raise NotFound("node template", name)
            users = await work.registry.session_templates_using([name])
            if users:
                raise InUse("node template", name, "session templates", [u.name for u in users])
            await work.registry.delete_node_template(name)
            await work.audit.record([AuditEvent(by, "delete", "node_template", name)])

    # -- Session Templates -----------------------------------------------------------------

    async def create_session_template(
        self, template: SessionTemplate, *, by: Identity
    ) -> SessionTemplate:
        async with self._store.transaction() as work:
            plan = await manifests.plan(
                work.registry,
                Manifest(session_templates=(template,)),
                "session_template",
                self._limits,
            )
            if not plan.new_session_templates:
                raise AlreadyExists("session template", template.name)
            (created,) = await work.registry.insert_session_templates(plan.new_session_templates)
            await work.audit.record([AuditEvent(by, "create", "session_template", created.name)])
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
        self, template: SessionTemplate, paths: Sequence[str], *, by: Identity
    ) -> SessionTemplate:
        _required_name(template.name, "session_template.name")
        async with self._store.transaction() as work:
            current = (
                await work.registry.session_templates_by_name([template.name], lock=True)
            ).get(template.name)
            if current is None:
                raise NotFound("session template", template.name)
            updated = apply_mask(current, template, paths, "SessionTemplate")
            plan = await manifests.plan(
                work.registry,
                Manifest(session_templates=(updated,)),
                "session_template",
                self._limits,
            )
            if not plan.changed_session_templates:
                return current
            (stored,) = await work.registry.update_session_templates(plan.changed_session_templates)
            await work.audit.record([_updated(by, "session_template", stored.name, paths)])
            return stored

    async def delete_session_template(self, name: str, *, by: Identity) -> None:
        _required_name(name)
        async with self._store.transaction() as work:
            if not await work.registry.delete_session_template(name):
                raise NotFound("session template", name)
            await work.audit.record([AuditEvent(by, "delete", "session_template", name)])

    # -- Manifest --------------------------------------------------------------------------

    async def apply_manifest(
        self, manifest: Manifest, *, by: Identity, validate_only: bool = False
    ) -> list[ApplyOutcome]:
        async with self._store.transaction() as work:
            plan = await manifests.plan(work.registry, manifest, "manifest", self._limits)
            if not validate_only:
                await self._write(work.registry, plan)
                await work.audit.record(
                    [
                        AuditEvent(by, action, kind, item.name, {"via": "ApplyManifest"})
                        for action, kind, items in (
                            ("create", "runner", plan.new_runners),
                            ("update", "runner", plan.changed_runners),
                            ("create", "node_template", plan.new_node_templates),
                            ("update", "node_template", plan.changed_node_templates),
                            ("create", "session_template", plan.new_session_templates),
                            ("update", "session_template", plan.changed_session_templates),
                        )
                        for item in items
                    ]
                )
            return plan.outcomes

    async def _write(self, registry: RegistryRepository, plan: manifests.Plan) -> None:
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

    async def _check_ids_free(
        self, registry: RegistryRepository, runners: Sequence[tuple[int, Runner]], prefix: str
    ) -> None:
        violations = await manifests.ids_taken(registry, runners, prefix)
        if violations:
            raise AlreadyExists("runner", runners[0][1].name, violations[0].description)

    # -- Credentials -----------------------------------------------------------------------

    async def issue_credential(
        self, runner: str, description: str, *, by: Identity
    ) -> RunnerCredential:
        _required_name(runner, "runner")
        raise_if(check_text(description, "description", max_len=self._limits.max_description))
        secret = credentials.new_secret()
        credential = RunnerCredential(
            id=credentials.new_credential_id(), runner=runner, description=description
        )
        async with self._store.transaction() as work:
            if not await work.registry.runners_by_name([runner]):
                raise NotFound("runner", runner)
            stored = await work.registry.insert_credential(credential, credentials.digest(secret))
            await work.audit.record(
                [AuditEvent(by, "issue", "runner_credential", stored.id, {"runner": runner})]
            )
        return replace(stored, secret=secret)

    async def list_credentials(self, runner: str, *, show_revoked: bool) -> list[RunnerCredential]:
        _required_name(runner, "runner")
        async with self._store.transaction() as work:
            if not await work.registry.runners_by_name([runner]):
                raise NotFound("runner", runner)
            return await work.registry.list_credentials(runner, show_revoked=show_revoked)

    async def revoke_credential(self, credential_id: str, *, by: Identity) -> RunnerCredential:
        if not credential_id:
            raise InvalidArgument([FieldViolation("id", "is required: a credential id (rc-…)")])
        async with self._store.transaction() as work:
            revoked = await work.registry.revoke_credential(credential_id)
            if revoked is None:
                raise NotFound("runner credential", credential_id)
            await work.audit.record(
                [
                    AuditEvent(
                        by, "revoke", "runner_credential", credential_id, {"runner": revoked.runner}
                    )
                ]
            )
        return revoked
