"""RegistryService: requests in, domain calls, responses out. No rules live here."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from heat.scheduler.v1 import registry_service_pb2 as pb
from heat.scheduler.v1 import registry_service_pb2_grpc as pb_grpc
from heat.scheduler.v1 import runner_pb2

from scheduler.domain.limits import Limits
from scheduler.domain.paging import PageRequest
from scheduler.domain.ports import RunnerFilter
from scheduler.domain.registry import Runner
from scheduler.service.registry import Registry
from scheduler.transport import convert
from scheduler.transport.access import caller

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry, limits: Limits) -> None:
        self._registry = registry
        self._limits = limits

    def _page(self, request: Any) -> PageRequest:
        return PageRequest.parse(request.page_size, request.page_token, self._limits)

    # -- Runners ---------------------------------------------------------------------------

    async def CreateRunner(
        self, request: pb.CreateRunnerRequest, context: Context
    ) -> pb.CreateRunnerResponse:
        created = await self._registry.create_runner(convert.runner(request.runner), by=caller())
        return pb.CreateRunnerResponse(runner=convert.runner_message(created))

    async def _with_status(self, runners: list[Runner]) -> list[runner_pb2.Runner]:
        statuses = await self._registry.runner_status([r.name for r in runners])
        return [convert.runner_message(r, statuses.get(r.name)) for r in runners]

    async def GetRunner(
        self, request: pb.GetRunnerRequest, context: Context
    ) -> pb.GetRunnerResponse:
        found = await self._registry.get_runner(request.name)
        (message,) = await self._with_status([found])
        return pb.GetRunnerResponse(runner=message)

    async def ListRunners(
        self, request: pb.ListRunnersRequest, context: Context
    ) -> pb.ListRunnersResponse:
        where = RunnerFilter(
            enabled=request.enabled if request.HasField("enabled") else None,
            feature_internal_name=request.feature_internal_name,
        )
        page = await self._registry.list_runners(self._page(request), where)
        return pb.ListRunnersResponse(
            runners=await self._with_status(page.items),
            next_page_token=page.next_token,
        )

    async def UpdateRunner(
        self, request: pb.UpdateRunnerRequest, context: Context
    ) -> pb.UpdateRunnerResponse:
        updated = await self._registry.update_runner(
            convert.runner(request.runner), list(request.update_mask.paths), by=caller()
        )
        return pb.UpdateRunnerResponse(runner=convert.runner_message(updated))

    async def DeleteRunner(
        self, request: pb.DeleteRunnerRequest, context: Context
    ) -> pb.DeleteRunnerResponse:
        await self._registry.delete_runner(request.name, by=caller())
        return pb.DeleteRunnerResponse()

    # -- Node Templates --------------------------------------------------------------------

    async def CreateNodeTemplate(
        self, request: pb.CreateNodeTemplateRequest, context: Context
    ) -> pb.CreateNodeTemplateResponse:
        created = await self._registry.create_node_template(
            convert.node_template(request.node_template), by=caller()
        )
        return pb.CreateNodeTemplateResponse(node_template=convert.node_template_message(created))

    async def GetNodeTemplate(
        self, request: pb.GetNodeTemplateRequest, context: Context
    ) -> pb.GetNodeTemplateResponse:
        found = await self._registry.get_node_template(request.name)
        return pb.GetNodeTemplateResponse(node_template=convert.node_template_message(found))

    async def ListNodeTemplates(
        self, request: pb.ListNodeTemplatesRequest, context: Context
    ) -> pb.ListNodeTemplatesResponse:
        page = await self._registry.list_node_templates(self._page(request), request.runner)
        return pb.ListNodeTemplatesResponse(
            node_templates=[convert.node_template_message(t) for t in page.items],
            next_page_token=page.next_token,
        )

    async def UpdateNodeTemplate(
        self, request: pb.UpdateNodeTemplateRequest, context: Context
    ) -> pb.UpdateNodeTemplateResponse:
        updated = await self._registry.update_node_template(
            convert.node_template(request.node_template),
            list(request.update_mask.paths),
            by=caller(),
        )
        return pb.UpdateNodeTemplateResponse(node_template=convert.node_template_message(updated))

    async def DeleteNodeTemplate(
        self, request: pb.DeleteNodeTemplateRequest, context: Context
    ) -> pb.DeleteNodeTemplateResponse:
        await self._registry.delete_node_template(request.name, by=caller())
        return pb.DeleteNodeTemplateResponse()

    # -- Session Templates -----------------------------------------------------------------

    async def CreateSessionTemplate(
        self, request: pb.CreateSessionTemplateRequest, context: Context
    ) -> pb.CreateSessionTemplateResponse:
        created = await self._registry.create_session_template(
            convert.session_template(request.session_template), by=caller()
        )
        return pb.CreateSessionTemplateResponse(
            session_template=convert.session_template_message(created)
        )

    async def GetSessionTemplate(
        self, request: pb.GetSessionTemplateRequest, context: Context
    ) -> pb.GetSessionTemplateResponse:
        found = await self._registry.get_session_template(request.name)
        return pb.GetSessionTemplateResponse(
            session_template=convert.session_template_message(found)
        )

    async def ListSessionTemplates(
        self, request: pb.ListSessionTemplatesRequest, context: Context
    ) -> pb.ListSessionTemplatesResponse:
        page = await self._registry.list_session_templates(
            self._page(request), request.node_template
        )
        return pb.ListSessionTemplatesResponse(
            session_templates=[convert.session_template_message(t) for t in page.items],
            next_page_token=page.next_token,
        )

    async def UpdateSessionTemplate(
        self, request: pb.UpdateSessionTemplateRequest, context: Context
    ) -> pb.UpdateSessionTemplateResponse:
        updated = await self._registry.update_session_template(
            convert.session_template(request.session_template),
            list(request.update_mask.paths),
            by=caller(),
        )
        return pb.UpdateSessionTemplateResponse(
            session_template=convert.session_template_message(updated)
        )

    async def DeleteSessionTemplate(
        self, request: pb.DeleteSessionTemplateRequest, context: Context
    ) -> pb.DeleteSessionTemplateResponse:
        await self._registry.delete_session_template(request.name, by=caller())
        return pb.DeleteSessionTemplateResponse()

    # -- Manifest and credentials ----------------------------------------------------------

    async def ApplyManifest(
        self, request: pb.ApplyManifestRequest, context: Context
    ) -> pb.ApplyManifestResponse:
        outcomes = await self._registry.apply_manifest(
            convert.manifest(request.manifest), by=caller(), validate_only=request.validate_only
        )
        return pb.ApplyManifestResponse(results=[convert.apply_result_message(o) for o in outcomes])

    async def IssueRunnerCredential(
        self, request: pb.IssueRunnerCredentialRequest, context: Context
    ) -> pb.IssueRunnerCredentialResponse:
        issued = await self._registry.issue_credential(
            request.runner, request.description, by=caller()
        )
        return pb.IssueRunnerCredentialResponse(credential=convert.credential_message(issued))

    async def ListRunnerCredentials(
        self, request: pb.ListRunnerCredentialsRequest, context: Context
    ) -> pb.ListRunnerCredentialsResponse:
        found = await self._registry.list_credentials(
            request.runner, show_revoked=request.show_revoked
        )
        return pb.ListRunnerCredentialsResponse(
            credentials=[convert.credential_message(c) for c in found]
        )

    async def RevokeRunnerCredential(
        self, request: pb.RevokeRunnerCredentialRequest, context: Context
    ) -> pb.RevokeRunnerCredentialResponse:
        revoked = await self._registry.revoke_credential(request.id, by=caller())
        return pb.RevokeRunnerCredentialResponse(credential=convert.credential_message(revoked))
