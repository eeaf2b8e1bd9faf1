"""What the tests and bench/ share: free ports, folders PostgreSQL can reach, waiting for a
condition, and schedulers to talk to (in this process, or ``heat-scheduler serve`` processes).

Every port comes from the kernel (port 0) and every folder is private, so several checkouts
can run their tests on one machine at the same time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from heat.scheduler.v1 import registry_service_pb2_grpc

from scheduler import app
from scheduler.domain.ports import Provisioner
from scheduler.settings import Settings

if TYPE_CHECKING:
    from heat.scheduler.v1.registry_service_pb2_grpc import RegistryServiceAsyncStub

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
READY_TIMEOUT = 90.0


def free_port() -> int:
    """A port nobody listens on right now (for a server that must know its port up front)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def open_tmp_dir(prefix: str = "heat-test-") -> Path:
    """A new folder the unprivileged PostgreSQL user can reach even when we are root.

    pytest's ``tmp_path`` lies under a 0700 folder of root's, which that user cannot enter.
    """
    # mkdtemp's folder is private to us; 0755 lets the server user through, not in.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


async def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Wait until ``check()`` is truthy and return it (the test waits; the code under test
    never polls)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check}")
        await asyncio.sleep(interval)


async def wait_serving(address: str, *, alive: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Whether the scheduler at ``address`` reports SERVING within ``timeout`` (asked once a
    tenth of a second, while ``alive()``)."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and alive():
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    return False


# --- a scheduler in this process ----------------------------------------------------------------


@dataclass
class Scheduler:
    address: str
    channel: grpc.aio.Channel
    registry: RegistryServiceAsyncStub
    running: app.Running


@asynccontextmanager
async def serving(
    dsn: str, *, backend: Provisioner | None = None, **overrides: Any
) -> AsyncIterator[Scheduler]:
    """A scheduler served in-process on ``dsn`` (loopback, a free port, no provisioner unless
    the overrides say otherwise) and a channel to it; ``backend`` replaces the provisioner the
    settings name."""
    settings = Settings(
        **{
            "listen": "127.0.0.1:0",
            "database_url": dsn,
            "shutdown_grace": 1.0,
            "provisioner": "none",
            **overrides,
        }
    )
    async with app.running(settings, provisioner=backend) as running:
        address = f"127.0.0.1:{running.port}"
        async with grpc.aio.insecure_channel(address) as channel:
            yield Scheduler(
                address, channel, registry_service_pb2_grpc.RegistryServiceStub(channel), running
            )


@dataclass
class RpcFailure:
    code: grpc.StatusCode
    message: str
    violations: dict[str, str]
    reason: str
    metadata: dict[str, str]


def failure(error: grpc.aio.AioRpcError) -> RpcFailure:
    """The status of a failed call with its rich details unpacked."""
    violations: dict[str, str] = {}
    reason = ""
    metadata: dict[str, str] = {}
    status: Any = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.update({v.field: v.description for v in bad.field_violations})
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            metadata = dict(info.metadata)
    return RpcFailure(error.code(), error.details() or "", violations, reason, metadata)


# --- a `heat-scheduler serve` process -----------------------------------------------------------


@dataclass
class Served:
    """A ``heat-scheduler serve`` process; its log lines are collected as they come."""

    process: subprocess.Popen[str]
    address: str
    lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if (
                " serving " in line
                or line.rstrip().endswith(" serving")
                or "serving address=" in line
            ):
                self._ready.set()
        self._ready.set()

    def wait_ready(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(READY_TIMEOUT) or self.process.poll() is not None:
            raise AssertionError("scheduler did not start:\n" + "".join(self.lines))

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def grpcurl(self, *args: str, data: Any = None) -> subprocess.CompletedProcess[str]:
        command = [GRPCURL, "-plaintext"]
        if data is not None:
            command += ["-d", json.dumps(data)]
        command += [self.address, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)

    def call(self, method: str, data: Any) -> Any:
        result = self.grpcurl(f"heat.scheduler.v1.{method}", data=data)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def serve(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, port: int = 0
) -> Served:
    """``heat-scheduler serve`` on loopback, once it says it is serving."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "serve", "--listen", f"127.0.0.1:{port}", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    served = Served(process, f"127.0.0.1:{port}")
    try:
        served.wait_ready()
    except BaseException:
        process.kill()
        raise
    return served
