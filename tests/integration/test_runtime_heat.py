"""HEAT's surface of heat_runtime: BaseProcessor and HeatRuntime, synchronous hooks in worker
threads, typed hooks, and the testing kit's run_task.

Runtimes here are subclasses of HeatRuntime, so what a test registers on its class stays
with it (``HeatRuntime.register`` registers for the whole process).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import io
import logging
import threading
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat_runtime import (
    BaseProcessor,
    HeatRuntime,
    PermanentError,
    Runtime,
    RuntimeConfig,
    current_task,
)
from heat_runtime._threads import HookThreads
from heat_runtime._values import to_python
from heat_runtime.testing import TaskFailed, run_task, run_task_sync

from tests.integration.fake_scheduler import TEMPLATE, Server, serving, settings, task

WAIT = 10.0  # seconds a test waits for a thread to reach a point; never reached when all is well


# --- HEAT's surface ----------------------------------------------------------------------------


class Constructed(BaseProcessor):
    """HEAT's shape: async hooks, super().validate() first, created by the runtime."""

    TEMPLATE_NAME = TEMPLATE
    made = 0

    def __init__(self) -> None:
        type(self).made += 1

    async def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> None:
        await super().validate(inputs, config)
        if "file" not in inputs:
            raise ValueError("expected 'file' artefact in inputs")

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        return {"file": inputs["file"], "node": current_task().node_key}


async def test_heat_shaped_processor_registered_on_the_class_is_served(server: Server) -> None:
    class Runner(HeatRuntime):
        pass

    assert Runner.register(Constructed) is Constructed
    runtime = Runner(**settings(server))
    assert runtime.templates == [TEMPLATE] and Constructed.made == 0
    fake = server.fake
    async with serving(runtime):
        fake.push(task("a-1", inputs={"file": {"rows": 3}}))
        fake.push(task("a-2", inputs={"other": 1}))
        await fake.wait_for(lambda: len(fake.results) == 2)
    assert Constructed.made == 1, "the class is created once, when serving starts"
    by_id = {r.attempt_id: r for r in fake.results}
    assert to_python(by_id["a-1"].success.outputs) == {"file": {"rows": 3}, "node": "q1"}
    failure = by_id["a-2"].failure
    assert failure.kind == pb.FAILURE_KIND_PERMANENT
    assert failure.message == "expected 'file' artefact in inputs"


def test_register_is_a_class_decorator_and_per_instance_on_an_instance() -> None:
    class Runner(HeatRuntime):
        pass

    @Runner.register
    class Sum(BaseProcessor):
        TEMPLATE_NAME = "sum"

        async def process(self, inputs: Any, config: Any) -> Any:
            return 0

    class OtherSum(Sum):
        pass

    class Mean(Sum):
        TEMPLATE_NAME = "mean"

    assert Runner.register(Sum) is Sum, "the same class again changes nothing"
    with pytest.raises(ValueError, match=r"'sum' is already registered on Runner \(Sum\)"):
        Runner.register(OtherSum)
    first, second = Runner(runner="r"), Runner(runner="r")
    mean = first.register(Mean())
    assert isinstance(mean, Mean)
    assert first.templates == ["sum", "mean"] and second.templates == ["sum"]
    with pytest.raises(ValueError, match=r"'sum' is already registered on Runner"):
        second.register(OtherSum())
    assert "sum" not in HeatRuntime(runner="r").templates, "a subclass's registry is its own"

    class Derived(Runner):
        pass

    with pytest.raises(ValueError, match=r"'sum' is already registered on Runner \(Sum\)"):
        Derived.register(OtherSum)
    assert Derived.register(Mean) is Mean
    assert Derived(runner="r").templates == ["sum", "mean"], "its bases' first"


def test_heat_runtime_is_configured_from_the_environment() -> None:
    runtime = HeatRuntime(env={"HEAT_RUNNER": "sum-runner", "HEAT_CAPACITY": "3"})
    assert (runtime.config.runner, runtime.config.capacity) == ("sum-runner", 3)
    assert HeatRuntime(env={"HEAT_RUNNER": "a"}, capacity=5).config.capacity == 5
    given = RuntimeConfig(runner="b", capacity=2)
    assert HeatRuntime(given).config is given, "a RuntimeConfig is taken as it is"
    assert Runtime is HeatRuntime and HeatRuntime.run is HeatRuntime.init


async def test_init_inside_an_event_loop_says_to_await_serve() -> None:
    with pytest.raises(RuntimeError, match=r"await runtime.serve\(\)"):
        HeatRuntime(runner="r").init()


class NoTemplate(BaseProcessor):
    async def process(self, inputs: Any, config: Any) -> Any:
        return None


class NoProcess(BaseProcessor):
    TEMPLATE_NAME = "t"


class OneArgument(BaseProcessor):
    TEMPLATE_NAME = "t"

    async def process(self, inputs: Any) -> Any:  # type: ignore[override]
        return None


class Generator(BaseProcessor):
    TEMPLATE_NAME = "t"

    async def process(self, inputs: Any, config: Any) -> Any:
        yield 1


@dataclasses.dataclass
class WithOpaqueField:
    when: datetime.datetime


class OpaqueConfig(BaseProcessor):
    TEMPLATE_NAME = "t"

    async def process(self, inputs: Any, config: WithOpaqueField) -> Any:
        return None


@pytest.mark.parametrize(
    ("processor", "problem"),
    [
        (NoTemplate, "NoTemplate has no TEMPLATE_NAME"),
        (NoProcess, "NoProcess does not define process()"),
        (OneArgument, r"OneArgument.process\(\) must take the two arguments \(inputs, config\)"),
        (Generator, r"Generator.process\(\) is a generator"),
        (
            OpaqueConfig,
            "field 'when' of WithOpaqueField: datetime is not a type the runtime can check",
        ),
        (object(), "object has no TEMPLATE_NAME"),
    ],
)
def test_register_refuses_what_it_could_not_serve(processor: object, problem: str) -> None:
    with pytest.raises(TypeError, match=problem):
        HeatRuntime.register(processor)
    assert "t" not in HeatRuntime(runner="r").templates


async def test_a_class_that_cannot_be_created_is_named() -> None:
    class NeedsArguments(BaseProcessor):
        TEMPLATE_NAME = "t"

        def __init__(self, path: str) -> None:
            self.path = path

        async def process(self, inputs: Any, config: Any) -> Any:
            return None

    with pytest.raises(TypeError, match=r"cannot create NeedsArguments\(\) to serve 't'"):
        await run_task(NeedsArguments)
    assert (await run_task(NeedsArguments("/data"))).succeeded


# --- the default validate() --------------------------------------------------------------------


class NeedsFile(BaseProcessor):
    TEMPLATE_NAME = "needs-file"
    REQUIRED_INPUTS = ("file", "lookup")

    async def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> None:
        await super().validate(inputs, config)
        header = inputs["file"].readline() if hasattr(inputs["file"], "read") else b""
        if header and not header.startswith(b"speed"):
            raise PermanentError(f"unexpected header {header!r}")

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        data = inputs["file"].read() if hasattr(inputs["file"], "read") else inputs["file"]
        return {"bytes": len(data), "lookup": inputs["lookup"]}


class SyncNeedsFile(BaseProcessor):
    TEMPLATE_NAME = "needs-file"
    REQUIRED_INPUTS = ("file", "lookup")

    def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> None:
        super().validate(inputs, config)  # raises at once: no await needed

    def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        return {"thread": threading.current_thread().name}


async def test_the_default_validate_checks_required_inputs_and_files() -> None:
    data = b"speed,altitude\n1,2\n"
    done = await run_task(NeedsFile, inputs={"file": io.BytesIO(data), "lookup": {"k": 1}})
    assert done.result() == {"bytes": len(data), "lookup": {"k": 1}}, "process() reads it all"
    missing = await run_task(NeedsFile, inputs={"file": data, "lookup": None})
    assert missing.failure is not None and not missing.failure.retryable
    assert missing.failure.message == "needs-file needs the input 'lookup'; the task has 'file'"
    assert missing.failure.details["missing_inputs"] == ["lookup"]
    closed = io.BytesIO(data)
    closed.close()
    shut = await run_task(NeedsFile, inputs={"file": closed, "lookup": 1})
    assert shut.failure is not None and "the file of input 'file' is closed" in shut.failure.message
    for processor in (NeedsFile, SyncNeedsFile):
        nothing = await run_task(processor, inputs={})
        assert nothing.failure is not None
        assert nothing.failure.details["missing_inputs"] == ["file", "lookup"]
        assert nothing.failure.hook == "validate"
    threaded = await run_task(SyncNeedsFile, inputs={"file": data, "lookup": 1})
    assert threaded.result()["thread"].startswith("heat-test-hook")


# --- synchronous hooks -------------------------------------------------------------------------


class Blocking(BaseProcessor):
    """Plain-def hooks that block their thread until the test lets them go."""

    TEMPLATE_NAME = TEMPLATE

    def __init__(self) -> None:
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.stopped = threading.Event()
        self.returned = threading.Event()

    def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        self.started.release()
        try:
            if config.get("cooperative") and current_task().wait_for_stop(WAIT):
                self.stopped.set()
            self.release.wait(WAIT)
            return {"thread": threading.current_thread().name, "node": current_task().node_key}
        finally:
            self.returned.set()


async def acquire(semaphore: threading.Semaphore, count: int) -> None:
    for _ in range(count):
        assert await asyncio.to_thread(semaphore.acquire, True, WAIT)


async def test_sync_hooks_run_in_threads_while_heartbeats_go_on(server: Server) -> None:
    fake = server.fake
    runtime = HeatRuntime(RuntimeConfig(**settings(server)))  # capacity 2
    blocking = runtime.register(Blocking())
    async with serving(runtime):
        fake.push(task("a-1"))
        fake.push(task("a-2"))
        await acquire(blocking.started, 2)  # both run at once, each on its own thread
        seen = len(fake.heartbeats)
        await fake.wait_for(
            lambda: sum(set(h.attempt_ids) == {"a-1", "a-2"} for h in fake.heartbeats[seen:]) >= 3
        )
        blocking.release.set()
        await fake.wait_for(lambda: len(fake.results) == 2)
    threads = {to_python(r.success.outputs)["thread"] for r in fake.results}
    assert threads == {"heat-hook-0", "heat-hook-1"}


async def test_a_cancelled_sync_hook_is_asked_to_stop_and_keeps_its_slot_until_it_returns(
    server: Server,
) -> None:
    fake = server.fake
    runtime = HeatRuntime(RuntimeConfig(**settings(server)), capacity=1)
    blocking = runtime.register(Blocking())
    async with serving(runtime):
        fake.push(task("a-1", {"cooperative": True}))
        await acquire(blocking.started, 1)
        fake.send_heartbeat(
            pb.HeartbeatResponse(cancellations=[pb.TaskCancellation(attempt_id="a-1")])
        )
        assert await asyncio.to_thread(blocking.stopped.wait, WAIT), "stop_requested() is set"
        seen = len(fake.heartbeats)
        await fake.wait_for(lambda: len(fake.heartbeats) > seen + 2)
        assert all("a-1" not in h.attempt_ids for h in fake.heartbeats[seen + 1 :])
        assert fake.grants == [], "the thread still runs: its slot is not offered again"
        blocking.release.set()
        await fake.wait_for(lambda: fake.grants == [1])
    assert fake.results == [], "a cancelled task's result is discarded"


async def test_a_drain_hands_back_a_sync_hook_and_does_not_wait_for_its_thread(
    server: Server,
) -> None:
    fake = server.fake
    runtime = HeatRuntime(RuntimeConfig(**settings(server)), capacity=1, drain_timeout=0.2)
    blocking = runtime.register(Blocking())
    try:
        async with serving(runtime) as served:
            fake.push(task("a-1"))
            await acquire(blocking.started, 1)
            runtime.drain("test")
            assert await asyncio.wait_for(served, WAIT) == 0
        assert not blocking.returned.is_set(), "serve() returned while the hook still ran"
        assert [r.WhichOneof("outcome") for r in fake.results] == ["release"]
    finally:
        blocking.release.set()


async def test_a_sync_hook_past_its_attempt_deadline_is_asked_to_stop() -> None:
    blocking = Blocking()
    blocking.release.set()
    outcome = await run_task(blocking, config={"cooperative": True}, attempt_timeout=0.2)
    assert blocking.stopped.is_set()
    assert outcome.failure is not None and outcome.failure.retryable
    assert "its attempt deadline passed during process()" in outcome.failure.message


async def test_hook_threads_are_bounded_and_reused() -> None:
    threads = HookThreads(2)
    names = await asyncio.gather(
        *(threads.call(None, lambda: threading.current_thread().name) for _ in range(20))
    )
    threads.close()
    assert set(names) <= {"heat-hook-0", "heat-hook-1"}
    with pytest.raises(ZeroDivisionError):
        await HookThreads(1).call(None, lambda: 1 / 0)


# --- typed hooks -------------------------------------------------------------------------------


@dataclasses.dataclass
class Window:
    start: int
    end: int = 10


@dataclasses.dataclass
class SumConfig:
    column: str
    threshold: float = 0.0
    mode: Literal["sum", "mean"] = "sum"
    windows: list[Window] = dataclasses.field(default_factory=list)
    labels: dict[str, str] | None = None


@dataclasses.dataclass
class FileInputs:
    file: bytes


class Typed(BaseProcessor):
    TEMPLATE_NAME = "typed"
    calls: list[str] = []  # noqa: RUF012 - the test reads it

    async def validate(self, inputs: FileInputs, config: SumConfig) -> None:
        await super().validate(inputs, config)
        self.calls.append("validate")

    def process(self, inputs: FileInputs, config: SumConfig) -> Any:
        self.calls.append("process")
        return {
            "bytes": len(inputs.file),
            "threshold": config.threshold,
            "threshold_type": type(config.threshold).__name__,
            "ends": [window.end for window in config.windows],
            "config": type(config).__name__,
        }


async def test_typed_hooks_get_their_dataclasses() -> None:
    config = {"column": "speed", "threshold": 2, "windows": [{"start": 1}, {"start": 5, "end": 7}]}
    outcome = await run_task(Typed, {"file": io.BytesIO(b"abc")}, config)
    assert outcome.result() == {
        "bytes": 3,
        "threshold": 2,
        "threshold_type": "float",
        "ends": [10, 7],
        "config": "SumConfig",
    }


FILE = {"file": b"abc"}


@pytest.mark.parametrize(
    ("inputs", "config", "field", "problem"),
    [
        (FILE, {"column": 3}, "config.column", "expected text, got 3 (int)"),
        (FILE, {}, "config.column", "is required by SumConfig"),
        (
            FILE,
            {"column": "a", "treshold": 1},
            "config.treshold",
            "is not a field of SumConfig (its fields: column, threshold, mode, windows, labels)",
        ),
        (FILE, {"column": "a", "mode": "max"}, "config.mode", "expected one of 'sum', 'mean'"),
        (
            FILE,
            {"column": "a", "windows": [{"start": 1}, {"start": "x"}]},
            "config.windows[1].start",
            "expected a whole number, got 'x' (str)",
        ),
        (
            FILE,
            {"column": "a", "labels": {"k": 1}},
            "config.labels.k",
            "expected text, got 1 (int)",
        ),
        ({"file": "text"}, {"column": "a"}, "inputs.file", "expected bytes or a binary file"),
        ({}, {"column": "a"}, "inputs.file", "is required by FileInputs"),
    ],
)
async def test_a_field_that_does_not_fit_fails_the_task_permanently_before_validate(
    inputs: dict[str, Any], config: dict[str, Any], field: str, problem: str
) -> None:
    Typed.calls.clear()
    outcome = await run_task(Typed, inputs, config)
    failure = outcome.failure
    assert failure is not None and not failure.retryable
    assert failure.message.startswith(f"typed: {field}: "), failure.message
    assert problem in failure.message
    assert failure.details["field"] == field and failure.hook == "validate"
    assert Typed.calls == [], "neither hook ran"


class Limits(pydantic.BaseModel):
    low: float
    high: float = 100.0


class Modelled(BaseProcessor):
    TEMPLATE_NAME = "modelled"

    async def process(self, inputs: dict[str, Any], config: Limits) -> Any:
        return {"span": config.high - config.low, "type": type(config).__name__}


async def test_typed_hooks_take_pydantic_models() -> None:
    assert (await run_task(Modelled, config={"low": 40})).result() == {"span": 60, "type": "Limits"}
    outcome = await run_task(Modelled, config={"low": "cold"})
    assert outcome.failure is not None and not outcome.failure.retryable
    assert outcome.failure.message.startswith("modelled: config.low: Input should be a valid")


class Unresolvable(BaseProcessor):
    TEMPLATE_NAME = "unresolvable"

    async def process(self, inputs: Any, config: NoSuchType) -> Any:  # type: ignore[name-defined]  # noqa: F821
        return {"config": config}


async def test_an_annotation_that_cannot_be_resolved_means_plain_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="heat_runtime"):
        outcome = await run_task(Unresolvable, config={"a": 1})
    assert outcome.result() == {"config": {"a": 1}}
    assert "cannot resolve the annotation 'NoSuchType' of Unresolvable.process(config)" in (
        caplog.text
    )


# --- the testing kit ---------------------------------------------------------------------------


class Reporter(BaseProcessor):
    TEMPLATE_NAME = "reporter"

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        task = current_task()
        if config.get("fail"):
            raise KeyError("boom")
        return {
            "inputs": {k: type(v).__name__ for k, v in inputs.items()},
            "n": inputs.get("n"),
            "config": config,
            "task": [task.node_key, task.node_template, task.attempt, dict(task.parameters)],
        }


async def test_run_task_hands_inputs_over_as_the_wire_would() -> None:
    with Path(__file__).open("rb") as file:  # noqa: ASYNC230 - a file input, not the test's I/O
        outcome = await run_task(
            Reporter,
            inputs={"n": (1, 2.0), "raw": b"x", "file": file},
            config={"weight": 3.0},
            parameters={"quarter": 1},
            node_key="sum",
            attempt=2,
        )
    assert outcome.result() == {
        "inputs": {"n": "list", "raw": "bytes", "file": "BufferedReader"},
        "n": [1, 2],
        "config": {"weight": 3},
        "task": ["sum", "reporter", 2, {"quarter": 1}],
    }
    failed = await run_task(Reporter, config={"fail": True})
    with pytest.raises(TaskFailed, match=r"(?s)retryable, in process\(\)\): 'boom'\n.*KeyError"):
        failed.result()
    with pytest.raises(TypeError, match=r"config\['when'\] is a Event"):
        await run_task(Reporter, config={"when": asyncio.Event()})
    with pytest.raises(RuntimeError, match="await run_task"):
        run_task_sync(Reporter)


def test_run_task_sync_runs_without_an_event_loop() -> None:
    outcome = run_task_sync(Reporter, {"n": 1})
    assert outcome.succeeded and outcome.result()["n"] == 1
