"""A task's inputs as the hooks see them.

Today every input is an upstream node's JSON outputs, carried in the task itself, and becomes
plain Python values. This is also where files will come in: when tasks carry references to
stored files (artefacts) instead of values, ``resolve_inputs`` fetches each reference and hands
the hooks ``bytes`` (small files) or a binary file object (large ones, spooled to disk), the two
shapes HEAT's processors accept. It is awaited inside the attempt: under its deadline, stopped
by a cancellation, and a failure to fetch fails the attempt as retryable. The testing kit
hands the hooks bytes and file objects directly, so processors are ready for both shapes.
"""

from __future__ import annotations

from typing import Any

from heat.scheduler.v1 import runner_service_pb2 as pb

from heat_runtime._values import to_python

__all__ = ["resolve_inputs"]


async def resolve_inputs(task: pb.Task) -> dict[str, Any]:
    """The task's inputs keyed by upstream node key (or input name), as plain values."""
    return {key: to_python(value) for key, value in task.inputs.items()}
