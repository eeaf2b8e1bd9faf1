"""What a scenario is given: the sizes of this run, the shared PostgreSQL, a work folder, and
a fresh scheduler (with its own database and the bench Runner registered) on request."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.harness import Postgres, Scheduler, log, register


@dataclass(frozen=True)
class Sizes:
    mode: str
    # 1. throughput
    throughput_nodes: int
    many_sessions: int
    many_session_nodes: int
    runner_counts: tuple[int, ...]
    capacity: int
    # 2. dispatch latency
    latency_rate: float  # nodes/s
    latency_seconds: float
    # 3. DAG size
    dag_sizes: tuple[int, ...]
    dag_width: int
    # 4. fan-out/fan-in
    fan_width: int
    # 5. idle streams
    idle_instances: int
    idle_processes: int
    idle_window: float
    # 6. the limit and the peer
    pgbench_clients: tuple[int, ...]
    pgbench_seconds: float
    pgqueuer_jobs: int
    pgqueuer_workers: tuple[int, ...]
    # 7. fairness
    fairness_big: int = 10_000
    fairness_share_nodes: int = 6_000
    claim_sessions: int = 1_000  # Sessions of 20 queued nodes, for the claims' cost
    claim_rounds: int = 200
    # 8. the critical path: branches of 2 nodes, a chain, each node sleeping, one runner
    cp_branches: int = 300
    cp_chain: int = 60
    cp_sleep_ms: float = 25.0
    cp_capacity: int = 4
    # runners used by scenarios 2-4 and 7
    runners: int = 4

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            mode="full",
            throughput_nodes=20_000,
            many_sessions=500,
            many_session_nodes=20,
            runner_counts=(1, 4, 16),
            capacity=32,
            latency_rate=200,
            latency_seconds=10,
            dag_sizes=(10_000, 100_000),
            dag_width=500,
            fan_width=1000,
            idle_instances=1000,
            idle_processes=4,
            idle_window=30,
            pgbench_clients=(1, 4, 16),
            pgbench_seconds=5,
            pgqueuer_jobs=20_000,
            pgqueuer_workers=(1, 4),
        )

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            mode="quick",
            throughput_nodes=4_000,
            many_sessions=100,
            many_session_nodes=20,
            runner_counts=(1, 4, 16),
            capacity=32,
            latency_rate=200,
            latency_seconds=4,
            dag_sizes=(2_000, 20_000),
            dag_width=500,
            fan_width=1000,
            idle_instances=1000,
            idle_processes=4,
            idle_window=10,
            pgbench_clients=(1, 4, 16),
            pgbench_seconds=2,
            pgqueuer_jobs=4_000,
            pgqueuer_workers=(1,),
            fairness_big=4_000,
            fairness_share_nodes=2_000,
            claim_sessions=200,
            claim_rounds=100,
            cp_branches=150,
            cp_chain=30,
            cp_sleep_ms=20.0,
        )

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(
            mode="tiny",
            throughput_nodes=100,
            many_sessions=5,
            many_session_nodes=20,
            runner_counts=(1, 2),
            capacity=8,
            latency_rate=100,
            latency_seconds=1,
            dag_sizes=(100, 400),
            dag_width=50,
            fan_width=30,
            idle_instances=20,
            idle_processes=1,
            idle_window=2,
            pgbench_clients=(1, 2),
            pgbench_seconds=1,
            pgqueuer_jobs=100,
            pgqueuer_workers=(1,),
            fairness_big=200,
            fairness_share_nodes=100,
            claim_sessions=10,
            claim_rounds=8,
            cp_branches=5,
            cp_chain=4,
            cp_sleep_ms=2.0,
            runners=2,
        )


@dataclass
class Context:
    sizes: Sizes
    pg: Postgres
    work: Path  # logs and records of this run

    @contextlib.asynccontextmanager
    async def scheduler(self, name: str, *extra: str, replicas: int = 1) -> AsyncIterator[Env]:
        """A fresh database ``name``, a scheduler on it (``replicas`` of them, each its own
        process, the first started first: it applies the migrations), the bench Runner
        registered."""
        dsn = await self.pg.create_database(name)
        log(f"{name}: starting {replicas} scheduler(s)")
        started: list[Scheduler] = []
        conn: asyncpg.Connection | None = None
        try:
            for i in range(replicas):
                log_file = self.work / f"{name}.scheduler{i or ''}.log"
                started.append(await Scheduler.start(dsn, log_file, *extra))
            secret = await register(started[0].address)
            conn = await asyncpg.connect(dsn)
            yield Env(name, started[0], secret, conn, self.work / f"{name}.runners.log", started)
        finally:
            if conn is not None:
                await conn.close()
            for scheduler in started:
                await scheduler.stop()


@dataclass
class Env:
    database: str
    scheduler: Scheduler
    secret: str
    conn: asyncpg.Connection
    runner_log: Path
    replicas: list[Scheduler]

    @property
    def schedulers(self) -> list[int]:
        """The scheduler processes' ids."""
        return [s.pid for s in self.replicas]
