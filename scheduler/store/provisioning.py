"""The provisioning half of the store: work per Runner, Runner status, the drain budget."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from scheduler.domain.provisioning import RunnerStatus
from scheduler.domain.registry import Runner
from scheduler.store import records
from scheduler.store.queries import Tx

TICK_CHANNEL = "heat_tick"


class PgProvisioningTx(Tx):
    async def all_runners(self) -> list[Runner]:
        return [records.runner_from(r) for r in await self._fetch("all_runners")]

    async def work_by_runner(self) -> dict[str, tuple[int, int]]:
        rows = await self._fetch("work_by_runner")
        return {r["runner"]: (r["queued"], r["running"]) for r in rows}

    async def save_runner_status(self, statuses: Sequence[RunnerStatus], now: datetime) -> None:
        if not statuses:
            return
        await self._fetch(
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
        rows = await self._fetch("runner_status", list(names))
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
        return bool(await self._fetch("claim_drain", instance_id, runner, reason, now))

    async def draining(self) -> dict[str, str]:
        return {r["instance_id"]: r["runner"] for r in await self._fetch("draining")}

    async def forget_drains(self, instance_ids: Sequence[str]) -> None:
        if instance_ids:
            await self._fetch("forget_drains", list(instance_ids))

    async def expire_leases_of(self, instance_ids: Sequence[str], now: datetime) -> int:
        if not instance_ids:
            return 0
        (row,) = await self._fetch("expire_leases_of", list(instance_ids), now)
        count: int = row["n"]
        return count

    async def notify_tick(self, at: datetime | None = None) -> None:
        """Tell the timekeeper, wherever it runs, of a deadline at ``at`` (None: now)."""
        await self._fetch("notify", [TICK_CHANNEL], [at.isoformat() if at else ""])
