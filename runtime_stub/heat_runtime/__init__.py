"""The HEAT runner runtime: serve processors of Node Templates to heat-scheduler.

A processor is a class with ``TEMPLATE_NAME`` and two async hooks::

    from typing import Any

    from heat_runtime import PermanentError, Runtime


    class CsvColumnSum:
        TEMPLATE_NAME = "csv-column-sum"

        async def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> None:
            ...  # raise (or return False) to reject the task: it fails permanently

        async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
            ...  # return JSON-able outputs; raise PermanentError for a failure not worth a retry


    runtime = Runtime.from_env()  # HEAT_SCHEDULER_ADDRESS, HEAT_RUNNER, HEAT_RUNNER_CREDENTIAL, ...
    runtime.register(CsvColumnSum())
    runtime.run()  # blocks; returns after a drain (SIGTERM, SIGINT, or the scheduler's request)

The runtime claims tasks on the scheduler's RunnerService (never more than HEAT_CAPACITY at
once), heartbeats while they run, posts each outcome until it is acknowledged, reconnects with
backoff when the scheduler is away, and on a drain stops claiming, lets held tasks finish within
HEAT_DRAIN_TIMEOUT and hands back the rest. ``current_task()`` tells a hook which attempt it runs.
"""

from heat_runtime._config import RuntimeConfig
from heat_runtime._context import TaskInfo, current_task
from heat_runtime._errors import ConfigError, PermanentError
from heat_runtime._processing import Processor
from heat_runtime._runtime import Runtime
from heat_runtime._version import VERSION

__all__ = [
    "ConfigError",
    "PermanentError",
    "Processor",
    "Runtime",
    "RuntimeConfig",
    "TaskInfo",
    "current_task",
]

__version__ = VERSION
