"""What the tests and bench/ share: free ports, folders PostgreSQL can reach, waiting for a
condition, and schedulers to talk to (in this process, or ``heat-scheduler serve`` processes).

Every port comes from the kernel (port 0) and every folder is private, so several checkouts
can run their tests on one machine at the same time.

Callers need an identity. Every scheduler started here is given one admin token, made once per
test process and handed over the way a deployment hands over its first admin token (a file,
``--admin-token-file``); ``admin_token()`` is it, and the channels made here (``Scheduler``'s,
``Served.channel()``, ``authorized_channel``) send it on every call that brings no
``authorization`` of its own (so a runner credential given to a call still wins).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import os
import secrets
import shutil
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
from scheduler.service.supervisor import SupervisionSettings
from scheduler.settings import Settings
from scheduler.telemetry import SchedulerTelemetry

if TYPE_CHECKING:
    from heat.scheduler.v1.registry_service_pb2_grpc import RegistryServiceAsyncStub

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
READY_TIMEOUT = 90.0


# --- the tests' admin identity --------------------------------------------------------------


@functools.cache
def admin_token() -> str:
    """The admin token every scheduler started by the tests accepts (one per test process)."""
    return "heatat_test_" + secrets.token_urlsafe(32)


@functools.cache
def admin_token_file() -> Path:
    """A 0600 file holding ``admin_token()``, given to schedulers as ``admin_token_file``."""
    folder = Path(tempfile.mkdtemp(prefix="heat-token-"))
    path = folder / "admin-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(admin_token() + "\n")
    return path


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _with_token(metadata: Any, token: str) -> list[tuple[str, Any]]:
    items = list(metadata or ())
    if not any(key.lower() == "authorization" for key, _ in items):
        items.append(("authorization", f"Bearer {token}"))
    return items


class _Bearer:
    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*_with_token(details.metadata, self._token))
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files each interceptor under one kind of call only: one class per kind.
class _BearerUnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _BearerUnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _BearerStreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


class _BearerStreamStream(_Bearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def bearer_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that send ``authorization: Bearer <token>`` with every call that has none
    of its own."""
    return [
        _BearerUnaryUnary(token),
        _BearerUnaryStream(token),
        _BearerStreamUnary(token),
        _BearerStreamStream(token),
    ]


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class SyncBearerInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """``BearerInterceptor`` for synchronous channels."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, d: Any) -> _Details:
        return _Details(
            d.method,
            d.timeout,
            _with_token(d.metadata, self._token),
            d.credentials,
            d.wait_for_ready,
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


def authorized_channel(
    address: str,
    token: str | None = None,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    **kwargs: Any,
) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` that calls as ``token`` (default: the tests' admin)."""
    interceptors = bearer_interceptors(token or admin_token())
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, interceptors=interceptors, **kwargs)
    return grpc.aio.insecure_channel(address, interceptors=interceptors, **kwargs)


def authorized_sync_channel(address: str, token: str | None = None, **kwargs: Any) -> grpc.Channel:
    """A synchronous channel to ``address`` that calls as ``token`` (default: the admin)."""
    return grpc.intercept_channel(
        grpc.insecure_channel(address, **kwargs), SyncBearerInterceptor(token or admin_token())
    )


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
    dsn: str,
    *,
    backend: Provisioner | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    telemetry: SchedulerTelemetry | None = None,
    supervision: SupervisionSettings | None = None,
    **overrides: Any,
) -> AsyncIterator[Scheduler]:
    """A scheduler served in-process on ``dsn`` (loopback, a free port, no provisioner unless
    the overrides say otherwise) and a channel to it that calls as admin (over TLS with
    ``credentials``); ``backend`` replaces the provisioner the settings name, ``telemetry``
    the telemetry the environment configures, ``supervision`` the supervisor's timings. An
    empty ``dsn`` runs an embedded PostgreSQL (under the ``data_dir`` override)."""
    files = None
    if "artifact_store" not in overrides:
        files = tempfile.mkdtemp(prefix="heat-artifacts-")
        overrides["artifact_store"] = files
    settings = Settings(
        **{
            "listen": "127.0.0.1:0",
            "database_url": dsn,
            "shutdown_grace": 1.0,
            "provisioner": "none",
            "admin_token_file": str(admin_token_file()),
            **overrides,
        }
    )
    try:
        async with serving_settings(
            settings, backend, credentials, telemetry, supervision
        ) as served:
            yield served
    finally:
        if files is not None:
            shutil.rmtree(files, ignore_errors=True)


@asynccontextmanager
async def serving_settings(
    settings: Settings,
    backend: Provisioner | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    telemetry: SchedulerTelemetry | None = None,
    supervision: SupervisionSettings | None = None,
) -> AsyncIterator[Scheduler]:
    async with app.running(
        settings, provisioner=backend, telemetry=telemetry, supervision=supervision
    ) as running:
        address = f"127.0.0.1:{running.port}"
        async with authorized_channel(address, credentials=credentials) as channel:
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
    token: str = field(default_factory=admin_token)
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

    def channel(self, token: str | None = None) -> grpc.Channel:
        """A synchronous channel that calls as ``token`` (default: the admin)."""
        return authorized_sync_channel(self.address, token or self.token)

    def grpcurl(
        self, *args: str, data: Any = None, token: str | None = ""
    ) -> subprocess.CompletedProcess[str]:
        """grpcurl against it, as ``token`` (default: the admin; None: as nobody)."""
        command = [GRPCURL, "-plaintext"]
        if token is not None:
            command += ["-H", f"authorization: Bearer {token or self.token}"]
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
    """``heat-scheduler serve`` on loopback, once it says it is serving; it takes the tests'
    admin token unless the arguments give an ``--admin-token-file``."""
    port = port or free_port()
    if not any(a.startswith("--admin-token-file") for a in args):
        args = ("--admin-token-file", str(admin_token_file()), *args)
    env = dict(env or {})
    if "HEAT_ARTIFACT_STORE" not in env and "--artifact-store" not in args:
        # Files of Sessions in a private folder, not ./heat-data (a flag would win over it).
        env["HEAT_ARTIFACT_STORE"] = tempfile.mkdtemp(prefix="heat-artifacts-")
    process = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "serve", "--listen", f"127.0.0.1:{port}", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env},
        cwd=cwd,
    )
    served = Served(process, f"127.0.0.1:{port}")
    try:
        served.wait_ready()
    except BaseException:
        # SIGTERM first: a scheduler stopped gracefully also stops the PostgreSQL it embeds,
        # which a SIGKILL would leave running after the test.
        try:
            served.stop(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    return served


# --- a TCP proxy between a scheduler and PostgreSQL ------------------------------------------


class TcpProxy:
    """Forwards connections from a local port to ``target``, in a thread of its own (so a
    scheduler in another process, or in this one, can be put behind it).

    ``freeze()`` is a partition that leaves every connection half-open: nothing is forwarded
    in either direction and nothing is closed, new connections are accepted and held, so the
    ends see silence, as when a network drops packets. ``thaw()`` heals it: what was held goes
    through, as TCP's retransmissions would deliver it. ``cut()`` closes every connection;
    ``down()`` does that and refuses new ones until ``up()``, as a server that went away.
    """

    def __init__(self, target_host: str, target_port: int, *, unix_socket: str = "") -> None:
        """Forward to ``target_host:target_port``, or to the Unix socket at ``unix_socket``."""
        self._target = (target_host, target_port)
        self._unix_socket = unix_socket
        self._loop = asyncio.new_event_loop()
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._refusing = False
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    def to_dsn(cls, dsn: str) -> tuple[TcpProxy, str]:
        """A started proxy to the server of ``dsn``, and the DSN that goes through it."""
        from urllib.parse import parse_qs, urlsplit, urlunsplit

        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        if "host" in query:  # a Unix socket's folder (and its port)
            port = query.get("port", ["5432"])[0]
            proxy = cls("", 0, unix_socket=f"{query['host'][0]}/.s.PGSQL.{port}")
        else:
            proxy = cls(parts.hostname or "127.0.0.1", parts.port or 5432)
        proxy.start()
        user, at, _ = parts.netloc.rpartition("@")
        netloc = f"{user}{at}127.0.0.1:{proxy.port}"
        return proxy, urlunsplit(parts._replace(netloc=netloc, query=""))

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def stop(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            mine = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in mine:
                task.cancel()
            await asyncio.gather(*mine, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def freeze(self) -> None:
        self._call(lambda: self._flow().clear())

    def thaw(self) -> None:
        self._call(lambda: self._flow().set())

    def down(self) -> None:
        def refuse() -> None:
            self._refusing = True

        self._call(refuse)
        self.cut()

    def up(self) -> None:
        def accept() -> None:
            self._refusing = False

        self._call(accept)

    def cut(self) -> None:
        def close_all() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._call(close_all)

    def _call(self, action: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            action()
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    def _flow(self) -> asyncio.Event:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        return self._flowing

    async def _listen(self) -> None:
        self._flow()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # stop() ends every connection
            await self._forward(reader, writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            await self._flow().wait()
            if self._unix_socket:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix_socket)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        for end in (writer, up_writer):
            end.transport.abort()
            self._writers.discard(end)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            await self._flow().wait()  # frozen: not even an end goes through
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.transport.abort()
