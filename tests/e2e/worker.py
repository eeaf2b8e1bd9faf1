"""A runner process for the end-to-end tests, built on heat_runtime like any runner.

Processor ``echo`` returns its inputs and config. Config knobs: ``sleep`` (seconds, in
process()), ``fail_until`` (raise while the attempt number is below it), ``permanent``
(raise PermanentError). Each finished or cancelled process() appends a line to the file
named by HEAT_TEST_LOG: "<event> <session> <node> <attempt> <attempt_id> <instance>".
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from heat_runtime import PermanentError, Runtime, current_task

LOG = Path(os.environ.get("HEAT_TEST_LOG", os.devnull))


def record(event: str) -> None:
    task = current_task()
    line = f"{event} {task.session} {task.node_key} {task.attempt} {task.attempt_id} "
    line += os.environ.get("HEAT_INSTANCE_ID", "?") + "\n"
    with LOG.open("a") as log:
        log.write(line)


class Echo:
    TEMPLATE_NAME = "echo"

    async def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> None:
        if config.get("invalid"):
            raise ValueError("config says invalid")

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        record("started")
        try:
            if config.get("sleep"):
                await asyncio.sleep(float(config["sleep"]))
        except asyncio.CancelledError:
            record("cancelled")
            raise
        attempt = current_task().attempt
        if config.get("permanent"):
            raise PermanentError("permanently broken")
        if attempt < int(config.get("fail_until", 0)):
            record("failed")
            raise RuntimeError(f"flaky failure on attempt {attempt}")
        record("done")
        return {"node": current_task().node_key, "inputs": inputs, "config": config}


if __name__ == "__main__":
    runtime = Runtime.from_env()
    runtime.register(Echo())
    runtime.run()
