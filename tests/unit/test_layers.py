"""The rooms of scheduler/ and their one-way doors, checked on every import statement (lazy
ones inside functions too):

    transport -> service -> domain <- store, provisioner, telemetry, artifacts

The domain and the services know no database driver, no gRPC, no Kubernetes client, no
OpenTelemetry SDK; only the wiring (scheduler/app/) imports every room. Telemetry is
cross-cutting: the services report through a port of the domain
(``scheduler.domain.telemetry``), which the telemetry room keeps with the SDK; it may use
gRPC (its RPC interceptor) and the settings (its errors), never a service or the store.
Tools beside the rooms: embedded (the PostgreSQL launcher), settings and logs; the CLI is a
client that may start the app.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
PACKAGE: Final = ROOT / "scheduler"

# Which rooms of scheduler/ each room may import (besides itself).
MAY_IMPORT: Final[dict[str, frozenset[str]]] = {
    "domain": frozenset(),
    "service": frozenset({"domain"}),
    "transport": frozenset({"domain", "service"}),
    "store": frozenset({"domain"}),
    "provisioner": frozenset({"domain"}),
    "telemetry": frozenset({"domain", "settings"}),
    "artifacts": frozenset({"domain"}),
    "embedded": frozenset(),
    "settings": frozenset(),
    "logs": frozenset(),
    "cli": frozenset({"domain", "embedded", "settings", "logs", "app"}),
    "app": frozenset(
        {
            "domain",
            "service",
            "transport",
            "store",
            "provisioner",
            "telemetry",
            "artifacts",
            "embedded",
            "settings",
            "logs",
        }
    ),
}
_INFRASTRUCTURE: Final = frozenset(
    {
        "asyncpg",
        "grpc",
        "grpc_health",
        "grpc_reflection",
        "grpc_status",
        "google.protobuf",
        "google.rpc",
        "heat",
        "kubernetes_asyncio",
        "aiohttp",
        "opentelemetry",
        "prometheus_client",
    }
)
# Libraries a room must not import. heat_runtime is the runners' library: the server has its
# own contract (the generated heat.scheduler.v1) and never depends on it.
MAY_NOT_USE: Final[dict[str, frozenset[str]]] = {
    "domain": _INFRASTRUCTURE,
    "service": _INFRASTRUCTURE,
    "transport": frozenset({"asyncpg", "kubernetes_asyncio", "aiohttp", "opentelemetry"}),
    "store": frozenset({"grpc", "heat", "kubernetes_asyncio", "aiohttp", "opentelemetry"}),
    "provisioner": frozenset({"asyncpg", "grpc", "heat", "opentelemetry"}),
    "artifacts": frozenset({"asyncpg", "grpc", "heat", "kubernetes_asyncio", "opentelemetry"}),
    "settings": frozenset({"asyncpg", "grpc", "kubernetes_asyncio"}),
    "telemetry": frozenset({"asyncpg", "heat", "kubernetes_asyncio", "aiohttp"}),
}
EVERYWHERE: Final = frozenset({"heat_runtime"})


def room_of(module: str) -> str | None:
    """``scheduler.store.tasks`` -> ``store``; None outside scheduler/."""
    parts = module.split(".")
    if parts[0] != "scheduler" or len(parts) < 2:
        return None
    return parts[1]


def imports_of(source: str, module: str) -> list[str]:
    """Every module an import statement of ``source`` names (relative ones resolved)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level]
                base = ".".join([*package, base] if base else package)
            if base == "scheduler":  # ``from scheduler import app`` names the module app
                found += [f"{base}.{alias.name}" for alias in node.names]
            else:
                found.append(base)
    return found


def violations(source: str, module: str) -> list[str]:
    room = room_of(module)
    assert room is not None and room in MAY_IMPORT, f"{module} is in no known room"
    allowed = MAY_IMPORT[room] | {room}
    banned = MAY_NOT_USE.get(room, frozenset()) | EVERYWHERE
    out = []
    for name in imports_of(source, module):
        target = room_of(name)
        if target is not None and target in MAY_IMPORT and target not in allowed:
            out.append(f"{module} imports {name}: {room} may not import {target}")
        for library in banned:
            if name == library or name.startswith(library + "."):
                out.append(f"{module} imports {name}: {room} may not use {library}")
    return out


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts.pop()
        if len(parts) < 2:
            continue  # scheduler/__init__.py
        found.append((".".join(parts), path))
    return found


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_every_import_goes_the_right_way(module: str, path: Path) -> None:
    assert violations(path.read_text(encoding="utf-8"), module) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("scheduler.domain.dag", "import asyncpg", "domain may not use asyncpg"),
        ("scheduler.service.x", "from grpc import aio", "service may not use grpc"),
        ("scheduler.service.x", "from scheduler.store import tasks", "may not import store"),
        ("scheduler.domain.x", "from ..service import signals", "may not import service"),
        ("scheduler.store.x", "from scheduler import app", "store may not import app"),
        (
            "scheduler.service.x",
            "def f():\n    import kubernetes_asyncio.client\n",
            "may not use kubernetes_asyncio",
        ),
        ("scheduler.settings", "from scheduler.provisioner import local", "may not import"),
        ("scheduler.service.x", "from opentelemetry import trace", "may not use opentelemetry"),
        ("scheduler.telemetry.x", "from scheduler.service import signals", "may not import"),
    ],
)
def test_the_check_sees_upward_and_forbidden_imports(
    module: str, source: str, expected: str
) -> None:
    found = violations(source, module)
    assert len(found) == 1 and expected in found[0], found
