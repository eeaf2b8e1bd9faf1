"""Testing runners.

Without a scheduler, ``run_task`` runs a processor's hooks as the runtime would (typed hooks'
checks, validate(), process(), synchronous hooks in a thread, ``current_task()`` answering with
a fake task) and returns what would be posted::

    from heat_runtime.testing import run_task

    async def test_sums_every_numeric_column():
        outcome = await run_task(SumProcessor, inputs={"file": b"speed,city\\n1.5,Oslo\\n"})
        assert outcome.result() == {"speed": 1.5, "city": None}

End to end, the pytest fixture ``heat_scheduler`` (this package's pytest plugin; it needs
``pip install 'heat-runtime[testing]'``) serves a real scheduler on an embedded PostgreSQL in
the test process; see ``HeatScheduler``.
"""

from heat_runtime.testing._run import TaskFailed, TaskFailure, TaskOutcome, run_task, run_task_sync
from heat_runtime.testing._scheduler import HeatScheduler, NodeResult, SessionResult

__all__ = [
    "HeatScheduler",
    "NodeResult",
    "SessionResult",
    "TaskFailed",
    "TaskFailure",
    "TaskOutcome",
    "run_task",
    "run_task_sync",
]
