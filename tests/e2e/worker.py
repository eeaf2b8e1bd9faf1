"""A runner process for the end-to-end tests, written in HEAT's shape like any runner.

Processor ``echo`` (async hooks) returns its inputs and config. Config knobs: ``sleep``
(seconds, in process()), ``fail_until`` (raise while the attempt number is below it),
``permanent`` (raise PermanentError). Processor ``sync-echo`` does the same with plain-def
hooks, which run in a worker thread; its ``sleep`` ends early when the runtime stops the
attempt. Each start, end or stop of process() appends a line to the file named by
HEAT_TEST_LOG: "<event> <session> <node> <attempt> <attempt_id> <instance>".
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from heat_runtime import BaseProcessor, HeatRuntime, PermanentError, current_task

LOG = Path(os.environ.get("HEAT_TEST_LOG", os.devnull))


def record(event: str) -> None:
    task = current_task()
    line = f"{event} {task.session} {task.node_key} {task.attempt} {task.attempt_id} "
    line += os.environ.get("HEAT_INSTANCE_ID", "?") + "\n"
    with LOG.open("a") as log:
        log.write(line)


def outcome(inputs: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    attempt = current_task().attempt
    if config.get("permanent"):
        raise PermanentError("permanently broken")
    if attempt < int(config.get("fail_until", 0)):
        record("failed")
        raise RuntimeError(f"flaky failure on attempt {attempt}")
    record("done")
    return {"node": current_task().node_key, "inputs": inputs, "config": config}


@HeatRuntime.register
class Echo(BaseProcessor):
    TEMPLATE_NAME = "echo"

    async def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> None:
        await super().validate(inputs, config)
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
        return outcome(inputs, config)


@HeatRuntime.register
class SyncEcho(BaseProcessor):
    TEMPLATE_NAME = "sync-echo"

    def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> None:
        super().validate(inputs, config)

    def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        record("started")
        if config.get("sleep") and current_task().wait_for_stop(float(config["sleep"])):
            record("stopped")
            return None
        return {**outcome(inputs, config), "thread": threading.current_thread().name}


if __name__ == "__main__":
    HeatRuntime().init()
