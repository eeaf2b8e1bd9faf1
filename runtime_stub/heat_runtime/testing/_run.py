"""``run_task``: one attempt of a processor, run as the runtime runs it, with no scheduler."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from heat_runtime._config import DEFAULT_MAX_RESULT_BYTES
from heat_runtime._context import TaskInfo, set_current
from heat_runtime._files import REFERENCE_KEY, FileContent, reference_name
from heat_runtime._hooks import registration
from heat_runtime._processing import Attempt, Outcome, Served, run_attempt
from heat_runtime._threads import HookThreads
from heat_runtime._values import NotJsonable, struct_to_dict, to_python, to_struct, to_value

__all__ = ["TaskFailed", "TaskFailure", "TaskOutcome", "run_task", "run_task_sync"]


@dataclass(frozen=True, slots=True)
class TaskFailure:
    """A failed attempt, as the scheduler would record it."""

    message: str
    retryable: bool
    """False for a permanent failure (validate() rejected the task, PermanentError, a field
    that does not fit a typed hook): the scheduler would not try again."""
    hook: str
    """Where it failed: ``inputs``, ``validate`` or ``process``."""
    details: dict[str, Any] = field(default_factory=dict)
    """The failure's details: ``exception``, ``traceback`` (retryable failures of process()),
    ``field`` (a typed hook's field), a PermanentError's own details."""


class TaskFailed(AssertionError):
    """``TaskOutcome.result()`` of a failed attempt."""

    def __init__(self, failure: TaskFailure) -> None:
        kind = "retryable" if failure.retryable else "permanent"
        text = f"the task failed ({kind}, in {failure.hook}()): {failure.message}"
        trace = failure.details.get("traceback")
        super().__init__(f"{text}\n{trace}" if trace else text)
        self.failure = failure


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What the runtime would post for the attempt."""

    outputs: Any = None
    """The outputs as the scheduler would store them (after their trip through JSON), with
    the files process() returned as ``bytes``; None when the attempt failed."""
    failure: TaskFailure | None = None

    @property
    def succeeded(self) -> bool:
        return self.failure is None

    def result(self) -> Any:
        """The outputs; raises TaskFailed (an AssertionError) saying why the attempt failed."""
        if self.failure is not None:
            raise TaskFailed(self.failure)
        return self.outputs


async def run_task(
    processor: object,
    inputs: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    parameters: Mapping[str, Any] | None = None,
    node_key: str = "node",
    session: str = "sessions/test",
    attempt: int = 1,
    attempt_timeout: float | None = None,
) -> TaskOutcome:
    """Run one attempt of ``processor`` (an instance, or a class to create) as the runtime
    would: its typed hooks' conversions, validate(), then process() (a synchronous hook in a
    worker thread), with ``current_task()`` telling a fake task. Returns what would be posted.

    ``inputs`` are keyed by upstream node key (or input name): JSON-able values go through
    JSON as they would on the wire (a tuple arrives as a list, 3.0 as 3), while ``bytes`` and
    binary file objects (``io.BytesIO``, ``open(path, "rb")``) are handed over as they are,
    as file inputs reach a processor. ``config`` and ``parameters`` go through JSON.
    ``attempt_timeout`` (seconds) plays the attempt deadline a Node Template's
    ``attemptTimeout`` sets. A processor that cannot be registered
    raises TypeError, as ``HeatRuntime.register`` would.
    """
    entry = registration(processor)
    instance = entry.instance()
    plain_config = _through_json(config or {}, "config")
    plain_inputs = {key: _input(key, value) for key, value in (inputs or {}).items()}
    loop = asyncio.get_running_loop()
    deadline, expires = None, None
    if attempt_timeout is not None:
        deadline = loop.time() + attempt_timeout
        expires = datetime.now(UTC) + timedelta(seconds=attempt_timeout)
    info = TaskInfo(
        attempt_id=f"test-{secrets.token_hex(6)}",
        session=session,
        node_key=node_key,
        node_template=entry.plan.template,
        attempt=attempt,
        parameters=_through_json(parameters or {}, "parameters"),
        trace_context={},
        attempt_deadline=expires,
    )

    async def given_inputs() -> dict[str, Any]:
        return plain_inputs

    files = _MemoryFiles()

    async def run() -> Outcome:
        set_current(info)  # this task's own context, as the runtime does per attempt
        return await run_attempt(
            Served(instance, entry.plan),
            Attempt(
                info.attempt_id,
                info.node_template,
                plain_config,
                given_inputs,
                info.stop_event,
                files,
            ),
            known_templates=[entry.plan.template],
            deadline=deadline,
            max_result_bytes=DEFAULT_MAX_RESULT_BYTES,
            threads=threads,
        )

    threads = HookThreads(1, name="heat-test-hook")
    try:
        outcome = await asyncio.create_task(run())
    finally:
        threads.close()
    return _outcome(outcome, files)


def run_task_sync(
    processor: object,
    inputs: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    **options: Any,
) -> TaskOutcome:
    """``run_task`` for a test without an event loop (it runs one of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # as it should be
    else:
        raise RuntimeError("an event loop is running here: use await run_task(...) instead")
    return asyncio.run(run_task(processor, inputs, config, **options))


class _MemoryFiles:
    """Files process() returns, kept in memory as the scheduler would keep them."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}

    async def fetch(self, name: str) -> FileContent:
        return self.stored[name]

    async def store(self, content: bytes | memoryview | IO[bytes], path: str) -> str:
        data = content.read() if not isinstance(content, bytes | memoryview) else content
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"{path} is a file opened in text mode; open it in binary mode")
        name = f"artifacts/{secrets.token_hex(16)}"
        self.stored[name] = bytes(data)
        return name

    def restore(self, value: Any) -> Any:
        """``value`` with references to stored files replaced by their bytes."""
        name = reference_name(value)
        if name is not None and name in self.stored:
            return self.stored[name]
        if isinstance(value, dict):
            return {key: self.restore(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.restore(item) for item in value]
        return value


def _outcome(outcome: Outcome, files: _MemoryFiles) -> TaskOutcome:
    request = outcome.request
    if request.WhichOneof("outcome") == "success":
        return TaskOutcome(outputs=files.restore(to_python(request.success.outputs)))
    details = struct_to_dict(request.failure.details)
    return TaskOutcome(
        failure=TaskFailure(
            message=request.failure.message,
            retryable=outcome.label == "retryable-failure",
            hook=str(details.get("hook", "")),
            details=details,
        )
    )


def _input(key: object, value: Any) -> Any:
    if not isinstance(key, str):
        raise TypeError(f"inputs are keyed by upstream node key (text), not {key!r}")
    return _plain_input(value, f"inputs[{key!r}]")


def _plain_input(value: Any, path: str) -> Any:
    """Files (bytes, file objects) as they are, anywhere; the rest through JSON."""
    if isinstance(value, bytes | bytearray | memoryview) or callable(getattr(value, "read", None)):
        return value
    if isinstance(value, Mapping):
        if REFERENCE_KEY in value:
            raise TypeError(f"{path}: give a file as bytes or a file object, not a reference")
        if all(isinstance(k, str) for k in value):
            return {k: _plain_input(v, f"{path}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_input(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return to_python(_value(value, path))


def _value(value: Any, path: str) -> Any:
    try:
        return to_value(value, path)
    except NotJsonable as error:
        raise TypeError(f"{error}: a task carries JSON") from None


def _through_json(values: Mapping[str, Any], path: str) -> dict[str, Any]:
    try:
        return struct_to_dict(to_struct(values, path))
    except NotJsonable as error:
        raise TypeError(f"{error}: a task carries JSON") from None
