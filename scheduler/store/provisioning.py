"""Provisioning in the PostgreSQL store (provisioning.sql): work and status per Runner, drains."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from scheduler.domain.provisioning import RunnerStatus, RunnerWork
from scheduler.store.queries import Statements


class PgProvisioning:
    def __init__(self, db: Statements) -> None:
        self._db = db

    async def work_by_runner(self) -> dict[str, RunnerWork]:
        rows = await self._db.fetch("work_by_runner")
        return {r["runner"]: RunnerWork(r["queued"], r["running"]) for r in rows}

    async def save_runner_status(self, statuses: Sequence[RunnerStatus], now: datetime) -> None:
        if not statuses:
            return
        await self._db.fetch(
            "save_runner_status",
            [s.runner for s in statuses],
            [s.desired for s in statuses],
            [s.observed for s in statuses],
            [s.ready for s in statuses],
            [s.last_error for s in statuses],
            [s.last_error_time for s in statuses],
            now,
        )

    async def runner_status(self, names: Sequence[str]) -> dict[str, RunnerStatus]:
        rows = await self._db.fetch("runner_status", list(names))
        return {
            r["runner"]: RunnerStatus(
                runner=r["runner"],
                desired=r["desired"],
                observed=r["observed"],
                ready=r["ready"],
                last_error=r["last_error"],
                last_error_time=r["last_error_time"],
                queued=r["queued"],
                running=r["running"],
            )
            for r in rows
        }

    async def claim_drain(self, instance_id: str, runner: str, reason: str, now: datetime) -> bool:
        return bool(await self._db.fetch("claim_drain", instance_id, runner, reason, now))

    async def forget_drains(self, instance_ids: Sequence[str]) -> None:
        if instance_ids:
            await self._db.fetch("forget_drains", list(instance_ids))
