"""A runner process built on heat_runtime with a no-op processor, for the benchmarks.

Configured like any runner (HEAT_SCHEDULER_ADDRESS, HEAT_RUNNER, HEAT_RUNNER_CREDENTIAL,
HEAT_CAPACITY, HEAT_INSTANCE_ID). It prints ``ready`` once imported and waits for a ``go``
line on stdin before connecting, so a harness can let many processes go at the same moment.

With HEAT_BENCH_RECORD set, each process() call appends ``<session>\\t<node key>\\t<time.time()>``
(taken as process() starts) to that file, written when the process exits.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from heat_runtime import Runtime, current_task


class NoOp:
    TEMPLATE_NAME = "noop"

    def __init__(self, record: list[tuple[str, str, float]] | None) -> None:
        self._record = record

    async def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> None:
        return None

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        if self._record is not None:
            now = time.time()
            task = current_task()
            self._record.append((task.session, task.node_key, now))
        return None


def main() -> None:
    path = os.environ.get("HEAT_BENCH_RECORD")
    record: list[tuple[str, str, float]] | None = [] if path else None
    runtime = Runtime.from_env()
    runtime.register(NoOp(record))
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    try:
        runtime.run()
    finally:
        if path and record is not None:
            with open(path, "w") as out:  # noqa: PTH123
                out.writelines(f"{s}\t{k}\t{t:.6f}\n" for s, k, t in record)


if __name__ == "__main__":
    main()
