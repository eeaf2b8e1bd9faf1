"""A replica that only leads one duty, in a process of its own, for a test to kill.

Usage: python -m tests.integration.leader_process DSN NAME LEASE_S RENEW_S
Prints ``leading EPOCH`` once it holds the timekeeper's duty, then waits for its end.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from scheduler.domain.leadership import Duty, LeaseSettings
from scheduler.store.leadership import LeaseLeadership


async def main(dsn: str, name: str, lease: float, renew: float) -> None:
    settings = LeaseSettings(timedelta(seconds=lease), timedelta(seconds=renew))
    async with LeaseLeadership(dsn, name, settings).lead(Duty.TIMEKEEPER) as term:
        print(f"leading {term.epoch}", flush=True)
        await term.lost.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
