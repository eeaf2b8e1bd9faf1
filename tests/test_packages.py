"""What other services install: heat-scheduler-api, heat-runtime, the Go module, the npm package.

The generated contract is its own small distribution that the runner library and the server both
depend on; neither pulls in the other's dependencies. ``heat`` is a namespace package. The Go
module and the npm package are what buf.gen.yaml, go.mod and package.json say they are.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "gen"

ALLOWED = {
    "heat-scheduler-api": {"grpcio", "protobuf"},
    "heat-runtime": {
        "heat-scheduler-api",
        "grpcio",
        "protobuf",
        "googleapis-common-protos",
        "grpcio-status",
    },
}


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def requirements(distribution: str, *, extras: bool = False) -> set[str]:
    names = set()
    for requirement in importlib.metadata.requires(distribution) or []:
        if "extra ==" in requirement and not extras:
            continue
        names.add(re.split(r"[\s;\[<>=!~]", requirement, maxsplit=1)[0])
    return names


@pytest.mark.parametrize("distribution", sorted(ALLOWED))
def test_client_distributions_need_only_grpc_and_protobuf(distribution: str) -> None:
    assert requirements(distribution) <= ALLOWED[distribution]


def test_server_gets_its_contract_from_the_api_not_the_runner_library() -> None:
    needs = requirements("heat-scheduler")
    assert "heat-scheduler-api" in needs
    assert "heat-runtime" not in needs
    probe = "import sys, scheduler.app, scheduler.cli; print('heat_runtime' in sys.modules)"
    result = run(sys.executable, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_runtime_imports_no_server_dependencies() -> None:
    probe = (
        "import sys, heat_runtime;"
        "from heat.scheduler.v1 import runner_service_pb2_grpc, registry_service_pb2_grpc;"
        "server = {'asyncpg', 'kubernetes_asyncio', 'scheduler', 'jsonschema'};"
        "print(sorted(server & set(sys.modules)))"
    )
    result = run(sys.executable, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_heat_is_a_namespace_package_other_services_can_share(tmp_path: Path) -> None:
    assert not (GEN / "python" / "heat" / "__init__.py").exists()
    other = tmp_path / "heat" / "billing" / "v1"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("NAME = 'heat.billing.v1'\n")
    probe = (
        f"import sys; sys.path.append({str(tmp_path)!r});"
        "from heat.scheduler.v1 import session_pb2; import heat.billing.v1 as b;"
        "print(session_pb2.Session.DESCRIPTOR.full_name, b.NAME)"
    )
    result = run(sys.executable, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["heat.scheduler.v1.Session", "heat.billing.v1"]


def test_api_wheel_holds_the_stubs_their_types_and_the_protos(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(GEN / "python", source, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    result = run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", str(tmp_path), str(source),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("heat_scheduler_api-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    protos = sorted(p.name for p in (ROOT / "protos" / "heat" / "scheduler" / "v1").glob("*.proto"))
    v1 = "heat/scheduler/v1/"
    for proto in protos:
        stem = proto.removesuffix(".proto")
        for suffix in (".proto", "_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert v1 + stem + suffix in names
    assert "heat/scheduler/py.typed" in names
    assert "heat/__init__.py" not in names
    assert not [name for name in names if name.startswith(("heat_runtime/", "scheduler/"))]


def test_go_module_path_is_the_one_buf_generates_for() -> None:
    module = re.search(r"^module (\S+)$", (GEN / "go" / "go.mod").read_text(), re.M)
    prefix = re.search(r"value: (\S+)", (ROOT / "buf.gen.yaml").read_text())
    assert module and prefix and module[1] == prefix[1]


def test_generators_and_runtimes_are_pinned_alike() -> None:
    """Generated code needs a runtime at least as new as its generator."""

    def pinned(go_mod: Path, module: str) -> str:
        found = re.search(rf"^\s*(?:require )?{re.escape(module)} (v\S+)", go_mod.read_text(), re.M)
        assert found, f"{module} in {go_mod}"
        return found[1]

    protobuf = "google.golang.org/protobuf"
    assert pinned(ROOT / "scripts/tools/go.mod", protobuf) == pinned(GEN / "go/go.mod", protobuf)
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    generator = lock["node_modules/@bufbuild/protoc-gen-es"]["version"]
    runtime = json.loads((GEN / "ts" / "package.json").read_text())["dependencies"]
    assert runtime["@bufbuild/protobuf"] == "^" + generator


def test_npm_package_ships_javascript_and_declarations() -> None:
    result = run("npm", "pack", "--dry-run", "--json", cwd=GEN / "ts")
    assert result.returncode == 0, result.stderr
    (packed,) = json.loads(result.stdout)
    files = {entry["path"] for entry in packed["files"]}
    assert packed["name"] == "@heat/scheduler-api"
    assert {"package.json", "README.md", "index.js", "index.d.ts"} <= files
    for proto in (ROOT / "protos" / "heat" / "scheduler" / "v1").glob("*.proto"):
        stem = "heat/scheduler/v1/" + proto.name.removesuffix(".proto")
        assert {stem + "_pb.js", stem + "_pb.d.ts"} <= files
