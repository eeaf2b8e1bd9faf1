"""Two scheduler processes on one database, provisioning local runner processes: the leader is
paused (SIGSTOP) past its lease, killed, or cut off from PostgreSQL (a TCP proxy that goes
silent), and the other replica takes over; the former leader, resumed or reconnected, makes
no leader-only write. The database is the witness: every term (epoch) counts its fenced
writes, and the last write of each term precedes the start of the next.

Leases are short here (leader lease 2 s, renewed every 0.5 s; task leases 2 s). The figures
printed are the takeover times, from the fault to the new term's start, by PostgreSQL's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from google.protobuf import json_format
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import registry_service_pb2_grpc as rpb_grpc
from heat.scheduler.v1 import session_pb2 as s
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from tests.e2e.conftest import FINAL
from tests.support import Served, TcpProxy, serve

WORKER = Path(__file__).with_name("worker.py")
LEADER_LEASE = 2.0
SETTINGS = (
    "--leader-lease", str(LEADER_LEASE), "--leader-renew-interval", "0.5",
    "--lease-duration", "2", "--heartbeat-interval", "0.5", "--shutdown-grace", "2",
    "--provisioner", "local", "--local-runners", f"w={sys.executable} {WORKER}",
)  # fmt: skip
DUTIES = ("timekeeper", "provisioning")


def query(dsn: str, sql: str, *args: Any) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Wait for ``check()`` to be truthy (the test waits; the scheduler never polls)."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)
    return found


def name_of(served: Served) -> str:
    return f"{socket.gethostname()}:{served.process.pid}"


def leaders(dsn: str) -> dict[str, Any]:
    return {r["duty"]: r for r in query(dsn, "SELECT * FROM leadership")}


def leads_both(dsn: str, served: Served) -> dict[str, Any] | None:
    found = leaders(dsn)
    if all(d in found and found[d]["holder"] == name_of(served) for d in DUTIES):
        return found
    return None


def database_now(dsn: str) -> datetime:
    now: datetime = query(dsn, "SELECT clock_timestamp() AS now")[0]["now"]
    return now


def writes_of(dsn: str, served: Served) -> dict[tuple[str, int], int]:
    rows = query(
        dsn, "SELECT duty, epoch, writes FROM leader_terms WHERE holder = $1", name_of(served)
    )
    return {(r["duty"], r["epoch"]): r["writes"] for r in rows}


def assert_fenced(dsn: str) -> None:
    """Every term's leader-only writes came before the next term began."""
    rows = query(dsn, "SELECT * FROM leader_terms ORDER BY duty, epoch")
    for before, after in itertools.pairwise(rows):
        if before["duty"] == after["duty"] and before["last_write_time"] is not None:
            assert before["last_write_time"] < after["start_time"], (before, after)


def waiting_for_lock(dsn: str, count: int) -> bool:
    """The holders hold their advisory locks and ``count`` replicas wait on them."""
    held = all(r["holder_pid"] is not None for r in leaders(dsn).values())
    waiting = query(
        dsn, "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    )
    return held and waiting[0]["n"] >= count


def stepped_down(served: Served) -> int:
    return sum("this replica stepped down" in line for line in served.lines)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (its runner instances)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


class Replicas:
    def __init__(self, dsn: str, log: Path) -> None:
        self.dsn = dsn
        self.env = {"HEAT_TEST_LOG": str(log)}
        self.served: list[Served] = []
        self.orphans: list[int] = []

    def start(self, dsn: str | None = None) -> Served:
        served = serve("--database-url", dsn or self.dsn, *SETTINGS, env=self.env)
        self.served.append(served)
        return served

    def setup(self, served: Served) -> None:
        manifest = {
            "runners": [
                {
                    "name": "w", "containerImage": "busybox", "cpuLimit": "1",
                    "memoryLimit": "64Mi", "tasksPerPod": 2, "maxPods": 2, "idlePeriod": "60s",
                }
            ],
            "nodeTemplates": [
                {
                    "name": "echo", "runner": "w", "multipleInputs": True,
                    "retryPolicy": {
                        "maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "0.2s",
                    },
                }
            ],
        }  # fmt: skip
        with served.channel() as channel:
            rpb_grpc.RegistryServiceStub(channel).ApplyManifest(
                json_format.ParseDict({"manifest": manifest}, rpb.ApplyManifestRequest())
            )

    def submit(self, served: Served, count: int, sleep: float) -> str:
        nodes = [
            {"key": f"n{i}", "nodeTemplate": "echo", "config": {"sleep": sleep}}
            for i in range(count)
        ]
        with served.channel() as channel:
            created = spb_grpc.SessionServiceStub(channel).CreateSession(
                json_format.ParseDict({"dag": {"nodes": nodes}}, spb.CreateSessionRequest())
            )
        name: str = created.session.name
        return name

    def finished(self, served: Served, name: str, timeout: float = 60) -> s.Session:
        with served.channel() as channel:
            stub = spb_grpc.SessionServiceStub(channel)
            watch = stub.WatchSession(spb.WatchSessionRequest(name=name), timeout=timeout)
            for item in watch:
                kind = item.WhichOneof("event")
                if kind == "snapshot" and item.snapshot.state in FINAL:
                    break
                if kind == "session_change" and item.session_change.state in FINAL:
                    break
            session: s.Session = stub.GetSession(spb.GetSessionRequest(name=name)).session
            return session

    def kill(self, served: Served) -> None:
        self.orphans += children(served.process.pid)
        served.process.kill()
        served.process.wait()

    def stop(self) -> None:
        for served in self.served:
            if served.process.poll() is None:
                served.process.send_signal(signal.SIGCONT)
                served.stop()
        for served in self.served:  # shown when the test failed (pytest shows what it captured)
            print(f"--- replica {name_of(served)}:\n" + "".join(served.lines[-400:]))
        for pid in self.orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def replicas(db_dsn: str, tmp_path: Path) -> Iterator[Replicas]:
    made = Replicas(db_dsn, tmp_path / "worker.log")
    yield made
    made.stop()


def takeover(dsn: str, served: Served, since: datetime, fault: str) -> dict[str, float]:
    found = until(lambda: leads_both(dsn, served), f"the other replica leads after the {fault}")
    return {d: (found[d]["start_time"] - since).total_seconds() for d in DUTIES}


def figures(times: dict[str, float]) -> str:
    return ", ".join(f"{d} {t:.2f} s" for d, t in times.items())


def test_a_paused_leader_loses_its_duties_and_writes_nothing_after_it_resumes(
    replicas: Replicas, db_dsn: str
) -> None:
    paused = replicas.start()
    until(lambda: leads_both(db_dsn, paused), "the first replica leads")
    other = replicas.start()
    replicas.setup(other)
    name = replicas.submit(other, 6, sleep=1.0)
    until(
        lambda: query(db_dsn, "SELECT 1 FROM nodes WHERE state = 'running'"),
        "the leader's instances work",
    )
    stopped_at = database_now(db_dsn)
    paused.process.send_signal(signal.SIGSTOP)
    after_pause = takeover(db_dsn, other, stopped_at, "pause")
    # During the pause: the leases of the tasks the paused replica's instances held run out,
    # their retries run on instances the new leader starts, and the Session finishes.
    done = replicas.finished(other, name)
    assert done.state == s.SESSION_STATE_SUCCEEDED
    expired = [n for n in done.nodes if n.attempt > 1]
    assert expired and all("lease expired" in n.error.message for n in expired)
    frozen = writes_of(db_dsn, paused)
    assert frozen[("provisioning", 1)] >= 1  # it had started instances before the pause

    paused.process.send_signal(signal.SIGCONT)
    until(lambda: stepped_down(paused) == 2, "the resumed replica steps down from both duties")
    time.sleep(1.0)  # two renewal intervals for it to (wrongly) act on its old belief
    assert writes_of(db_dsn, paused) == frozen, "the former leader wrote after it resumed"
    assert_fenced(db_dsn)
    lines = [line for line in paused.lines if "stepped down" in line]
    assert all("ran out" in line or "took over" in line for line in lines), lines

    # Now the leader dies: the replica that was paused waits on its lock and takes over.
    until(lambda: waiting_for_lock(db_dsn, 2), "the former leader waits on the new one's locks")
    killed_at = database_now(db_dsn)
    replicas.kill(other)
    after_kill = takeover(db_dsn, paused, killed_at, "kill")
    name = replicas.submit(paused, 2, sleep=0.1)
    assert replicas.finished(paused, name).state == s.SESSION_STATE_SUCCEEDED
    assert_fenced(db_dsn)
    print(
        f"\ntakeover after a pause: {figures(after_pause)}; after a kill: "
        f"{figures(after_kill)} (leader lease {LEADER_LEASE:g} s)"
    )


def test_a_leader_cut_off_from_postgresql_steps_down_and_writes_nothing(
    replicas: Replicas, db_dsn: str
) -> None:
    proxy, through_proxy = TcpProxy.to_dsn(db_dsn)
    try:
        cut = replicas.start(through_proxy)
        until(lambda: leads_both(db_dsn, cut), "the replica behind the proxy leads")
        other = replicas.start()
        replicas.setup(other)
        name = replicas.submit(other, 4, sleep=1.0)
        until(
            lambda: query(db_dsn, "SELECT 1 FROM nodes WHERE state = 'running'"),
            "the leader's instances work",
        )
        until(lambda: waiting_for_lock(db_dsn, 2), "the other replica waits on the leader")
        cut_at = database_now(db_dsn)
        proxy.freeze()  # half-open: nothing goes through, nothing is closed
        after_cut = takeover(db_dsn, other, cut_at, "cut")
        until(lambda: stepped_down(cut) == 2, "the cut-off leader steps down by its own count")
        assert replicas.finished(other, name).state == s.SESSION_STATE_SUCCEEDED
        frozen = writes_of(db_dsn, cut)
        proxy.thaw()  # what it sent meanwhile arrives now
        time.sleep(1.0)
        assert writes_of(db_dsn, cut) == frozen, "the cut-off leader wrote after the takeover"
        assert_fenced(db_dsn)
        print(f"\ntakeover after cutting the leader off: {figures(after_cut)}")
    finally:
        proxy.stop()
