"""Running one attempt through a processor's hooks, and the outcome to post for it."""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from heat.scheduler.v1 import runner_service_pb2 as pb

from heat_runtime._errors import PermanentError
from heat_runtime._values import NotJsonable, struct_to_dict, to_python, to_struct, to_value

__all__ = ["Outcome", "Processor", "check_processor", "release", "run_attempt"]

# Bounds of what a failure carries, so a runaway message cannot break the result stream.
_MESSAGE_MAX: Final = 2000
_TRACEBACK_MAX: Final = 4000
_DETAIL_MAX: Final = 500


class Processor(Protocol):
    """A runner author's processor: one Node Template, two async hooks.

    ``validate()`` rejects a task by raising (any exception) or returning False: the task
    fails permanently. ``process()`` returns the node's outputs (JSON-able: dict, list, str,
    number, bool or None); raising ``PermanentError`` fails the task permanently, any other
    exception fails this attempt and lets the scheduler retry. Both get the inputs (upstream
    outputs keyed by upstream node key) and the node's configuration as plain Python values.
    Processing must be idempotent: a task can run more than once.
    """

    @property
    def TEMPLATE_NAME(self) -> str:
        """Name of the Node Template this processor handles."""
        ...

    async def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> bool | None:
        """Check the task before processing; raise or return False to reject it."""
        ...

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        """Do the work; return the outputs."""
        ...


def check_processor(processor: object) -> str:
    """The template name of a registrable processor; TypeError says what is wrong."""
    if isinstance(processor, type):
        raise TypeError(
            f"register an instance of {processor.__name__}, not the class:"
            f" runtime.register({processor.__name__}())"
        )
    name = getattr(processor, "TEMPLATE_NAME", None)
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"{type(processor).__name__} has no TEMPLATE_NAME; give the class"
            ' TEMPLATE_NAME = "<node template name>"'
        )
    for hook in ("validate", "process"):
        if not callable(getattr(processor, hook, None)):
            raise TypeError(
                f"{type(processor).__name__} has no {hook}() method; a processor needs"
                f" async def {hook}(self, inputs, config)"
            )
    return name


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to post for an attempt, and how to log it."""

    request: pb.PostResultRequest
    label: str
    """success, permanent-failure or retryable-failure."""
    message: str = ""
    error: BaseException | None = None
    """An unexpected exception, logged with its traceback."""


def release(attempt_id: str, reason: str) -> pb.PostResultRequest:
    """Hand a task back unprocessed: the scheduler requeues it without using an attempt."""
    return pb.PostResultRequest(attempt_id=attempt_id, release=pb.TaskRelease(reason=reason))


async def run_attempt(
    processor: Processor | None,
    task: pb.Task,
    *,
    known_templates: list[str],
    deadline: float | None,
    max_result_bytes: int,
) -> Outcome:
    """Run validate() then process() for ``task`` and say what to post.

    ``deadline`` is the attempt deadline in event-loop time: passing it cancels the hook and
    fails the attempt as retryable. Cancellation from outside propagates (nothing to post).
    """
    if processor is None:
        return _failure(
            task.attempt_id,
            pb.FAILURE_KIND_PERMANENT,
            f"this runner instance has no processor for node template {task.node_template!r};"
            f" it processes: {', '.join(known_templates) or 'nothing'}",
            {"node_template": task.node_template, "known_templates": known_templates},
        )
    loop = asyncio.get_running_loop()
    started = loop.time()
    inputs = {key: to_python(value) for key, value in task.inputs.items()}
    config = struct_to_dict(task.config)
    hook = "validate"
    try:
        async with asyncio.timeout_at(deadline) as timer:
            try:
                verdict = await _call(processor.validate, inputs, config)
            except Exception as error:
                return _failure(
                    task.attempt_id,
                    pb.FAILURE_KIND_PERMANENT,
                    _text(error),
                    {**_extra(error), "exception": type(error).__name__, "hook": "validate"},
                )
            if verdict is False:
                return _failure(
                    task.attempt_id,
                    pb.FAILURE_KIND_PERMANENT,
                    f"validate() of {task.node_template!r} rejected the task (returned False)",
                    {"hook": "validate"},
                )
            hook = "process"
            try:
                outputs = await _call(processor.process, inputs, config)
            except PermanentError as error:
                return _failure(
                    task.attempt_id,
                    pb.FAILURE_KIND_PERMANENT,
                    _text(error),
                    {**_extra(error), "exception": type(error).__name__, "hook": "process"},
                )
            except Exception as error:
                return _failure(
                    task.attempt_id,
                    pb.FAILURE_KIND_RETRYABLE,
                    _text(error),
                    {
                        "exception": type(error).__name__,
                        "hook": "process",
                        "traceback": _traceback(error),
                    },
                    error=error,
                )
    except TimeoutError:
        if not timer.expired():
            raise
        elapsed = loop.time() - started
        return _failure(
            task.attempt_id,
            pb.FAILURE_KIND_RETRYABLE,
            f"attempt timed out after {elapsed:.1f}s: its attempt deadline passed during {hook}()",
            {"exception": "TimeoutError", "hook": hook, "timeout": True},
        )
    return _success(task.attempt_id, outputs, max_result_bytes)


async def _call(hook: Any, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
    result = hook(inputs, config)
    if inspect.isawaitable(result):
        result = await result
    return result


def _success(attempt_id: str, outputs: Any, max_result_bytes: int) -> Outcome:
    try:
        value = to_value(outputs, "outputs")
    except NotJsonable as error:
        return _failure(
            attempt_id,
            pb.FAILURE_KIND_PERMANENT,
            f"process() returned outputs that are not JSON-able: {error}",
            {"exception": "NotJsonable", "hook": "process", "path": error.path},
        )
    except RecursionError:
        return _failure(
            attempt_id,
            pb.FAILURE_KIND_PERMANENT,
            "process() returned outputs that are not JSON-able: they are nested too deeply",
            {"exception": "RecursionError", "hook": "process"},
        )
    request = pb.PostResultRequest(attempt_id=attempt_id, success=pb.TaskSuccess(outputs=value))
    size = request.ByteSize()
    if size > max_result_bytes:
        return _failure(
            attempt_id,
            pb.FAILURE_KIND_PERMANENT,
            f"process() returned outputs of {size} bytes, more than the {max_result_bytes}"
            " a result may carry; store large data elsewhere and return a reference to it",
            {"hook": "process", "bytes": size, "max_bytes": max_result_bytes},
        )
    return Outcome(request, "success")


def _failure(
    attempt_id: str,
    kind: pb.FailureKind.ValueType,
    message: str,
    details: Mapping[str, Any],
    *,
    error: BaseException | None = None,
) -> Outcome:
    message = _bounded(message, _MESSAGE_MAX)
    try:
        struct = to_struct(details, "details")
    except (NotJsonable, RecursionError):
        # A PermanentError's details that JSON cannot hold: keep what the runtime knows.
        struct = to_struct(
            {k: _bounded(str(v), _DETAIL_MAX) for k, v in details.items() if isinstance(k, str)}
        )
    request = pb.PostResultRequest(
        attempt_id=attempt_id,
        failure=pb.TaskFailure(kind=kind, message=message, details=struct),
    )
    label = "permanent-failure" if kind == pb.FAILURE_KIND_PERMANENT else "retryable-failure"
    return Outcome(request, label, message, error)


def _text(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _extra(error: BaseException) -> dict[str, Any]:
    return dict(error.details) if isinstance(error, PermanentError) else {}


def _traceback(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error))
    # The tail holds the innermost frames and the exception itself: keep it.
    return text if len(text) <= _TRACEBACK_MAX else "..." + text[-_TRACEBACK_MAX:]


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
