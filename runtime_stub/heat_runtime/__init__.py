"""The HEAT runner runtime: serve processors of Node Templates to heat-scheduler.

A runner, as HEAT's guide writes it::

    from heat_runtime import BaseProcessor, HeatRuntime


    class SumProcessor(BaseProcessor):
        TEMPLATE_NAME = "generic-sum-csv"  # the Node Template it processes

        async def validate(self, inputs, config):
            await super().validate(inputs, config)  # the checks the runtime can make
            if "file" not in inputs:
                raise ValueError("expected 'file' in inputs")  # rejected: fails permanently

        async def process(self, inputs, config):
            ...  # return JSON-able outputs; raise PermanentError for a failure not worth a retry


    HeatRuntime.register(SumProcessor)  # also a class decorator: @HeatRuntime.register
    HeatRuntime().init()  # HEAT_SCHEDULER_ADDRESS, HEAT_RUNNER, ...; returns after a drain

The runtime claims tasks on the scheduler's RunnerService (never more than HEAT_CAPACITY at
once), heartbeats while they run, posts each outcome until it is acknowledged, reconnects with
backoff when the scheduler is away, and on a drain stops claiming, lets held tasks finish within
HEAT_DRAIN_TIMEOUT and hands back the rest. Hooks written with plain ``def`` run in worker
threads; hooks whose ``inputs``/``config`` are annotated with a dataclass (or a pydantic model)
get them checked and converted. ``current_task()`` tells a hook which attempt it runs.
``heat_runtime.testing`` runs processors in tests. ``Runtime`` is ``HeatRuntime`` by its
earlier name, ``run()`` the same as ``init()``.
"""

from heat_runtime._config import RuntimeConfig
from heat_runtime._context import TaskInfo, current_task
from heat_runtime._errors import ConfigError, PermanentError
from heat_runtime._processing import Processor
from heat_runtime._processor import BaseProcessor
from heat_runtime._runtime import HeatRuntime
from heat_runtime._version import VERSION

Runtime = HeatRuntime

__all__ = [
    "BaseProcessor",
    "ConfigError",
    "HeatRuntime",
    "PermanentError",
    "Processor",
    "Runtime",
    "RuntimeConfig",
    "TaskInfo",
    "current_task",
]

__version__ = VERSION
