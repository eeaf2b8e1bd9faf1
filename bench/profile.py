"""Where one throughput run's work goes: PostgreSQL's statements per task and commits per task,
and a sample of the scheduler's CPU (py-spy), for the throughput scenario's one Session.

    .venv/bin/python -m bench.profile                      # 20,000 nodes, 4 runner processes
    .venv/bin/python -m bench.profile --nodes 4000 --no-spy --uvloop

It starts its own durable PostgreSQL (pg_stat_statements loaded), one scheduler and R runner
processes as ``bench/run.py`` does, creates one Session of N independent nodes, resets
``pg_stat_statements`` and reads ``pg_stat_database``, lets the runners go, and samples the
scheduler with ``py-spy record`` until the Session ends (Python frames at 100 Hz; ``--native``:
C frames too, at 50 Hz, only while holding the GIL, since native unwinding of every thread
halved the run's throughput). It prints tasks/s, CPU per 1,000 tasks per process group, every
statement with its calls and time per 1,000 tasks, commits per 1,000 tasks, and where the
scheduler's samples were (charged to the innermost frame of a package, and by function).
``--uvloop`` runs the scheduler and the runners on uvloop (``pip install uvloop`` first; it is
installed as the event loop policy by a ``sitecustomize`` on PYTHONPATH), to compare.
``--telemetry default`` (or ``full``) runs the scheduler and the runners with the telemetry
scenario's OTEL_* environment of that mode (OTLP/gRPC to a receiver in this process), and
``--session-size 20`` splits the nodes into Sessions of 20 (so trace sampling, decided per
Session, applies as in that scenario): where telemetry's CPU goes. Figures, not tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
from heat.scheduler.v1 import session_service_pb2_grpc

from bench.context import Context, Sizes
from bench.harness import (
    CpuMeter,
    Postgres,
    create_session,
    independent,
    log,
    runners,
    span,
    wait_sessions_end,
)
from bench.scenarios.telemetry import MODES, environment, mode_env
from tests.otlp import Receiver

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")
_BASE = ("stdlib", "native")
# Leaf frames of a thread that waits: the event loop's select, an idle executor worker, a
# thread whose target blocks in C (gRPC's). Without --native py-spy counts them as running.
_IDLE = frozenset(
    {"EpollSelector.select", "_worker", "Thread.run", "epoll_wait", "PyThread_acquire_lock_timed"}
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=32)
    parser.add_argument("--no-spy", action="store_true", help="do not sample the scheduler")
    parser.add_argument(
        "--native", action="store_true", help="py-spy --native --gil at 50 Hz (C frames too)"
    )
    parser.add_argument("--uvloop", action="store_true", help="scheduler and runners on uvloop")
    parser.add_argument("--telemetry", choices=MODES, default="off", help="telemetry mode")
    parser.add_argument(
        "--scheduler-only", action="store_true", help="telemetry in the scheduler, not runners"
    )
    parser.add_argument(
        "--session-size", type=int, default=0, help="nodes per Session (0: one Session)"
    )
    parser.add_argument("--top", type=int, default=25, help="functions shown")
    parser.add_argument("--keep", type=Path, help="write py-spy's raw samples here")
    return parser.parse_args(argv)


def _package(file: str) -> str:
    """What a frame's file (as py-spy names it: relative to its sys.path entry) belongs to: our
    code by subpackage, a library by its top package, the standard library as one."""
    parts = file.replace("\\", "/").split("/")
    if parts[0] in ("scheduler", "heat_runtime") and len(parts) > 2:
        return "/".join(parts[:2])
    if len(parts) == 1 or file.startswith("<"):
        return "stdlib, interpreter" if file.endswith((".py", ">")) or not file else "native"
    return "stdlib, interpreter" if parts[0] in sys.stdlib_module_names else parts[0]


def spy_tables(raw: str, top: int) -> str:
    """Self samples per function and per package from py-spy's raw (collapsed) output."""
    functions: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        files = [m["file"] if m else "" for m in map(_FRAME.match, stack.split(";"))]
        leaf = _FRAME.match(stack.split(";")[-1])
        func = leaf["func"] if leaf else stack.split(";")[-1]
        if func in _IDLE:
            idle += n
            continue
        functions[f"{func} ({Path(files[-1]).name})"] += n
        # Charged to the innermost frame of a package (ours or a library's): the standard
        # library and the interpreter work for whoever called them.
        owners = [_package(f) for f in files]
        packages[next((o for o in reversed(owners) if not o.startswith(_BASE)), owners[-1])] += n
        total += n
    if not total:
        return "(no samples)"
    out = [f"scheduler samples: {total} busy, {idle} idle (left out)", ""]
    out += ["| where (innermost package frame) | share |"]
    out += ["| --- | --- |"]
    out += [f"| {p} | {100 * n / total:.1f} % |" for p, n in packages.most_common(12)]
    out += ["", "| function (self) | share |", "| --- | --- |"]
    out += [f"| {f} | {100 * n / total:.1f} % |" for f, n in functions.most_common(top)]
    return "\n".join(out)


async def _statements(admin: asyncpg.Connection, database: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await admin.fetch(
        """
        SELECT s.query, s.calls, s.total_exec_time, s.rows
        FROM pg_stat_statements AS s JOIN pg_database AS d ON d.oid = s.dbid
        WHERE d.datname = $1 ORDER BY s.total_exec_time DESC
        """,
        database,
    )
    return rows


async def _commits(admin: asyncpg.Connection, database: str) -> int:
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    value: int = await admin.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database
    )
    return value


def statement_table(rows: list[asyncpg.Record], tasks: int) -> str:
    out = [
        "| statement | calls per 1,000 tasks | mean ms | ms per 1,000 tasks | rows per call |",
        "| --- | --- | --- | --- | --- |",
    ]
    calls = 0
    for r in rows:
        if r["calls"] == 0:
            continue
        calls += r["calls"]
        text = " ".join(r["query"].split())[:70].replace("|", "/")
        out.append(
            f"| {text} | {1000 * r['calls'] / tasks:.1f} | {r['total_exec_time'] / r['calls']:.3f}"
            f" | {1000 * r['total_exec_time'] / tasks:.1f} | {r['rows'] / r['calls']:.1f} |"
        )
    out.append(f"| all | {1000 * calls / tasks:.1f} | | | |")
    return "\n".join(out)


def _span_kind(name: str) -> str:
    """A span's name without what varies per node (``dispatch noop`` -> ``dispatch``)."""
    first = name.split(" ", 1)[0]
    return first if first in ("dispatch", "attempt", "settle") else name


async def _spy(pid: int, out: Path, *, native: bool) -> asyncio.subprocess.Process:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    rate = "50" if native else "100"
    args = [spy, "record", "-p", str(pid), "-r", rate, "-f", "raw", "-o", str(out)]
    if native:
        args += ["--native", "--gil"]
    log(f"py-spy {' '.join(args[2:])}")
    return await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="heat-profile-"))
    if args.uvloop:
        # The scheduler and the runner processes inherit PYTHONPATH: each installs uvloop's
        # policy as it starts, so its asyncio.run() makes a uvloop loop.
        (work / "sitecustomize.py").write_text("import uvloop\n\nuvloop.install()\n")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(work), os.environ.get("PYTHONPATH", "")) if p
        )
    pg = await Postgres.start()
    result: dict[str, Any] = {}
    size = args.session_size or args.nodes
    receiver: Receiver | None = None
    try:
        ctx = Context(Sizes.quick(), pg, work)
        async with contextlib.AsyncExitStack() as stack:
            values: dict[str, str] = {}
            if args.telemetry != "off":
                receiver = await stack.enter_async_context(Receiver())
                values = mode_env(args.telemetry, receiver.endpoint)
            with environment(values):
                env = await stack.enter_async_context(ctx.scheduler("profile"))
            channel = await stack.enter_async_context(env.scheduler.channel())
            stub = session_service_pb2_grpc.SessionServiceStub(channel)
            names = [
                (await create_session(stub, independent(size)))[0]
                for _ in range(max(1, args.nodes // size))
            ]
            nodes = size * len(names)
            admin = await asyncpg.connect(pg.admin_dsn)
            try:
                with environment({} if args.scheduler_only else values):
                    group_of = runners(
                        env.scheduler.address, env.secret, args.runners, args.capacity,
                        env.runner_log, prefix="p",
                    )  # fmt: skip
                    group = await stack.enter_async_context(group_of)
                if pg.statements:
                    await admin.execute("SELECT pg_stat_statements_reset()")
                commits0 = await _commits(admin, "profile")
                spy = (
                    None
                    if args.no_spy
                    else await _spy(env.scheduler.pid, work / "spy.txt", native=args.native)
                )
                meter = CpuMeter(pg, env.schedulers, [p.pid for p in group.processes])
                meter.begin()
                await group.go()
                await wait_sessions_end(env.conn, names, 900)
                cpu = meter.per_thousand(nodes)
                commits = await _commits(admin, "profile") - commits0
                rows = await _statements(admin, "profile") if pg.statements else []
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    await spy.wait()
                result = await span(env.conn, names)
                await stack.aclose()  # the runners and the scheduler flush their spans
            finally:
                await admin.close()
    finally:
        await pg.stop()
    print(
        f"{len(names)} Session(s) of {size} nodes, {args.runners} runner processes"
        f"{' on uvloop' if args.uvloop else ''}, telemetry {args.telemetry}: "
        f"{result['tasks_per_s']:.0f} tasks/s"
    )
    print(
        "CPU ms per 1,000 tasks: "
        + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
        + f"; commits per 1,000 tasks: {1000 * commits / nodes:.1f}"
    )
    if rows:
        print()
        print(statement_table(rows, nodes))
    raw = work / "spy.txt"
    if raw.exists():
        text = raw.read_text()
        if args.keep:
            args.keep.write_text(text)
        print()
        print(spy_tables(text, args.top))
    if receiver is not None:
        # What was traced, per 1,000 tasks (the scheduler's and the runners' spans, CreateSession
        # and its statements included).
        kinds = Counter(_span_kind(s.name) for s in receiver.spans())
        print()
        print("spans per 1,000 tasks: " + ", ".join(
            f"{name} {1000 * count / nodes:.1f}" for name, count in kinds.most_common()
        ))  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    asyncio.run(amain(parse(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
