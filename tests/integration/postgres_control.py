"""A PostgreSQL server the tests can stop and start, run from a process of its own.

(From inside a process that serves gRPC, forking ``pg_ctl`` as another user can crash the
child; this process has no gRPC threads.) It prints the DSN, then answers each line of stdin,
``stop`` or ``start``, with ``ok`` once done; end of input stops the server.
Usage: python -m tests.integration.postgres_control FOLDER
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from scheduler.embedded import EmbeddedPostgres


async def main(folder: Path) -> None:
    loop = asyncio.get_running_loop()
    async with EmbeddedPostgres(folder, durable=False) as postgres:
        print(postgres.dsn, flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = line.strip()
            if command == "stop":
                await postgres.stop()
            elif command == "start":
                await postgres.start()
            print("ok", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
