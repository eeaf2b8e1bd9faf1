"""Statements per transaction of the runner protocol: what one claim, one settlement, one expiry
and one CreateSession cost in round trips to PostgreSQL.

Runs a scheduler in this process (embedded PostgreSQL in a temporary folder, or
HEAT_DATABASE_URL), drives one small Session through the raw runner protocol, one result at a
time (the first version: a ClaimCredit per task), then another as heat_runtime does (batches,
credits back with results: settlements and CreateSession claim along), and prints each
transaction as the named queries it ran (BEGIN and COMMIT not counted; a COPY and the column
lookup asyncpg makes before it are). Not a test: nothing is asserted. asyncpg prepares each
named query once per connection (its statement cache), so each is a Bind/Execute after that.

    .venv/bin/python -m bench.statements        (from the repository root)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf import field_mask_pb2, json_format
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import registry_service_pb2_grpc as rpb_grpc
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import runner_service_pb2_grpc as pb_grpc
from heat.scheduler.v1 import session_pb2
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from scheduler import app
from scheduler.embedded import EmbeddedPostgres
from scheduler.settings import Settings
from scheduler.store.queries import Statements
from scheduler.store.sql import queries
from tests.support import admin_token_file, authorized_channel, open_tmp_dir

_BLOCK = re.compile(r"^-- ([a-z_][a-z0-9_]*) --$", re.MULTILINE)


def _names() -> dict[str, str]:
    """Query text -> block name, from the store's .sql files."""
    folder = Path(queries.__file__).parent
    names = {}
    for path in sorted(folder.glob("*.sql")):
        parts = _BLOCK.split(path.read_text(encoding="utf-8"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            names[_plain(body)] = name
    return names


def _plain(text: str) -> str:
    return " ".join(text.strip().rstrip(";").split())


class Recorder:
    """Every statement of every pooled connection, grouped into transactions."""

    def __init__(self) -> None:
        self.names = _names()
        self.open: dict[int, list[str]] = {}
        self.done: list[list[str]] = []

    def log(self, conn_id: int, record: Any) -> None:
        text = _plain(record.query)
        if text.upper().startswith("BEGIN"):
            self.open[conn_id] = []
        elif text.upper() in ("COMMIT", "ROLLBACK"):
            self.done.append(self.open.pop(conn_id, []))
        elif conn_id in self.open:
            name = self.names.get(text)
            if name is not None:  # else asyncpg's own type introspection, once per connection
                self.open[conn_id].append(name)

    def note(self, conn_id: int, name: str) -> None:
        """A statement the query logger does not see (a COPY)."""
        if conn_id in self.open:
            self.open[conn_id].append(name)

    def take(self) -> list[list[str]]:
        done, self.done = self.done, []
        return [t for t in done if t]


RECORDER = Recorder()
_create_pool = asyncpg.create_pool


def _counting_pool(dsn: str, **kwargs: Any) -> Any:
    init = kwargs.pop("init", None)

    async def counted(conn: asyncpg.Connection) -> None:
        if init is not None:
            await init(conn)
        conn.add_query_logger(functools.partial(RECORDER.log, id(conn)))

    return _create_pool(dsn, init=counted, **kwargs)


MANIFEST = {
    "runners": [{"name": "w", "containerImage": "busybox", "cpuLimit": "1", "memoryLimit": "64Mi"}],
    "nodeTemplates": [
        {
            "name": "t",
            "runner": "w",
            "multipleInputs": True,
            "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0s", "maxBackoff": "0s"},
        }
    ],
}
# a -> b, a -> c -> d, and e on its own: a success releases two children, c's permanent failure
# marks d upstream-failed, e fails once (retry) and then succeeds.
DAG = [
    {"key": "a", "nodeTemplate": "t"},
    {"key": "b", "nodeTemplate": "t", "dependsOn": ["a"]},
    {"key": "c", "nodeTemplate": "t", "dependsOn": ["a"]},
    {"key": "d", "nodeTemplate": "t", "dependsOn": ["c"]},
    {"key": "e", "nodeTemplate": "t"},
]


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    folder = open_tmp_dir("heat-statements-")
    try:
        async with EmbeddedPostgres(folder / "data", durable=False) as server:
            conn = await asyncpg.connect(server.dsn)
            await conn.execute("CREATE DATABASE statements")
            await conn.close()
            yield server.dsn_for("statements")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def show(what: str) -> None:
    """The transactions since the last call; the step's own first, the timekeeper's after."""
    for statements in RECORDER.take():
        print(f"{what:<34} {len(statements):>2}  {' '.join(statements)}")
        what = "  (and)"


_copy = Statements.copy


async def _noted_copy(self: Statements, name: str, *args: Any) -> None:
    # asyncpg looks the columns' types up first (a statement of its own), then COPYs.
    await _copy(self, name, *args)
    raw = getattr(self._conn, "_con", self._conn)
    RECORDER.note(id(raw), f"{name}(COPY: 2 round trips)")


async def main() -> None:
    asyncpg.create_pool = _counting_pool  # type: ignore[assignment]
    Statements.copy = _noted_copy  # type: ignore[method-assign,assignment]
    async with database() as dsn:
        settings = Settings(
            listen="127.0.0.1:0",
            database_url=dsn,
            provisioner="none",
            lease_duration=4.0,
            heartbeat_interval=1.0,
            admin_token_file=str(admin_token_file()),
        )
        async with app.running(settings) as running:
            await asyncio.sleep(0.5)
            RECORDER.take()
            async with authorized_channel(f"127.0.0.1:{running.port}") as channel:
                await drive(channel)


async def drive(channel: grpc.aio.Channel) -> None:
    registry = rpb_grpc.RegistryServiceStub(channel)
    await registry.ApplyManifest(
        json_format.ParseDict({"manifest": MANIFEST}, rpb.ApplyManifestRequest())
    )
    secret = (
        await registry.IssueRunnerCredential(rpb.IssueRunnerCredentialRequest(runner="w"))
    ).credential.secret
    RECORDER.take()
    await spb_grpc.SessionServiceStub(channel).CreateSession(
        json_format.ParseDict({"dag": {"nodes": DAG}}, spb.CreateSessionRequest())
    )
    await asyncio.sleep(0.2)
    show("CreateSession (5 nodes, 2 roots)")
    metadata = (("authorization", f"Bearer {secret}"),)
    runner = pb_grpc.RunnerServiceStub(channel)
    requests: asyncio.Queue[pb.ClaimTaskRequest] = asyncio.Queue()
    await requests.put(
        pb.ClaimTaskRequest(start=pb.ClaimStart(runner="w", instance_id="i-1", credits=0))
    )

    async def feed() -> AsyncIterator[pb.ClaimTaskRequest]:
        while True:
            yield await requests.get()

    claims = runner.ClaimTask(feed(), metadata=metadata)
    results: asyncio.Queue[pb.PostResultRequest] = asyncio.Queue()

    async def posts() -> AsyncIterator[pb.PostResultRequest]:
        while True:
            yield await results.get()

    replies = runner.PostResult(posts(), metadata=metadata)
    tasks: dict[str, pb.Task] = {}

    async def claim(count: int, what: str) -> None:
        await asyncio.sleep(0.2)
        RECORDER.take()
        await requests.put(pb.ClaimTaskRequest(credit=pb.ClaimCredit(credits=count)))
        for _ in range(count):
            response = await claims.read()
            assert isinstance(response, pb.ClaimTaskResponse)
            task = response.task
            tasks[task.node_key] = task
        await asyncio.sleep(0.2)
        show(what)

    async def post(key: str, request: pb.PostResultRequest, what: str) -> None:
        request.attempt_id = tasks[key].attempt_id
        await results.put(request)
        await replies.read()
        await asyncio.sleep(0.2)
        show(what)

    success = pb.PostResultRequest(success=pb.TaskSuccess())
    retry = pb.PostResultRequest(
        failure=pb.TaskFailure(kind=pb.FAILURE_KIND_RETRYABLE, message="once more")
    )
    permanent = pb.PostResultRequest(
        failure=pb.TaskFailure(kind=pb.FAILURE_KIND_PERMANENT, message="no")
    )
    await claim(2, "claim (2 tasks)")
    await post("a", success, "settle: success, 2 children ready")
    await post("e", retry, "settle: retryable failure")
    await claim(3, "retry promoted; claim (3 tasks)")
    await asyncio.sleep(2.2)  # past half of the lease: the next heartbeat writes
    RECORDER.take()
    beats: asyncio.Queue[pb.HeartbeatRequest] = asyncio.Queue()

    async def beat() -> AsyncIterator[pb.HeartbeatRequest]:
        while True:
            yield await beats.get()

    heartbeats = runner.Heartbeat(beat(), metadata=metadata)
    held = [tasks[k].attempt_id for k in ("b", "c", "e")]
    await beats.put(pb.HeartbeatRequest(instance_id="i-1", attempt_ids=held))
    await heartbeats.read()
    await asyncio.sleep(0.2)
    show("heartbeat (3 leases extended)")
    await post("c", permanent, "settle: failure, 1 descendant")
    await post("b", success, "settle: success, Session open")
    await post("e", success, "settle: success, Session ends")
    sessions = spb_grpc.SessionServiceStub(channel)
    created = await sessions.CreateSession(
        json_format.ParseDict({"dag": {"nodes": DAG[:2]}}, spb.CreateSessionRequest())
    )
    await claim(1, "claim (1 task)")
    await sessions.UpdateSession(
        spb.UpdateSessionRequest(
            session=session_pb2.Session(name=created.session.name, priority=8),
            update_mask=field_mask_pb2.FieldMask(paths=["priority"]),
        )
    )
    await asyncio.sleep(0.2)
    show("UpdateSession (priority)")
    await sessions.CancelSession(spb.CancelSessionRequest(name=created.session.name))
    await heartbeats.read()  # the cancellation, pushed
    await asyncio.sleep(0.2)
    show("CancelSession (1 running, 1 waiting)")
    for stream in (claims, replies, heartbeats):
        stream.cancel()
    await drive_batches(channel, secret)


async def drive_batches(channel: grpc.aio.Channel, secret: str) -> None:
    """heat_runtime's way: tasks in batches, credits back with results, outcomes in batches;
    the settlement (and CreateSession) claims along for the credits."""
    print("-- an instance that takes batches and gets its credits back with its results --")
    metadata = (("authorization", f"Bearer {secret}"),)
    runner = pb_grpc.RunnerServiceStub(channel)
    requests: asyncio.Queue[pb.ClaimTaskRequest] = asyncio.Queue()
    start = pb.ClaimStart(
        runner="w", instance_id="i-2", credits=2, max_tasks_per_message=8, credits_with_results=True
    )
    await requests.put(pb.ClaimTaskRequest(start=start))

    async def feed() -> AsyncIterator[pb.ClaimTaskRequest]:
        while True:
            yield await requests.get()

    claims = runner.ClaimTask(feed(), metadata=metadata)
    await claims.read()  # ClaimStarted
    results: asyncio.Queue[pb.PostResultRequest] = asyncio.Queue()

    async def posts() -> AsyncIterator[pb.PostResultRequest]:
        while True:
            yield await results.get()

    replies = runner.PostResult(posts(), metadata=metadata)
    tasks: dict[str, pb.Task] = {}

    async def receive(count: int) -> None:
        got = 0
        while got < count:
            response = await claims.read()
            assert isinstance(response, pb.ClaimTaskResponse)
            for task in response.tasks.tasks:
                tasks[task.node_key] = task
                got += 1

    await asyncio.sleep(0.2)
    RECORDER.take()
    await spb_grpc.SessionServiceStub(channel).CreateSession(
        json_format.ParseDict({"dag": {"nodes": DAG}}, spb.CreateSessionRequest())
    )
    await receive(2)
    await asyncio.sleep(0.2)
    show("CreateSession, 2 roots claimed along")

    async def settle(keys: tuple[str, ...], claimed: int) -> None:
        """Post the outcomes of ``keys`` in one batch; the tasks claimed along come back."""
        batch = [
            pb.PostResultRequest(attempt_id=tasks[k].attempt_id, success=pb.TaskSuccess())
            for k in keys
        ]
        await results.put(pb.PostResultRequest(batch=batch))
        await replies.read()
        await receive(claimed)
        await asyncio.sleep(0.2)
        show(f"settle {len(keys)} (batch), {claimed} claimed along")

    await settle(("a", "e"), 2)
    await settle(("b", "c"), 1)
    for stream in (claims, replies):
        stream.cancel()


if __name__ == "__main__":
    asyncio.run(main())
