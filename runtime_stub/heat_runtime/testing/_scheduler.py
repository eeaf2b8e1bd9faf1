"""``HeatScheduler``: a real scheduler with an embedded PostgreSQL, served by this process on
a thread of its own, for end-to-end tests of a runner.

It needs the ``heat-scheduler`` package (``pip install 'heat-runtime[testing]'``) and the
PostgreSQL server programs (Debian: ``postgresql-15``; or ``HEAT_PG_BIN``); the scheduler is
imported only when one starts. Every method is synchronous and may be called from any thread,
so sync and async tests alike can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import grpc
from google.protobuf import json_format
from heat.scheduler.v1 import artifact_pb2 as apb
from heat.scheduler.v1 import artifact_service_pb2 as aspb
from heat.scheduler.v1 import artifact_service_pb2_grpc as aspb_grpc
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import registry_service_pb2_grpc as rpb_grpc
from heat.scheduler.v1 import session_pb2
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from heat_runtime._config import RuntimeConfig
from heat_runtime._runtime import EXIT_DRAINED, HeatRuntime
from heat_runtime._values import to_python

__all__ = ["HeatScheduler", "NodeResult", "SessionResult"]

_START_TIMEOUT: Final = 120.0
_STOP_TIMEOUT: Final = 60.0
_CHUNK: Final = 1024 * 1024
_FINAL: Final = frozenset(
    {
        session_pb2.SESSION_STATE_SUCCEEDED,
        session_pb2.SESSION_STATE_FAILED,
        session_pb2.SESSION_STATE_CANCELLED,
    }
)
_NEEDS: Final = (
    "the in-process scheduler needs the heat-scheduler package: pip install 'heat-runtime[testing]'"
)


@dataclass(frozen=True, slots=True)
class NodeResult:
    """One node of a finished Session."""

    key: str
    state: str
    """``SUCCEEDED``, ``FAILED``, ``UPSTREAM_FAILED``, ``CANCELLED``, ..."""
    attempt: int
    outputs: Any
    """Its outputs when it succeeded, else None."""
    error: str
    """The message of its last failure, if any."""
    retryable: bool


@dataclass(frozen=True, slots=True)
class SessionResult:
    """A Session once it ended."""

    name: str
    state: str
    """``SUCCEEDED``, ``FAILED`` or ``CANCELLED``."""
    reason: str
    nodes: dict[str, NodeResult]

    @property
    def outputs(self) -> dict[str, Any]:
        """The outputs of the nodes that succeeded, by node key."""
        return {key: n.outputs for key, n in self.nodes.items() if n.state == "SUCCEEDED"}


class HeatScheduler:
    """A scheduler served in this process (``provisioner none``: the test starts runners),
    on an embedded PostgreSQL in a folder of its own::

        with HeatScheduler() as scheduler:
            scheduler.apply("manifest.heat")
            with scheduler.runner(SumProcessor, runner="sum-runner"):
                done = scheduler.run([{"key": "sum", "nodeTemplate": "generic-sum-csv"}])
            assert done.state == "SUCCEEDED"

    ``lease_duration`` and ``heartbeat_interval`` (seconds) are the scheduler's; short leases
    make a killed runner's task come back quickly.
    """

    def __init__(
        self,
        folder: Path | None = None,
        *,
        lease_duration: float = 10.0,
        heartbeat_interval: float = 2.0,
    ) -> None:
        self._own_folder = folder is None
        self._folder = folder
        self._lease_duration = lease_duration
        self._heartbeat_interval = heartbeat_interval
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._port = 0
        self._auth: tuple[tuple[str, str], ...] = ()  # the scheduler's first admin token
        self._credentials: dict[str, str] = {}
        self._instances = itertools.count(1)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start PostgreSQL and the scheduler; returns once it serves."""
        if self._thread is not None:
            raise RuntimeError("this scheduler has already been started")
        try:
            import scheduler.app  # noqa: F401 - fail here, with a clear message
        except ImportError as error:
            raise RuntimeError(f"{_NEEDS} ({error})") from None
        if self._folder is None:
            # PostgreSQL may run as another user (when we are root): it must reach the folder.
            self._folder = Path(tempfile.mkdtemp(prefix="heat-testing-", dir=_shared_tmp()))
            self._folder.chmod(0o755)
        self._thread = threading.Thread(target=self._main, name="heat-scheduler", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError(f"the scheduler did not start within {_START_TIMEOUT:.0f}s")
        if self._error is not None:
            raise RuntimeError(f"the scheduler did not start: {self._error}") from self._error

    def close(self) -> None:
        """Stop the scheduler and its PostgreSQL; remove the folder it made."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is not None and loop is not None and stop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
            thread.join(_STOP_TIMEOUT)
        if self._own_folder and self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:
            self._error = error
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        from scheduler.app import running
        from scheduler.settings import Settings

        assert self._folder is not None
        settings = Settings(
            listen="127.0.0.1:0",
            data_dir=self._folder,
            provisioner="none",
            shutdown_grace=1.0,
            lease_duration=self._lease_duration,
            heartbeat_interval=self._heartbeat_interval,
        )
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running(settings) as served:
            token = settings.admin_token_path().read_text(encoding="utf-8").strip()
            self._auth = (("authorization", f"Bearer {token}"),)
            self._port = served.port
            self._ready.set()
            await self._stop.wait()

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, where runners and clients reach it."""
        if not self._port:
            raise RuntimeError("the scheduler is not serving; start() it first")
        return f"127.0.0.1:{self._port}"

    @contextlib.contextmanager
    def _channel(self) -> Iterator[grpc.Channel]:
        with grpc.insecure_channel(self.address) as channel:
            yield channel

    # --- registry -----------------------------------------------------------------------------

    def apply(self, manifest: Mapping[str, Any] | str | Path) -> None:
        """Create or update the Runners and templates of a manifest: a dict, or the path of a
        JSON file (``{"runners": [...], "nodeTemplates": [...], "sessionTemplates": [...]}``)."""
        document = manifest
        if isinstance(manifest, str | Path):
            document = json.loads(Path(manifest).read_text(encoding="utf-8"))
        request = json_format.ParseDict({"manifest": document}, rpb.ApplyManifestRequest())
        with self._channel() as channel:
            rpb_grpc.RegistryServiceStub(channel).ApplyManifest(request, metadata=self._auth)

    def credential(self, runner: str) -> str:
        """A credential of the Runner ``runner`` (issued once, then reused)."""
        if runner not in self._credentials:
            with self._channel() as channel:
                issued = rpb_grpc.RegistryServiceStub(channel).IssueRunnerCredential(
                    rpb.IssueRunnerCredentialRequest(runner=runner), metadata=self._auth
                )
            self._credentials[runner] = issued.credential.secret
        return self._credentials[runner]

    # --- runners ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def runner(
        self,
        *processors: object,
        runner: str,
        capacity: int = 1,
        **settings: Any,
    ) -> Iterator[HeatRuntime]:
        """A runtime serving ``processors`` (classes or instances; none: what was registered
        with ``HeatRuntime.register``) for the Runner ``runner`` on a thread of its own, for
        the block; drained at its end, which fails if the runtime did not exit cleanly.
        ``settings``: other RuntimeConfig fields (``heartbeat_interval``, ``drain_timeout``)."""
        config = RuntimeConfig(
            address=self.address,
            runner=runner,
            credential=self.credential(runner),
            capacity=capacity,
            instance_id=f"{runner}-test-{next(self._instances)}",
            reconnect_initial=0.05,
            reconnect_max=1.0,
            drain_timeout=10.0,
        )
        config = dataclasses.replace(config, **settings)
        runtime = HeatRuntime(config)
        for processor in processors:
            runtime.register(processor)
        ready = threading.Event()
        loops: list[asyncio.AbstractEventLoop] = []
        ended: list[int | BaseException] = []

        async def serve() -> int:
            loops.append(asyncio.get_running_loop())
            ready.set()
            return await runtime.serve(handle_signals=False)

        def main() -> None:
            try:
                ended.append(asyncio.run(serve()))
            except BaseException as error:
                ended.append(error)
            finally:
                ready.set()

        thread = threading.Thread(target=main, name=f"heat-runtime-{runner}", daemon=True)
        thread.start()
        ready.wait()
        try:
            yield runtime
        finally:
            if loops and thread.is_alive():
                with contextlib.suppress(RuntimeError):
                    loops[0].call_soon_threadsafe(runtime.drain, "the test block ended")
            thread.join(config.drain_timeout + config.ack_grace + 5)
        if thread.is_alive():
            raise RuntimeError(f"the runtime of {runner!r} did not stop after its drain")
        if ended and isinstance(ended[0], BaseException):
            raise RuntimeError(f"the runtime of {runner!r} failed: {ended[0]}") from ended[0]
        if ended and ended[0] != EXIT_DRAINED:
            raise RuntimeError(f"the runtime of {runner!r} exited with {ended[0]}")

    @contextlib.contextmanager
    def runner_process(
        self,
        command: Sequence[str],
        *,
        runner: str,
        capacity: int = 1,
        env: Mapping[str, str] | None = None,
    ) -> Iterator[subprocess.Popen[bytes]]:
        """Run ``command`` (a runner program: ``[sys.executable, "runner.py"]``) as a process
        with the HEAT_* environment a provisioner gives it, for the block; SIGTERM at its end
        (it drains), killed if it has not exited 30 s later."""
        environment = {
            **os.environ,
            **(env or {}),
            "HEAT_SCHEDULER_ADDRESS": self.address,
            "HEAT_RUNNER": runner,
            "HEAT_RUNNER_CREDENTIAL": self.credential(runner),
            "HEAT_CAPACITY": str(capacity),
            "HEAT_INSTANCE_ID": f"{runner}-test-{next(self._instances)}",
        }
        process = subprocess.Popen(list(command), env=environment)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # --- files --------------------------------------------------------------------------------

    def upload(self, content: bytes | str | Path, filename: str = "") -> str:
        """Upload a file (its bytes, or its path) in chunks; the artefact's name, to give a
        Session as a file input within the hour."""
        path = None if isinstance(content, bytes) else Path(content)

        def parts() -> Iterator[aspb.UploadArtifactRequest]:
            name = filename or (path.name if path is not None else "")
            yield aspb.UploadArtifactRequest(upload=aspb.ArtifactUpload(filename=name))
            if path is None:
                assert isinstance(content, bytes)
                for start in range(0, len(content), _CHUNK):
                    yield aspb.UploadArtifactRequest(data=content[start : start + _CHUNK])
                return
            with path.open("rb") as file:
                while chunk := file.read(_CHUNK):
                    yield aspb.UploadArtifactRequest(data=chunk)

        with self._channel() as channel:
            response = aspb_grpc.ArtifactServiceStub(channel).UploadArtifact(
                parts(), metadata=self._auth
            )
        name: str = response.artifact.name
        return name

    def download(self, name: str) -> bytes:
        """The content of an artefact (``artifacts/<id>``), e.g. a file a node returned."""
        data = bytearray()
        with self._channel() as channel:
            stream = aspb_grpc.ArtifactServiceStub(channel).DownloadArtifact(
                aspb.DownloadArtifactRequest(name=name), metadata=self._auth
            )
            for message in stream:
                if message.WhichOneof("part") == "data":
                    data += message.data
        return bytes(data)

    def _file_inputs(self, files: Mapping[str, bytes | str | Path]) -> list[apb.FileInput]:
        inputs = []
        for binding, content in files.items():
            node_key, _, input_name = binding.rpartition(":")
            given = apb.FileInput(input=input_name, node_key=node_key)
            if isinstance(content, str) and content.startswith(("file://", "s3://")):
                given.uri = content
            else:
                given.artifact = self.upload(content)
            inputs.append(given)
        return inputs

    # --- sessions -----------------------------------------------------------------------------

    def submit(
        self,
        nodes: Sequence[Mapping[str, Any]] | None = None,
        *,
        template: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes | str | Path] | None = None,
    ) -> str:
        """Create a Session from an inline DAG (``[{"key": ..., "nodeTemplate": ...,
        "dependsOn": [...], "config": {...}}]``) or a Session Template; returns its name.

        ``files`` gives its nodes files as named inputs: ``{"file": path}`` to every node
        without upstream nodes, ``{"sum:file": path}`` to the node ``sum``; a value is the
        content (bytes), a path (uploaded), or a ``file://``/``s3://`` URI the scheduler reads.
        """
        if (nodes is None) == (template is None):
            raise ValueError("give either nodes (an inline DAG) or template, not both or neither")
        document: dict[str, Any] = {"parameters": dict(parameters or {})}
        if template is not None:
            document["sessionTemplate"] = template
        else:
            document["dag"] = {"nodes": [dict(node) for node in nodes or ()]}
        request = json_format.ParseDict(document, spb.CreateSessionRequest())
        request.files.extend(self._file_inputs(files or {}))
        with self._channel() as channel:
            created = spb_grpc.SessionServiceStub(channel).CreateSession(
                request, metadata=self._auth
            )
        name: str = created.session.name
        return name

    def wait(self, session: str, timeout: float = 60.0) -> SessionResult:
        """Follow the Session until it ends (AssertionError after ``timeout`` seconds)."""
        with self._channel() as channel:
            stub = spb_grpc.SessionServiceStub(channel)
            try:
                for event in stub.WatchSession(
                    spb.WatchSessionRequest(name=session), timeout=timeout, metadata=self._auth
                ):
                    kind = event.WhichOneof("event")
                    if kind == "snapshot" and event.snapshot.state in _FINAL:
                        break
                    if kind == "session_change" and event.session_change.state in _FINAL:
                        break
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            got = stub.GetSession(spb.GetSessionRequest(name=session), metadata=self._auth).session
        if got.state not in _FINAL:
            state = session_pb2.SessionState.Name(got.state)
            raise AssertionError(
                f"session {session} did not end within {timeout:g}s; it is {state}"
            )
        return _result(got)

    def run(
        self,
        nodes: Sequence[Mapping[str, Any]] | None = None,
        *,
        template: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes | str | Path] | None = None,
        timeout: float = 60.0,
    ) -> SessionResult:
        """``submit`` then ``wait``."""
        name = self.submit(nodes, template=template, parameters=parameters, files=files)
        return self.wait(name, timeout)


def _shared_tmp() -> str | None:
    """The system's temporary folder, which every user can reach (TMPDIR may be a folder
    of our own, closed to the PostgreSQL user), if there is one."""
    shared = Path("/tmp")  # noqa: S108 - mkdtemp makes a private folder in it
    return str(shared) if shared.is_dir() else None


def _result(session: session_pb2.Session) -> SessionResult:
    nodes = {
        node.key: NodeResult(
            key=node.key,
            state=session_pb2.NodeState.Name(node.state).removeprefix("NODE_STATE_"),
            attempt=node.attempt,
            outputs=to_python(node.outputs) if node.HasField("outputs") else None,
            error=node.error.message,
            retryable=node.error.retryable,
        )
        for node in session.nodes
    }
    return SessionResult(
        name=session.name,
        state=session_pb2.SessionState.Name(session.state).removeprefix("SESSION_STATE_"),
        reason=session.state_reason,
        nodes=nodes,
    )
