"""A task's inputs as the hooks see them.

Every input is an upstream node's JSON outputs (keyed by its node key) or a file given to the
node (keyed by input name), carried in the task as plain values where files, anywhere in them,
are references to artefacts. ``resolve_inputs`` fetches each reference through ``files`` and
hands the hooks ``bytes`` (small files) or a binary file object (large ones, spooled to disk),
the two shapes HEAT's processors accept (``_files``). It is awaited inside the attempt: under
its deadline, stopped by a cancellation, and a failure to fetch fails the attempt as
retryable. The testing kit hands the hooks bytes and file objects directly.
"""

from __future__ import annotations

from typing import Any

from heat.scheduler.v1 import runner_service_pb2 as pb

from heat_runtime._files import Files, resolve
from heat_runtime._values import to_python

__all__ = ["resolve_inputs"]


async def resolve_inputs(task: pb.Task, files: Files | None = None) -> dict[str, Any]:
    """The task's inputs keyed by upstream node key (or input name), as plain values, with
    files as bytes or binary file objects."""
    return {key: await resolve(to_python(value), files) for key, value in task.inputs.items()}
