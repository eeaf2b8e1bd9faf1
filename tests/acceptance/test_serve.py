"""The scheduler as operators meet it: the CLI in a subprocess, grpcurl through reflection."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import Served, serve

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


def test_grpcurl_lists_and_describes_through_reflection(served: Served) -> None:
    listed = served.grpcurl("list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "heat.scheduler.v1.AccessService",
        "heat.scheduler.v1.ArtifactService",
        "heat.scheduler.v1.RegistryService",
        "heat.scheduler.v1.RunnerService",
        "heat.scheduler.v1.SessionService",
    }
    described = served.grpcurl("describe", "heat.scheduler.v1.RegistryService")
    assert "rpc CreateRunner ( .heat.scheduler.v1.CreateRunnerRequest )" in described.stdout
    message = served.grpcurl("describe", "heat.scheduler.v1.Runner")
    assert "string memory_limit = 6;" in message.stdout


def snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), name)


def test_grpcurl_creates_and_reads_back_the_heat_runner(served: Served) -> None:
    created = served.call("RegistryService/CreateRunner", {"runner": LEGACY_RUNNER})
    assert created["runner"]["name"] == "legacy-runner"
    got = served.call("RegistryService/GetRunner", {"name": "legacy-runner"})
    # grpcurl prints the proto field names (container_image); it reads either spelling.
    assert {k: got["runner"][snake(k)] for k in LEGACY_RUNNER} == LEGACY_RUNNER
    listed = served.call("RegistryService/ListRunners", {})
    assert [r["name"] for r in listed["runners"]] == ["legacy-runner"]


def test_grpcurl_sees_invalid_argument_naming_the_field(served: Served) -> None:
    bad = {**LEGACY_RUNNER, "memoryLimit": "1GB"}
    result = served.grpcurl("heat.scheduler.v1.RegistryService/CreateRunner", data={"runner": bad})
    assert result.returncode != 0
    assert "Code: InvalidArgument" in result.stderr
    assert "runner.memory_limit" in result.stderr and "'1GB'" in result.stderr


def test_health_and_a_missing_session(served: Served) -> None:
    health = served.grpcurl("grpc.health.v1.Health/Check")
    assert '"status": "SERVING"' in health.stdout
    missing = served.grpcurl("heat.scheduler.v1.SessionService/GetSession", data={"name": "s-x"})
    assert "Code: NotFound" in missing.stderr


def test_grpcurl_needs_a_token_but_for_health_and_reflection(served: Served) -> None:
    health = served.grpcurl("grpc.health.v1.Health/Check", token=None)
    assert '"status": "SERVING"' in health.stdout
    anonymous = served.grpcurl("heat.scheduler.v1.RegistryService/ListRunners", token=None)
    assert "Code: Unauthenticated" in anonymous.stderr
    assert "authorization: Bearer" in anonymous.stderr
    assert "heat.scheduler.v1.AccessService" in served.grpcurl("list", token=None).stdout
    me = served.call("AccessService/GetCaller", {})
    assert me["caller"] == {
        "kind": "CALLER_KIND_TOKEN",
        "subject": "tk-bootstrap",
        "role": "ROLE_ADMIN",
    }


def test_sigterm_stops_cleanly(served: Served) -> None:
    assert served.stop() == 0
    assert any("stopped" in line for line in served.lines), "".join(served.lines)


def test_cli_applies_a_manifest_twice(served: Served, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    document = {
        "runners": [LEGACY_RUNNER],
        "nodeTemplates": [{"name": "legacy-op", "runner": "legacy-runner"}],
    }
    manifest.write_text(json.dumps(document))

    def apply() -> str:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "scheduler.cli",
                "apply",
                str(manifest),
                "--address",
                served.address,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "HEAT_TOKEN": served.token},
        )
        return result.stdout

    first = apply()
    assert "legacy-runner" in first and first.count("was created") == 2
    second = apply()
    assert second.count("was unchanged") == 2


def test_bad_setting_names_itself() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "serve", "--listen", "nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--listen" in result.stderr and "127.0.0.1:50051" in result.stderr
    env_result = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"HEAT_LOG_LEVEL": "loud", "PATH": "/usr/bin:/bin"},
    )
    assert env_result.returncode == 2
    assert "HEAT_LOG_LEVEL" in env_result.stderr and "DEBUG" in env_result.stderr


def test_embedded_default_keeps_its_data_across_restarts(open_tmp_path: Path) -> None:
    """The README's run command: no database URL, so an embedded PostgreSQL in a data folder."""
    data = open_tmp_path / "heat-data"
    first = serve("--data-dir", str(data), "--shutdown-grace", "2")
    try:
        first.call("RegistryService/CreateRunner", {"runner": LEGACY_RUNNER})
    finally:
        assert first.stop() == 0, "".join(first.lines)
    second = serve("--data-dir", str(data), "--shutdown-grace", "2")
    try:
        got = second.call("RegistryService/GetRunner", {"name": "legacy-runner"})
        assert got["runner"]["id"] == 2
    finally:
        assert second.stop() == 0, "".join(second.lines)
    assert (data / "postgres" / "PG_VERSION").exists()


def test_migrate_command_reports_a_current_schema(db_dsn: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "migrate", "--database-url", db_dsn],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "nothing, the schema is current" in result.stdout
