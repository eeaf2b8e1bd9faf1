"""The registry over real gRPC on a real PostgreSQL: round-trips and every validation rule."""

from __future__ import annotations

import copy
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from heat.scheduler.v1 import registry_service_pb2 as pb

from tests.support import Scheduler, failure

LEGACY_RUNNER = {
    "id": 2,
    "name": "legacy-runner",
    "containerImage": "heatglobal.azurecr.io/heat-runner-legacy:latest",
    "cpuLimit": "1",
    "memoryLimit": "1Gi",
    "description": "Legacy runner for V1 based support. Use only for backward compatibility.",
    "enabled": True,
    "featureInternalName": "heat-core",
}


def runner(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "containerImage": "python:3.11-slim",
        "cpuLimit": "500m",
        "memoryLimit": "256Mi",
        **fields,
    }


def template(name: str, runner: str = "csv", **fields: Any) -> dict[str, Any]:
    return {"name": name, "runner": runner, **fields}


async def call(method: Any, request_type: Any, body: dict[str, Any]) -> Any:
    response = await method(json_format.ParseDict(body, request_type()))
    result: dict[str, Any] = json_format.MessageToDict(response)
    return result


async def refused(method: Any, request_type: Any, body: dict[str, Any]) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(json_format.ParseDict(body, request_type()))
    return failure(caught.value)


async def create_runner(s: Scheduler, body: dict[str, Any]) -> Any:
    return (await call(s.registry.CreateRunner, pb.CreateRunnerRequest, {"runner": body}))["runner"]


async def create_template(s: Scheduler, body: dict[str, Any]) -> Any:
    response = await call(
        s.registry.CreateNodeTemplate, pb.CreateNodeTemplateRequest, {"nodeTemplate": body}
    )
    return response["nodeTemplate"]


# -- Runners -----------------------------------------------------------------------------------


async def test_heat_runner_json_reads_back_field_for_field(scheduler: Scheduler) -> None:
    await create_runner(scheduler, LEGACY_RUNNER)
    got = await call(scheduler.registry.GetRunner, pb.GetRunnerRequest, {"name": "legacy-runner"})
    assert {k: got["runner"][k] for k in LEGACY_RUNNER} == LEGACY_RUNNER
    assert got["runner"]["maxPods"] == 10 and got["runner"]["tasksPerPod"] == 1
    assert got["runner"]["idlePeriod"] == "300s"


async def test_runner_ids_are_drawn_past_ids_given(scheduler: Scheduler) -> None:
    await create_runner(scheduler, runner("given", id=7))
    drawn = await create_runner(scheduler, runner("drawn"))
    assert drawn["id"] == 8


BAD_RUNNERS = [
    ("memory-1GB", {"memoryLimit": "1GB"}, "runner.memory_limit"),
    ("memory-negative", {"memoryLimit": "-1"}, "runner.memory_limit"),
    ("memory-empty", {"memoryLimit": ""}, "runner.memory_limit"),
    ("cpu-abc", {"cpuLimit": "abc"}, "runner.cpu_limit"),
    ("cpu-empty", {"cpuLimit": ""}, "runner.cpu_limit"),
    ("cpu-negative", {"cpuLimit": "-1"}, "runner.cpu_limit"),
    ("image-upper", {"containerImage": "Heat/Runner"}, "runner.container_image"),
    ("image-empty", {"containerImage": ""}, "runner.container_image"),
    ("name-underscore", {"name": "bad_name"}, "runner.name"),
    ("name-too-long", {"name": "a" * 64}, "runner.name"),
    ("max-below-min", {"minPods": 3, "maxPods": 2}, "runner.max_pods"),
    ("tasks-per-pod", {"tasksPerPod": -1}, "runner.tasks_per_pod"),
    ("negative-idle", {"idlePeriod": "-5s"}, "runner.idle_period"),
]


@pytest.mark.parametrize(
    ("fields", "field"), [(f, p) for _, f, p in BAD_RUNNERS], ids=[i for i, _, _ in BAD_RUNNERS]
)
async def test_bad_runner_field_is_refused_naming_the_field(
    scheduler: Scheduler, fields: dict[str, Any], field: str
) -> None:
    body = {**runner("ok-name"), **fields}
    got = await refused(scheduler.registry.CreateRunner, pb.CreateRunnerRequest, {"runner": body})
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert field in got.violations, got.violations
    listed = await call(scheduler.registry.ListRunners, pb.ListRunnersRequest, {})
    assert listed == {}, "a refused create writes nothing"


async def test_every_bad_field_is_reported_at_once(scheduler: Scheduler) -> None:
    body = runner("Bad Name", cpuLimit="abc", memoryLimit="1GB", containerImage="")
    got = await refused(scheduler.registry.CreateRunner, pb.CreateRunnerRequest, {"runner": body})
    assert set(got.violations) == {
        "runner.name",
        "runner.cpu_limit",
        "runner.memory_limit",
        "runner.container_image",
    }
    assert "1Gi" in got.violations["runner.memory_limit"], "says what would be accepted"


@pytest.mark.parametrize("quantity", ["500m", "1", "2.5", "1Gi", "512Mi"])
async def test_kubernetes_quantities_are_accepted(scheduler: Scheduler, quantity: str) -> None:
    created = await create_runner(scheduler, runner("q", cpuLimit=quantity, memoryLimit="1Gi"))
    assert created["cpuLimit"] == quantity
    if quantity != "2.5" and quantity != "500m":
        await call(
            scheduler.registry.UpdateRunner,
            pb.UpdateRunnerRequest,
            {"runner": {"name": "q", "memoryLimit": quantity}, "updateMask": "memoryLimit"},
        )


async def test_duplicates_are_already_exists(scheduler: Scheduler) -> None:
    await create_runner(scheduler, LEGACY_RUNNER)
    by_name = await refused(
        scheduler.registry.CreateRunner,
        pb.CreateRunnerRequest,
        {"runner": {**LEGACY_RUNNER, "id": 0}},
    )
    by_id = await refused(
        scheduler.registry.CreateRunner,
        pb.CreateRunnerRequest,
        {"runner": {**LEGACY_RUNNER, "name": "other"}},
    )
    assert by_name.code is grpc.StatusCode.ALREADY_EXISTS
    assert by_id.code is grpc.StatusCode.ALREADY_EXISTS
    assert "id 2" in by_id.message


async def test_missing_things_are_not_found(scheduler: Scheduler) -> None:
    for method, request in (
        (scheduler.registry.GetRunner, pb.GetRunnerRequest),
        (scheduler.registry.DeleteRunner, pb.DeleteRunnerRequest),
        (scheduler.registry.GetNodeTemplate, pb.GetNodeTemplateRequest),
        (scheduler.registry.DeleteNodeTemplate, pb.DeleteNodeTemplateRequest),
        (scheduler.registry.GetSessionTemplate, pb.GetSessionTemplateRequest),
        (scheduler.registry.DeleteSessionTemplate, pb.DeleteSessionTemplateRequest),
    ):
        got = await refused(method, request, {"name": "nope"})
        assert got.code is grpc.StatusCode.NOT_FOUND, method
        assert "nope" in got.message


async def test_list_pages_and_filters(scheduler: Scheduler) -> None:
    for i in range(5):
        await create_runner(
            scheduler,
            runner(f"r{i}", enabled=i % 2 == 0, featureInternalName="core" if i < 3 else "extra"),
        )
    names: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await call(
            scheduler.registry.ListRunners,
            pb.ListRunnersRequest,
            {"pageSize": 2, "pageToken": token},
        )
        names += [r["name"] for r in page["runners"]]
        pages += 1
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert names == ["r0", "r1", "r2", "r3", "r4"] and pages == 3
    enabled = await call(scheduler.registry.ListRunners, pb.ListRunnersRequest, {"enabled": True})
    assert [r["name"] for r in enabled["runners"]] == ["r0", "r2", "r4"]
    disabled_core = await call(
        scheduler.registry.ListRunners,
        pb.ListRunnersRequest,
        {"enabled": False, "featureInternalName": "core"},
    )
    assert [r["name"] for r in disabled_core["runners"]] == ["r1"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"pageSize": -1}, "page_size"),
        ({"pageSize": 1001}, "page_size"),
        ({"pageToken": "zz"}, "page_token"),
    ],
    ids=["negative-size", "huge-size", "forged-token"],
)
async def test_bad_paging_is_invalid(
    scheduler: Scheduler, body: dict[str, Any], field: str
) -> None:
    got = await refused(scheduler.registry.ListRunners, pb.ListRunnersRequest, body)
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT and field in got.violations


async def test_update_changes_only_masked_fields(scheduler: Scheduler) -> None:
    await create_runner(scheduler, LEGACY_RUNNER)
    updated = await call(
        scheduler.registry.UpdateRunner,
        pb.UpdateRunnerRequest,
        {
            "runner": {"name": "legacy-runner", "enabled": False, "cpuLimit": "4"},
            "updateMask": "enabled",
        },
    )
    assert updated["runner"].get("enabled", False) is False
    assert updated["runner"]["cpuLimit"] == "1"
    assert updated["runner"]["containerImage"] == LEGACY_RUNNER["containerImage"]


@pytest.mark.parametrize(
    ("mask", "field"),
    [
        ("name", "update_mask.paths[0]"),
        ("enabled,id", "update_mask.paths[1]"),
        ("nosuch", "update_mask.paths[0]"),
    ],
)
async def test_update_mask_refuses_unknown_or_fixed_fields(
    scheduler: Scheduler, mask: str, field: str
) -> None:
    await create_runner(scheduler, LEGACY_RUNNER)
    got = await refused(
        scheduler.registry.UpdateRunner,
        pb.UpdateRunnerRequest,
        {"runner": {"name": "legacy-runner"}, "updateMask": mask},
    )
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT and field in got.violations


async def test_update_validates_the_result(scheduler: Scheduler) -> None:
    await create_runner(scheduler, LEGACY_RUNNER)
    got = await refused(
        scheduler.registry.UpdateRunner,
        pb.UpdateRunnerRequest,
        {"runner": {"name": "legacy-runner", "memoryLimit": "1GB"}, "updateMask": "memoryLimit"},
    )
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT and "runner.memory_limit" in got.violations
    still = await call(scheduler.registry.GetRunner, pb.GetRunnerRequest, {"name": "legacy-runner"})
    assert still["runner"]["memoryLimit"] == "1Gi"


GPU_TEMPLATE = {
    "spec": {
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [{"name": "runner", "resources": {"limits": {"nvidia.com/gpu": 1}}}],
    }
}


async def test_a_runner_keeps_its_pod_template(scheduler: Scheduler) -> None:
    made = await create_runner(scheduler, runner("gpu-runner", podTemplate=GPU_TEMPLATE))
    assert made["podTemplate"] == GPU_TEMPLATE
    got = await call(scheduler.registry.GetRunner, pb.GetRunnerRequest, {"name": "gpu-runner"})
    assert got["runner"]["podTemplate"] == GPU_TEMPLATE
    plain = await create_runner(scheduler, runner("plain"))
    assert "podTemplate" not in plain
    # Changed through the update mask; cleared by leaving it out.
    relaxed = {
        "spec": {
            "containers": [{"name": "runner", "securityContext": {"readOnlyRootFilesystem": False}}]
        }
    }
    for template in (relaxed, None):
        body: dict[str, Any] = {"name": "gpu-runner"}
        if template is not None:
            body["podTemplate"] = template
        updated = await call(
            scheduler.registry.UpdateRunner, pb.UpdateRunnerRequest,
            {"runner": body, "updateMask": "podTemplate"},
        )  # fmt: skip
        assert updated["runner"].get("podTemplate") == template


@pytest.mark.parametrize(
    ("template", "field"),
    [
        ({"sepc": {}}, "runner.pod_template.sepc"),
        ({"spec": []}, "runner.pod_template.spec"),
        ({"metadata": {"annotations": {"big": "x" * 70_000}}}, "runner.pod_template"),
    ],
)
async def test_a_bad_pod_template_is_refused(
    scheduler: Scheduler, template: dict[str, Any], field: str
) -> None:
    got = await refused(
        scheduler.registry.CreateRunner, pb.CreateRunnerRequest,
        {"runner": runner("gpu-runner", podTemplate=template)},
    )  # fmt: skip
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT and field in got.violations, got


async def test_runner_in_use_cannot_be_deleted(scheduler: Scheduler) -> None:
    await create_runner(scheduler, runner("csv"))
    await create_template(scheduler, template("csv-sum"))
    await create_template(scheduler, template("csv-parse"))
    got = await refused(scheduler.registry.DeleteRunner, pb.DeleteRunnerRequest, {"name": "csv"})
    assert got.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "csv-parse" in got.message and "csv-sum" in got.message
    assert got.metadata["users"] == "csv-parse,csv-sum"
    for name in ("csv-sum", "csv-parse"):
        await call(
            scheduler.registry.DeleteNodeTemplate, pb.DeleteNodeTemplateRequest, {"name": name}
        )
    await call(scheduler.registry.DeleteRunner, pb.DeleteRunnerRequest, {"name": "csv"})


# -- Node Templates ----------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"column": {"type": "string"}, "threshold": {"type": "integer", "minimum": 0}},
    "required": ["column"],
    "additionalProperties": False,
}


async def test_node_template_round_trip(scheduler: Scheduler) -> None:
    await create_runner(scheduler, runner("csv"))
    body = template(
        "csv-sum",
        description="Sums a column",
        configSchema=SCHEMA,
        defaultConfig={"column": "amount", "threshold": 3},
        multipleInputs=True,
        retryPolicy={
            "maxAttempts": 5,
            "initialBackoff": "2s",
            "maxBackoff": "60s",
            "backoffMultiplier": 3,
        },
        attemptTimeout="600s",
    )
    await create_template(scheduler, body)
    got = await call(
        scheduler.registry.GetNodeTemplate, pb.GetNodeTemplateRequest, {"name": "csv-sum"}
    )
    assert {k: got["nodeTemplate"][k] for k in body} == body


async def test_node_template_defaults(scheduler: Scheduler) -> None:
    await create_runner(scheduler, runner("csv"))
    created = await create_template(scheduler, template("plain"))
    assert created["retryPolicy"] == {
        "maxAttempts": 3,
        "initialBackoff": "1s",
        "maxBackoff": "300s",
        "backoffMultiplier": 2.0,
    }
    assert created["attemptTimeout"] == "3600s"


BAD_TEMPLATES = [
    ("unknown-runner", {"runner": "ghost"}, "node_template.runner"),
    ("no-runner", {"runner": ""}, "node_template.runner"),
    ("bad-name", {"name": "Csv"}, "node_template.name"),
    ("schema-invalid", {"configSchema": {"type": "nonsense"}}, "node_template.config_schema"),
    (
        "default-breaks-schema",
        {"configSchema": SCHEMA, "defaultConfig": {"column": 5}},
        "node_template.default_config.column",
    ),
    ("zero-timeout", {"attemptTimeout": "0s"}, "node_template.attempt_timeout"),
    (
        "too-many-attempts",
        {"retryPolicy": {"maxAttempts": 1000}},
        "node_template.retry_policy.max_attempts",
    ),
    (
        "backoff-inverted",
        {"retryPolicy": {"initialBackoff": "10s", "maxBackoff": "1s"}},
        "node_template.retry_policy.max_backoff",
    ),
    (
        "multiplier-below-one",
        {"retryPolicy": {"backoffMultiplier": 0.5}},
        "node_template.retry_policy.backoff_multiplier",
    ),
]


@pytest.mark.parametrize(
    ("fields", "field"), [(f, p) for _, f, p in BAD_TEMPLATES], ids=[i for i, _, _ in BAD_TEMPLATES]
)
async def test_bad_node_template_is_refused(
    scheduler: Scheduler, fields: dict[str, Any], field: str
) -> None:
    await create_runner(scheduler, runner("csv"))
    got = await refused(
        scheduler.registry.CreateNodeTemplate,
        pb.CreateNodeTemplateRequest,
        {"nodeTemplate": {**template("csv-sum"), **fields}},
    )
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert field in got.violations, got.violations


async def test_node_template_change_cannot_break_session_templates(scheduler: Scheduler) -> None:
    await create_runner(scheduler, runner("csv"))
    await create_template(scheduler, template("merge", multipleInputs=True))
    await create_template(scheduler, template("src"))
    await call(
        scheduler.registry.CreateSessionTemplate,
        pb.CreateSessionTemplateRequest,
        {"sessionTemplate": {"name": "fan-in", "nodes": DIAMOND}},
    )
    got = await refused(
        scheduler.registry.UpdateNodeTemplate,
        pb.UpdateNodeTemplateRequest,
        {
            "nodeTemplate": {"name": "merge", "multipleInputs": False},
            "updateMask": "multipleInputs",
        },
    )
    assert got.code is grpc.StatusCode.FAILED_PRECONDITION and "fan-in" in got.message


# -- Session Templates -------------------------------------------------------------------------

DIAMOND: list[dict[str, Any]] = [
    {"key": "load", "nodeTemplate": "src"},
    {"key": "left", "nodeTemplate": "src", "dependsOn": ["load"]},
    {"key": "right", "nodeTemplate": "src", "dependsOn": ["load"]},
    {"key": "join", "nodeTemplate": "merge", "dependsOn": ["left", "right"]},
]


@pytest.fixture
async def templates(scheduler: Scheduler) -> Scheduler:
    await create_runner(scheduler, runner("csv"))
    await create_template(scheduler, template("src"))
    await create_template(scheduler, template("merge", multipleInputs=True))
    await create_template(
        scheduler, template("sum", configSchema=SCHEMA, defaultConfig={"column": "a"})
    )
    return scheduler


async def test_session_template_round_trip(templates: Scheduler) -> None:
    nodes = copy.deepcopy(DIAMOND)
    nodes[1]["config"] = {"sep": ";"}
    body = {
        "name": "diamond",
        "description": "d",
        "nodes": nodes,
        "defaultParameters": {"day": "mon"},
    }
    await call(
        templates.registry.CreateSessionTemplate,
        pb.CreateSessionTemplateRequest,
        {"sessionTemplate": body},
    )
    got = await call(
        templates.registry.GetSessionTemplate, pb.GetSessionTemplateRequest, {"name": "diamond"}
    )
    assert {k: got["sessionTemplate"][k] for k in body} == body
    users = await call(
        templates.registry.ListSessionTemplates,
        pb.ListSessionTemplatesRequest,
        {"nodeTemplate": "merge"},
    )
    assert [t["name"] for t in users["sessionTemplates"]] == ["diamond"]
    blocked = await refused(
        templates.registry.DeleteNodeTemplate, pb.DeleteNodeTemplateRequest, {"name": "merge"}
    )
    assert blocked.code is grpc.StatusCode.FAILED_PRECONDITION and "diamond" in blocked.message


def _nodes(*specs: tuple[str, str, list[str]], **config: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "key": k,
            "nodeTemplate": t,
            "dependsOn": d,
            **({"config": config[k]} if k in config else {}),
        }
        for k, t, d in specs
    ]


BAD_DAGS = [
    ("empty", [], "session_template.nodes"),
    (
        "cycle",
        _nodes(("a", "src", ["c"]), ("b", "src", ["a"]), ("c", "merge", ["b"])),
        "session_template.nodes",
    ),
    ("self-loop", _nodes(("a", "src", ["a"])), "session_template.nodes[0].depends_on[0]"),
    (
        "unknown-key",
        _nodes(("a", "src", []), ("b", "src", ["zz"])),
        "session_template.nodes[1].depends_on[0]",
    ),
    ("duplicate-key", _nodes(("a", "src", []), ("a", "src", [])), "session_template.nodes[1].key"),
    ("unknown-template", _nodes(("a", "nosuch", [])), "session_template.nodes[0].node_template"),
    (
        "second-upstream",
        _nodes(("a", "src", []), ("b", "src", []), ("c", "src", ["a", "b"])),
        "session_template.nodes[2].depends_on",
    ),
    (
        "override-breaks-schema",
        _nodes(("a", "sum", []), a={"threshold": -1}),
        "session_template.nodes[0].config.threshold",
    ),
    ("bad-key", _nodes(("Not_A_Label", "src", [])), "session_template.nodes[0].key"),
]


@pytest.mark.parametrize(
    ("nodes", "field"), [(n, f) for _, n, f in BAD_DAGS], ids=[i for i, _, _ in BAD_DAGS]
)
async def test_bad_session_template_is_refused(
    templates: Scheduler, nodes: list[dict[str, Any]], field: str
) -> None:
    got = await refused(
        templates.registry.CreateSessionTemplate,
        pb.CreateSessionTemplateRequest,
        {"sessionTemplate": {"name": "bad", "nodes": nodes}},
    )
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert any(v.startswith(field) for v in got.violations), got.violations


async def test_cycle_message_names_the_cycle(templates: Scheduler) -> None:
    nodes = _nodes(("a", "src", ["c"]), ("b", "src", ["a"]), ("c", "src", ["b"]))
    got = await refused(
        templates.registry.CreateSessionTemplate,
        pb.CreateSessionTemplateRequest,
        {"sessionTemplate": {"name": "loop", "nodes": nodes}},
    )
    assert "cycle" in got.violations["session_template.nodes"]


# -- Manifest ----------------------------------------------------------------------------------

MANIFEST = {
    "runners": [LEGACY_RUNNER, runner("csv", featureInternalName="heat-core")],
    "nodeTemplates": [
        template("src"),
        template("merge", multipleInputs=True),
        template(
            "legacy-op", runner="legacy-runner", configSchema=SCHEMA, defaultConfig={"column": "x"}
        ),
    ],
    "sessionTemplates": [{"name": "diamond", "nodes": DIAMOND}],
}


def actions(response: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (r["kind"], r["name"], r["action"].removeprefix("APPLY_ACTION_"))
        for r in response["results"]
    ]


async def test_manifest_apply_is_idempotent(scheduler: Scheduler) -> None:
    first = await call(
        scheduler.registry.ApplyManifest, pb.ApplyManifestRequest, {"manifest": MANIFEST}
    )
    assert {a for _, _, a in actions(first)} == {"CREATED"} and len(first["results"]) == 6
    second = await call(
        scheduler.registry.ApplyManifest, pb.ApplyManifestRequest, {"manifest": MANIFEST}
    )
    assert {a for _, _, a in actions(second)} == {"UNCHANGED"}
    got = await call(scheduler.registry.GetRunner, pb.GetRunnerRequest, {"name": "legacy-runner"})
    assert got["runner"]["updateTime"] == got["runner"]["createTime"], "unchanged means untouched"

    changed = copy.deepcopy(MANIFEST)
    changed["runners"][1]["memoryLimit"] = "1Gi"
    changed["runners"][0].pop("id")  # an entry without its id keeps the stored one
    third = await call(
        scheduler.registry.ApplyManifest, pb.ApplyManifestRequest, {"manifest": changed}
    )
    assert ("Runner", "csv", "UPDATED") in actions(third)
    assert ("Runner", "legacy-runner", "UNCHANGED") in actions(third)


async def test_manifest_is_atomic(scheduler: Scheduler) -> None:
    broken = copy.deepcopy(MANIFEST)
    broken["sessionTemplates"][0]["nodes"][3]["nodeTemplate"] = "src"  # second upstream
    got = await refused(
        scheduler.registry.ApplyManifest, pb.ApplyManifestRequest, {"manifest": broken}
    )
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "manifest.session_templates[0].nodes[3].depends_on" in got.violations
    listed = await call(scheduler.registry.ListRunners, pb.ListRunnersRequest, {})
    assert listed == {}, "nothing of a refused manifest is written"


async def test_manifest_validate_only_writes_nothing(scheduler: Scheduler) -> None:
    report = await call(
        scheduler.registry.ApplyManifest,
        pb.ApplyManifestRequest,
        {"manifest": MANIFEST, "validateOnly": True},
    )
    assert {a for _, _, a in actions(report)} == {"CREATED"}
    assert await call(scheduler.registry.ListRunners, pb.ListRunnersRequest, {}) == {}


async def test_manifest_duplicates_and_id_changes_are_refused(scheduler: Scheduler) -> None:
    await call(scheduler.registry.ApplyManifest, pb.ApplyManifestRequest, {"manifest": MANIFEST})
    twice = {"runners": [runner("x"), runner("x")]}
    got = await refused(
        scheduler.registry.ApplyManifest, pb.ApplyManifestRequest, {"manifest": twice}
    )
    assert "manifest.runners[1].name" in got.violations
    moved = {"runners": [{**LEGACY_RUNNER, "id": 99}]}
    got = await refused(
        scheduler.registry.ApplyManifest, pb.ApplyManifestRequest, {"manifest": moved}
    )
    assert "manifest.runners[0].id" in got.violations


# -- Credentials -------------------------------------------------------------------------------


async def test_credentials_issue_list_revoke(scheduler: Scheduler) -> None:
    await create_runner(scheduler, runner("csv"))
    issued = await call(
        scheduler.registry.IssueRunnerCredential,
        pb.IssueRunnerCredentialRequest,
        {"runner": "csv", "description": "prod"},
    )
    credential = issued["credential"]
    assert credential["secret"].startswith("heatrc_") and credential["id"].startswith("rc-")
    listed = await call(
        scheduler.registry.ListRunnerCredentials, pb.ListRunnerCredentialsRequest, {"runner": "csv"}
    )
    assert [c["id"] for c in listed["credentials"]] == [credential["id"]]
    assert "secret" not in listed["credentials"][0], "secrets are shown once"
    await call(
        scheduler.registry.RevokeRunnerCredential,
        pb.RevokeRunnerCredentialRequest,
        {"id": credential["id"]},
    )
    after = await call(
        scheduler.registry.ListRunnerCredentials, pb.ListRunnerCredentialsRequest, {"runner": "csv"}
    )
    assert after == {}
    missing = await refused(
        scheduler.registry.IssueRunnerCredential,
        pb.IssueRunnerCredentialRequest,
        {"runner": "ghost"},
    )
    assert missing.code is grpc.StatusCode.NOT_FOUND


async def test_defaults_may_leave_required_properties_to_nodes(scheduler: Scheduler) -> None:
    await create_runner(scheduler, runner("csv"))
    created = await create_template(
        scheduler, template("sum", configSchema=SCHEMA, defaultConfig={"threshold": 1})
    )
    assert created["defaultConfig"] == {"threshold": 1}
    missing = await refused(
        scheduler.registry.CreateSessionTemplate,
        pb.CreateSessionTemplateRequest,
        {"sessionTemplate": {"name": "s", "nodes": [{"key": "a", "nodeTemplate": "sum"}]}},
    )
    assert "session_template.nodes[0].config" in missing.violations
    assert (
        "'column' is a required property" in missing.violations["session_template.nodes[0].config"]
    )
