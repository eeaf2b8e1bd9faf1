"""Running one attempt through a processor's hooks, and the outcome to post for it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from heat.scheduler.v1 import runner_service_pb2 as pb

from heat_runtime._errors import PermanentError
from heat_runtime._files import Files, store
from heat_runtime._hooks import Hook, Plan
from heat_runtime._telemetry import NO_TRACING, Tracing
from heat_runtime._threads import HookThreads
from heat_runtime._typed import Converter, FieldError
from heat_runtime._values import NotJsonable, to_struct, to_value

__all__ = ["Attempt", "Outcome", "Processor", "Served", "release", "run_attempt"]

# Bounds of what a failure carries, so a runaway message cannot break the result stream.
_MESSAGE_MAX: Final = 2000
_TRACEBACK_MAX: Final = 4000
_DETAIL_MAX: Final = 500


class Processor(Protocol):
    """What the runtime serves: ``TEMPLATE_NAME`` and two hooks (see ``BaseProcessor``, the
    base class HEAT's processors derive from; any class of this shape will do)."""

    @property
    def TEMPLATE_NAME(self) -> str:
        """Name of the Node Template this processor handles."""
        ...

    def validate(self, inputs: Any, config: Any, /) -> Any:
        """Check the task before processing; raise or return False to reject it."""
        ...

    def process(self, inputs: Any, config: Any, /) -> Any:
        """Do the work; return the outputs."""
        ...


@dataclass(frozen=True, slots=True)
class Served:
    """A processor instance being served, and how to call it."""

    processor: Any
    plan: Plan


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt to run, as the hooks will see it."""

    attempt_id: str
    node_template: str
    config: dict[str, Any]
    inputs: Callable[[], Awaitable[dict[str, Any]]]
    """Resolves the inputs (see ``_inputs``); awaited under the attempt deadline."""
    stop: threading.Event | None = None
    """Set when the attempt is stopped; what ``current_task().stop_requested()`` reads."""
    files: Files | None = None
    """Where files that process() returns are stored (None: nowhere; returning one fails)."""


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
    served: Served | None,
    attempt: Attempt,
    *,
    known_templates: list[str],
    deadline: float | None,
    max_result_bytes: int,
    threads: HookThreads,
    tracing: Tracing = NO_TRACING,
) -> Outcome:
    """Resolve the inputs, convert them to the types the hooks declare, run validate() then
    process(), and say what to post.

    ``deadline`` is the attempt deadline in event-loop time: passing it cancels the hook and
    fails the attempt as retryable. Cancellation from outside propagates (nothing to post).
    """
    attempt_id = attempt.attempt_id
    if served is None:
        return _failure(
            attempt_id,
            pb.FAILURE_KIND_PERMANENT,
            f"this runner instance has no processor for node template"
            f" {attempt.node_template!r}; it processes: {', '.join(known_templates) or 'nothing'}",
            {"node_template": attempt.node_template, "known_templates": known_templates},
        )
    loop = asyncio.get_running_loop()
    started = loop.time()
    plan, processor = served.plan, served.processor
    stage = "inputs"
    try:
        async with asyncio.timeout_at(deadline) as timer:
            try:
                inputs = await attempt.inputs()
            except Exception as error:
                return _failure(
                    attempt_id,
                    pb.FAILURE_KIND_RETRYABLE,
                    f"could not get the task's inputs: {_text(error)}",
                    {"exception": type(error).__name__, "hook": "inputs"},
                    error=error,
                )
            stage = "validate"
            try:
                arguments = _Arguments(inputs, attempt.config, (plan.validate, plan.process))
            except FieldError as error:
                return _failure(
                    attempt_id,
                    pb.FAILURE_KIND_PERMANENT,
                    f"{plan.template}: {error}",
                    {"exception": "FieldError", "hook": "validate", "field": error.path},
                )
            except Exception as error:  # e.g. reading a file input into a bytes field
                return _failure(
                    attempt_id,
                    pb.FAILURE_KIND_RETRYABLE,
                    f"could not convert the task's inputs and config: {_text(error)}",
                    {"exception": type(error).__name__, "hook": "validate"},
                    error=error,
                )
            try:
                with tracing.hook("validate"):
                    verdict = await _call(
                        processor.validate, plan.validate, arguments, threads, attempt.stop
                    )
            except Exception as error:
                return _failure(
                    attempt_id,
                    pb.FAILURE_KIND_PERMANENT,
                    _text(error),
                    {**_extra(error), "exception": type(error).__name__, "hook": "validate"},
                )
            if verdict is False:
                return _failure(
                    attempt_id,
                    pb.FAILURE_KIND_PERMANENT,
                    f"validate() of {attempt.node_template!r} rejected the task (returned False)",
                    {"hook": "validate"},
                )
            stage = "process"
            arguments.rewind()
            try:
                with tracing.hook("process"):
                    outputs = await _call(
                        processor.process, plan.process, arguments, threads, attempt.stop
                    )
            except PermanentError as error:
                return _failure(
                    attempt_id,
                    pb.FAILURE_KIND_PERMANENT,
                    _text(error),
                    {**_extra(error), "exception": type(error).__name__, "hook": "process"},
                )
            except Exception as error:
                return _failure(
                    attempt_id,
                    pb.FAILURE_KIND_RETRYABLE,
                    _text(error),
                    {
                        "exception": type(error).__name__,
                        "hook": "process",
                        "traceback": _traceback(error),
                    },
                    error=error,
                )
            stage = "outputs"
            try:
                outputs = await store(outputs, attempt.files)
            except NotJsonable as error:
                return _failure(
                    attempt_id,
                    pb.FAILURE_KIND_PERMANENT,
                    f"process() returned outputs that are not JSON-able: {error}",
                    {"exception": "NotJsonable", "hook": "process", "path": error.path},
                )
            except RecursionError:
                pass  # _success says it
            except Exception as error:
                return _failure(
                    attempt_id,
                    pb.FAILURE_KIND_RETRYABLE,
                    f"could not store the files process() returned: {_text(error)}",
                    {"exception": type(error).__name__, "hook": "process"},
                    error=error,
                )
    except TimeoutError:
        if not timer.expired():
            raise
        elapsed = loop.time() - started
        where = {
            "inputs": "while its inputs were fetched",
            "outputs": "while the files it returned were stored",
        }.get(stage, f"during {stage}()")
        return _failure(
            attempt_id,
            pb.FAILURE_KIND_RETRYABLE,
            f"attempt timed out after {elapsed:.1f}s: its attempt deadline passed {where}",
            {"exception": "TimeoutError", "hook": stage, "timeout": True},
        )
    return _success(attempt_id, outputs, max_result_bytes)


class _Arguments:
    """The inputs and config each hook gets: converted once per declared type, before
    validate() runs, so a field that does not fit fails the task before any hook."""

    def __init__(self, inputs: dict[str, Any], config: dict[str, Any], hooks: tuple[Hook, ...]):
        self._plain = (inputs, config)
        self._converted: dict[tuple[int, Converter], Any] = {}
        for hook in hooks:
            self._convert(0, hook.inputs, "inputs")
            self._convert(1, hook.config, "config")
        # Where each file input starts, to hand process() the whole file again.
        self._files: list[tuple[Any, int]] = []
        for value in inputs.values():
            if callable(getattr(value, "seek", None)) and _seekable(value):
                with contextlib.suppress(OSError, ValueError):
                    self._files.append((value, value.tell()))

    def _convert(self, index: int, convert: Converter | None, root: str) -> None:
        if convert is not None and (index, convert) not in self._converted:
            self._converted[index, convert] = convert(self._plain[index], root)

    def of(self, hook: Hook) -> tuple[Any, Any]:
        inputs, config = self._plain
        if hook.inputs is not None:
            inputs = self._converted[0, hook.inputs]
        if hook.config is not None:
            config = self._converted[1, hook.config]
        return inputs, config

    def rewind(self) -> None:
        """Put file inputs back where they started (validate() may have read them)."""
        for file, position in self._files:
            if not getattr(file, "closed", False):
                file.seek(position)


def _seekable(file: Any) -> bool:
    seekable = getattr(file, "seekable", None)
    try:
        return bool(seekable()) if callable(seekable) else False
    except (OSError, ValueError):
        return False


async def _call(
    method: Callable[[Any, Any], Any],
    hook: Hook,
    arguments: _Arguments,
    threads: HookThreads,
    stop: threading.Event | None,
) -> Any:
    inputs, config = arguments.of(hook)
    try:
        if hook.mode == "sync":
            result = await threads.call(stop, method, inputs, config)
        else:
            result = method(inputs, config)
        if isinstance(result, Awaitable):
            result = await result
    except asyncio.CancelledError:
        if stop is not None:
            stop.set()
        raise
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
