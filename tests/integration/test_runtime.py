"""heat_runtime against a fake RunnerService (fake_scheduler.py): a real grpc.aio server on
loopback, a real channel."""

from __future__ import annotations

import asyncio
import fractions
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy
import pytest
from google.protobuf import struct_pb2
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat_runtime import (
    ConfigError,
    PermanentError,
    Runtime,
    RuntimeConfig,
    TaskInfo,
    current_task,
)
from heat_runtime._config import RuntimeSettings
from heat_runtime._values import NotJsonable, struct_to_dict, to_python, to_value

from tests.integration.fake_scheduler import (
    SECRET,
    TEMPLATE,
    FakeScheduler,
    Server,
    serving,
    task,
    timestamp_in,
)
from tests.integration.fake_scheduler import settings as settings_of

ROOT = Path(__file__).resolve().parents[2]

# --- a processor that does what the task's config says -----------------------------------------


class Probe:
    TEMPLATE_NAME = TEMPLATE

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    async def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> bool | None:
        if "reject" in config:
            raise ValueError(config["reject"])
        return False if config.get("falsy") else None

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        self.seen.append((inputs, config))
        self.started.set()
        mode = config.get("mode", "echo")
        try:
            if mode == "block":
                await asyncio.Event().wait()
            if mode == "sleep":
                await asyncio.sleep(config["seconds"])
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        if mode == "fail":
            raise KeyError("boom")
        if mode == "permanent":
            raise PermanentError("row 3 is not a number", details={"row": 3})
        if mode == "opaque":
            return {"when": datetime.now(UTC)}
        task = current_task()
        return {
            "inputs": inputs,
            "types": {key: type(value["n"]).__name__ for key, value in inputs.items()},
            "config": config,
            "task": {
                "attempt_id": task.attempt_id,
                "session": task.session,
                "node_key": task.node_key,
                "attempt": task.attempt,
                "parameters": dict(task.parameters),
                "trace_context": dict(task.trace_context),
            },
        }


def make_runtime(server: Server, **settings: Any) -> tuple[Runtime, Probe]:
    runtime = Runtime(RuntimeConfig(**settings_of(server)), **settings)
    probe = Probe()
    runtime.register(probe)
    return runtime, probe


# --- the protocol ------------------------------------------------------------------------------


async def test_claim_start_credentials_and_idle_heartbeats(server: Server) -> None:
    fake = server.fake
    runtime, _ = make_runtime(server, capacity=3)
    async with serving(runtime):
        await fake.wait_for(lambda: len(fake.starts) == 1 and len(fake.heartbeats) >= 3)
        start = fake.starts[0]
        assert start.runner == "csv-runner"
        assert start.instance_id == "runner-0"
        assert start.credits == 3
        assert list(start.node_templates) == [TEMPLATE]
        assert start.runtime_version
        # Heartbeats flow with nothing held: the scheduler keeps liveness in memory.
        assert {h.instance_id for h in fake.heartbeats} == {"runner-0"}
        assert all(not h.attempt_ids for h in fake.heartbeats)
        for stream in ("ClaimTask", "Heartbeat", "PostResult"):
            assert fake.metadata[stream][0]["authorization"] == f"Bearer {SECRET}"
            assert fake.metadata[stream][0]["user-agent"].startswith("heat-runtime/")


async def test_a_task_is_processed_its_outputs_posted_then_its_credit_granted(
    server: Server,
) -> None:
    fake = server.fake
    runtime, probe = make_runtime(server, capacity=1)
    async with serving(runtime):
        fake.push(
            task(
                config={"mode": "sleep", "seconds": 0.3, "weights": [1.0, 2.5]},
                inputs={"up": {"n": 3.0, "tags": ["a"]}, "down": {"n": 2.5}},
            )
        )
        # Held work is listed in the heartbeats.
        await fake.wait_for(lambda: any("a-1" in h.attempt_ids for h in fake.heartbeats))
        await fake.wait_for(lambda: len(fake.results) == 1 and fake.grants == [1])
        result = fake.results[0]
        assert result.attempt_id == "a-1" and result.WhichOneof("outcome") == "success"
        outputs = to_python(result.success.outputs)
        assert outputs["inputs"] == {"up": {"n": 3, "tags": ["a"]}, "down": {"n": 2.5}}
        assert outputs["types"] == {"up": "int", "down": "float"}
        assert outputs["config"] == {"mode": "sleep", "seconds": 0.3, "weights": [1, 2.5]}
        assert outputs["task"] == {
            "attempt_id": "a-1",
            "session": "sessions/s-1",
            "node_key": "q1",
            "attempt": 1,
            "parameters": {"quarter": 1, "label": "Q1"},
            "trace_context": {
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            },
        }
        assert probe.seen[0][0]["up"]["n"] == 3 and type(probe.seen[0][0]["up"]["n"]) is int
        # Capacity 1: the start offered one credit, the finished task granted it back.
        assert fake.starts[0].credits == 1


def _details(result: pb.PostResultRequest) -> dict[str, Any]:
    return struct_to_dict(result.failure.details)


FAILURES = [
    pytest.param(
        {"reject": "column 'amount' is missing"},
        TEMPLATE,
        None,
        pb.FAILURE_KIND_PERMANENT,
        "column 'amount' is missing",
        {"exception": "ValueError", "hook": "validate"},
        id="validate-raises",
    ),
    pytest.param(
        {"falsy": True},
        TEMPLATE,
        None,
        pb.FAILURE_KIND_PERMANENT,
        "rejected the task",
        {"hook": "validate"},
        id="validate-returns-false",
    ),
    pytest.param(
        {"mode": "fail"},
        TEMPLATE,
        None,
        pb.FAILURE_KIND_RETRYABLE,
        "'boom'",
        {"exception": "KeyError", "hook": "process"},
        id="process-raises",
    ),
    pytest.param(
        {"mode": "permanent"},
        TEMPLATE,
        None,
        pb.FAILURE_KIND_PERMANENT,
        "row 3 is not a number",
        {"exception": "PermanentError", "hook": "process", "row": 3},
        id="permanent-error",
    ),
    pytest.param(
        {},
        "no-such-template",
        None,
        pb.FAILURE_KIND_PERMANENT,
        "no processor for node template 'no-such-template'",
        {"node_template": "no-such-template", "known_templates": [TEMPLATE]},
        id="unknown-template",
    ),
    pytest.param(
        {"mode": "opaque"},
        TEMPLATE,
        None,
        pb.FAILURE_KIND_PERMANENT,
        "not JSON-able: outputs['when'] is a datetime",
        {"hook": "process"},
        id="outputs-not-json",
    ),
    pytest.param(
        {"mode": "block"},
        TEMPLATE,
        0.3,
        pb.FAILURE_KIND_RETRYABLE,
        "attempt timed out after 0.",
        {"hook": "process", "timeout": True},
        id="attempt-deadline",
    ),
]


@pytest.mark.parametrize(
    ("config", "template", "deadline_in", "kind", "message", "details"), FAILURES
)
async def test_failures_are_posted_with_their_kind(
    server: Server,
    config: dict[str, Any],
    template: str,
    deadline_in: float | None,
    kind: int,
    message: str,
    details: dict[str, Any],
) -> None:
    fake = server.fake
    runtime, _ = make_runtime(server)
    async with serving(runtime):
        fake.push(task(config=config, template=template, deadline_in=deadline_in))
        await fake.wait_for(lambda: len(fake.results) == 1 and fake.grants == [1])
    failure = fake.results[0].failure
    assert failure.kind == kind
    assert message in failure.message
    got = _details(fake.results[0])
    assert {k: got.get(k) for k in details} == details
    if kind == pb.FAILURE_KIND_RETRYABLE and "timeout" not in details:
        assert "KeyError: 'boom'" in got["traceback"] and len(got["traceback"]) < 4100


@pytest.mark.parametrize("how", ["cancellation", "lost-lease"])
async def test_the_scheduler_stops_a_task_through_the_heartbeat_stream(
    server: Server, how: str
) -> None:
    fake = server.fake
    runtime, probe = make_runtime(server, capacity=1)
    async with serving(runtime):
        fake.push(task(config={"mode": "block"}))
        await asyncio.wait_for(probe.started.wait(), 5)
        if how == "cancellation":
            stop = pb.HeartbeatResponse(
                cancellations=[pb.TaskCancellation(attempt_id="a-1", reason="session cancelled")]
            )
        else:
            stop = pb.HeartbeatResponse(lost_attempt_ids=["a-1"])
        fake.send_heartbeat(stop)  # unprompted, between two heartbeats
        await asyncio.wait_for(probe.cancelled.wait(), 5)
        # The slot is free again (a credit) and no later heartbeat names the attempt.
        await fake.wait_for(lambda: fake.grants == [1])
        seen = len(fake.heartbeats)
        await fake.wait_for(lambda: len(fake.heartbeats) > seen)
        assert "a-1" not in fake.heartbeats[-1].attempt_ids
    assert fake.results == []


async def test_a_drain_request_hands_back_what_outlives_its_deadline(server: Server) -> None:
    fake = server.fake
    runtime, probe = make_runtime(server, capacity=2, drain_timeout=30.0)
    async with serving(runtime) as served:
        fake.push(task("long", {"mode": "block"}))
        fake.push(task("short", {"mode": "sleep", "seconds": 0.1}))
        await fake.wait_for(lambda: fake.grants == [1])  # "short" is done and acknowledged
        fake.send_drain(pb.DrainRequest(reason="scale-down", deadline=timestamp_in(0.4)))
        # Within 5 s although its own drain timeout is 30 s: the scheduler's deadline rules.
        assert await asyncio.wait_for(served, 5) == 0
    assert probe.cancelled.is_set()
    assert [r.attempt_id for r in fake.results] == ["short", "long"]
    assert fake.results[1].WhichOneof("outcome") == "release"
    assert fake.results[1].release.reason == "draining"
    # Claiming stopped at once: the stream was half-closed and the credit of "short" (acked
    # before the drain) was the only one granted.
    assert fake.claims_half_closed == 1
    assert fake.grants == [1]


async def test_a_drain_waits_for_acknowledgements_only_so_long(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    fake = server.fake
    fake.acknowledge = False
    runtime, _ = make_runtime(server, drain_timeout=0.1, ack_grace=0.3)
    async with serving(runtime) as served:
        fake.push(task("a-1", {"mode": "block"}))
        await fake.wait_for(lambda: any("a-1" in h.attempt_ids for h in fake.heartbeats))
        runtime.drain("test")
        assert await asyncio.wait_for(served, 5) == 0
    assert [r.WhichOneof("outcome") for r in fake.results] == ["release"]
    assert "did not acknowledge 1 results" in caplog.text


async def test_a_drain_lets_held_tasks_finish(server: Server) -> None:
    fake = server.fake
    runtime, _ = make_runtime(server, capacity=1)
    async with serving(runtime) as served:
        fake.push(task("a-1", {"mode": "sleep", "seconds": 0.3}))
        await fake.wait_for(lambda: any("a-1" in h.attempt_ids for h in fake.heartbeats))
        fake.send_heartbeat(pb.HeartbeatResponse(drain=pb.DrainRequest(reason="idle")))
        fake.push(task("a-2", {"mode": "sleep", "seconds": 0.1}))  # never claimed
        assert await asyncio.wait_for(served, 5) == 0
    assert [r.WhichOneof("outcome") for r in fake.results] == ["success"]
    assert fake.grants == [] and len(fake.queue) == 1


async def test_reconnects_reclaims_and_reposts_unacknowledged_results(server: Server) -> None:
    first = server.fake
    first.acknowledge = False
    runtime, probe = make_runtime(server, capacity=1)
    async with serving(runtime):
        first.push(task("a-1", {"mode": "sleep", "seconds": 0.2}))
        await first.wait_for(lambda: len(first.results) == 1)  # posted, never acknowledged
        await server.stop()
        await asyncio.sleep(0.3)  # a few failed reconnection attempts
        second = FakeScheduler()
        await server.start(second)
        await second.wait_for(lambda: len(second.starts) == 1 and len(second.results) == 1)
        # The task is still held (its result is unacknowledged): no credit to offer yet.
        assert second.starts[0].credits == 0
        assert second.results[0] == first.results[0]
        await second.wait_for(lambda: second.grants == [1])
        # Work goes on over the new connection.
        second.push(task("a-2"))
        await second.wait_for(lambda: len(second.results) == 2)
    assert len(probe.seen) == 2


async def test_where_granted_tasks_come_in_batches_and_results_carry_credits_back(
    server: Server,
) -> None:
    fake = server.fake
    fake.grant = pb.ClaimStarted(
        max_tasks_per_message=8, credits_with_results=True, result_batches=True
    )
    runtime, probe = make_runtime(server, capacity=2)
    async with serving(runtime):
        await fake.wait_for(lambda: len(fake.starts) == 1)
        assert fake.starts[0].max_tasks_per_message == 2
        assert fake.starts[0].credits_with_results
        for i in range(6):
            fake.push(task(f"a-{i}"))
        await fake.wait_for(lambda: len(fake.results) == 6)
        assert len(probe.seen) == 6
        # Each pair came as one TaskBatch; the results gave the credits back themselves.
        assert fake.grants == []
        # Outcomes posted together travel together (one message may carry several).
        assert sum(len(m.batch) or 1 for m in fake.result_messages) == 6
        assert all(len(m.batch) != 1 for m in fake.result_messages)
    assert sorted(r.attempt_id for r in fake.results) == [f"a-{i}" for i in range(6)]


async def test_a_first_version_scheduler_gets_credits_as_before(server: Server) -> None:
    """The runtime asks for batches; a scheduler that grants nothing gets single outcomes and
    a ClaimCredit for each freed slot."""
    fake = server.fake
    runtime, _ = make_runtime(server, capacity=1)
    async with serving(runtime):
        for i in range(3):
            fake.push(task(f"a-{i}"))
        await fake.wait_for(lambda: len(fake.results) == 3 and len(fake.grants) == 3)
        assert fake.grants == [1, 1, 1]
        assert all(not m.batch for m in fake.result_messages)


async def test_a_rejected_result_is_settled_and_logged(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    fake = server.fake
    fake.verdict = pb.RESULT_STATUS_REJECTED_STALE
    runtime, _ = make_runtime(server, capacity=1)
    async with serving(runtime):
        fake.push(task("a-1"))
        await fake.wait_for(lambda: fake.grants == [1])  # the slot is free again
    assert len(fake.results) == 1
    assert "attempt_id=a-1 verdict=REJECTED_STALE: stale" in caplog.text


async def test_a_drain_while_disconnected_hands_back_after_reconnecting(server: Server) -> None:
    first = server.fake
    runtime, probe = make_runtime(server, capacity=1, drain_timeout=0.2)
    async with serving(runtime) as served:
        first.push(task("a-1", {"mode": "block"}))
        await asyncio.wait_for(probe.started.wait(), 5)
        await server.stop()
        runtime.drain("SIGTERM")
        await asyncio.wait_for(probe.cancelled.wait(), 5)  # handed back at the deadline
        second = FakeScheduler()
        await server.start(second)
        assert await asyncio.wait_for(served, 5) == 0
    assert [r.WhichOneof("outcome") for r in second.results] == ["release"]
    # Draining: the new connection did not claim.
    assert second.starts == [] and "ClaimTask" not in second.metadata
    assert first.results == []


async def test_work_in_progress_survives_a_scheduler_restart(server: Server) -> None:
    first = server.fake
    runtime, probe = make_runtime(server, capacity=1)
    async with serving(runtime):
        first.push(task("a-1", {"mode": "sleep", "seconds": 0.6}))
        await asyncio.wait_for(probe.started.wait(), 5)
        await server.stop()
        second = FakeScheduler()
        await server.start(second)
        await second.wait_for(lambda: len(second.results) == 1)
        assert second.results[0].WhichOneof("outcome") == "success"
        assert not probe.cancelled.is_set()
    assert first.results == []


async def test_waits_for_a_scheduler_that_is_not_up_yet(server: Server) -> None:
    await server.stop()  # the port is known and free
    runtime, _ = make_runtime(server)
    async with serving(runtime):
        await asyncio.sleep(0.3)
        await server.start(FakeScheduler())
        await server.fake.wait_for(lambda: len(server.fake.starts) == 1)


async def test_adopts_the_schedulers_heartbeat_interval(server: Server) -> None:
    fake = server.fake
    fake.heartbeat_interval = 0.05
    runtime, _ = make_runtime(server, heartbeat_interval=5.0)
    async with serving(runtime):
        await fake.wait_for(lambda: len(fake.heartbeats) >= 6, within=2.0)


@pytest.mark.parametrize("refusal", ["bad-credential", "no-runner-service"])
async def test_exits_non_zero_at_once_when_the_scheduler_refuses(
    server: Server, refusal: str, caplog: pytest.LogCaptureFixture
) -> None:
    if refusal == "no-runner-service":
        await server.stop()
        await server.start(service=False)
        runtime, _ = make_runtime(server)
    else:
        runtime, _ = make_runtime(server, credential="heatrc_wrong")
    # A refusal is final: no reconnecting with backoff (which would outlast the 5 s).
    assert await asyncio.wait_for(runtime.serve(handle_signals=False), 5) == 3
    expected = "UNAUTHENTICATED" if refusal == "bad-credential" else "UNIMPLEMENTED"
    assert expected in caplog.text and "refused" in caplog.text


async def test_current_task_outside_a_task_raises() -> None:
    with pytest.raises(LookupError, match="outside a task"):
        current_task()
    assert TaskInfo.__dataclass_fields__.keys() >= {"attempt_id", "node_key", "parameters"}


async def test_serve_needs_a_processor() -> None:
    class Empty(Runtime):
        """Nothing registered on it (HeatRuntime itself may hold other tests' classes)."""

    with pytest.raises(RuntimeError, match="no processor registered"):
        await Empty(runner="csv-runner").serve(handle_signals=False)


# --- the example runner as a process: env, run(), SIGTERM --------------------------------------


async def test_the_example_runner_serves_and_exits_0_on_sigterm(server: Server) -> None:
    fake = server.fake
    env = {
        **os.environ,
        "HEAT_SCHEDULER_ADDRESS": server.address,
        "HEAT_RUNNER": "csv-runner",
        "HEAT_RUNNER_CREDENTIAL": SECRET + "\n",  # as mounted from a secret file
        "HEAT_CAPACITY": "2",
        "HEAT_INSTANCE_ID": "csv-runner-7f9c",
        "HEAT_LOG_LEVEL": "debug",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "csv_sum" / "runner.py"),
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        fake.push(
            task(
                "csv-1",
                {"csv": "region,amount\nnorth,120\nsouth,80.5\n", "column": "amount"},
                template="csv-column-sum",
            )
        )
        await fake.wait_for(lambda: len(fake.results) == 1, within=10)
        assert fake.starts[0].instance_id == "csv-runner-7f9c" and fake.starts[0].credits == 2
        assert sorted(fake.starts[0].node_templates) == ["add-sums", "csv-column-sum"]
        assert to_python(fake.results[0].success.outputs) == {
            "column": "amount",
            "sum": 200.5,
            "rows": 2,
        }
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = stderr.decode()
    assert process.returncode == 0, log
    assert "task started attempt_id=csv-1" in log and "draining (SIGTERM)" in log


def test_the_example_runner_names_a_missing_setting() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAT_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "csv_sum" / "runner.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "HEAT_RUNNER is not set" in result.stderr


# --- settings ----------------------------------------------------------------------------------


def test_settings_come_from_the_environment() -> None:
    config = RuntimeConfig.from_env(
        {
            "HEAT_SCHEDULER_ADDRESS": "heat-scheduler.heat.svc:50051",
            "HEAT_RUNNER": "csv-runner",
            "HEAT_RUNNER_CREDENTIAL": " heatrc_abc\n",
            "HEAT_CAPACITY": "4",
            "HEAT_INSTANCE_ID": "",
            "HOSTNAME": "csv-runner-5d8f7-x2x9q",
            "HEAT_DRAIN_TIMEOUT": "2.5s",
            "HEAT_LOG_LEVEL": "debug",
        }
    )
    assert config.address == "heat-scheduler.heat.svc:50051"
    assert config.credential == "heatrc_abc"
    assert config.capacity == 4 and config.drain_timeout == 2.5 and config.log_level == "DEBUG"
    assert config.instance_id == "csv-runner-5d8f7-x2x9q"
    assert "heatrc_abc" not in repr(config)


def test_settings_defaults_and_argument_precedence() -> None:
    config = RuntimeConfig.from_env({"HEAT_RUNNER": "csv-runner", "HEAT_CAPACITY": "4"})
    assert config.address == "127.0.0.1:50051" and config.credential == ""
    assert config.capacity == 4 and config.drain_timeout == 30.0 and config.log_level == "INFO"
    # No $HOSTNAME: <hostname>-<pid>-<random>.
    assert f"-{os.getpid()}-" in config.instance_id
    assert (
        RuntimeConfig.from_env({"HEAT_RUNNER": "x", "HEAT_CAPACITY": "4"}, capacity=8).capacity == 8
    )
    runtime = Runtime.from_env({"HEAT_RUNNER": "csv-runner"}, instance_id="me")
    assert runtime.config.instance_id == "me"


@pytest.mark.parametrize(
    ("env", "named", "accepted"),
    [
        ({"HEAT_RUNNER": ""}, "HEAT_RUNNER", "name of the Runner"),
        ({"HEAT_RUNNER": "Csv_Runner"}, "HEAT_RUNNER", "DNS-1123"),
        ({"HEAT_CAPACITY": "many"}, "HEAT_CAPACITY", "whole number"),
        ({"HEAT_CAPACITY": "0"}, "HEAT_CAPACITY", "from 1 to"),
        ({"HEAT_DRAIN_TIMEOUT": "soon"}, "HEAT_DRAIN_TIMEOUT", "seconds"),
        ({"HEAT_DRAIN_TIMEOUT": "-1"}, "HEAT_DRAIN_TIMEOUT", "0 or more"),
        ({"HEAT_SCHEDULER_ADDRESS": "localhost"}, "HEAT_SCHEDULER_ADDRESS", "host:port"),
        ({"HEAT_SCHEDULER_ADDRESS": "h:99999"}, "HEAT_SCHEDULER_ADDRESS", "host:port"),
        ({"HEAT_LOG_LEVEL": "loud"}, "HEAT_LOG_LEVEL", "DEBUG, INFO, WARNING, ERROR"),
        ({"HEAT_RUNNER_CREDENTIAL": "two words"}, "HEAT_RUNNER_CREDENTIAL", "space"),
        ({"HEAT_INSTANCE_ID": "a b"}, "HEAT_INSTANCE_ID", "visible ASCII"),
    ],
)
def test_a_bad_setting_names_its_variable_and_what_is_accepted(
    env: dict[str, str], named: str, accepted: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        RuntimeConfig.from_env({"HEAT_RUNNER": "csv-runner", **env})
    assert named in str(caught.value) and accepted in str(caught.value)


def test_constructor_arguments_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"capacity \(HEAT_CAPACITY\)"):
        Runtime(runner="csv-runner", capacity=-1)
    with pytest.raises(ConfigError, match="reconnect_max"):
        RuntimeConfig(runner="csv-runner", reconnect_initial=2.0, reconnect_max=1.0)
    assert set(RuntimeSettings.__annotations__) == set(RuntimeConfig.__dataclass_fields__)


# --- values ------------------------------------------------------------------------------------


def test_values_round_trip_with_whole_numbers_as_ints() -> None:
    original = {"n": 3, "x": 2.5, "s": "t", "b": True, "none": None, "l": [1, [2.0, {}]], "d": {}}
    value = to_value(original)
    assert to_python(value) == original
    assert type(to_python(value)["l"][1][0]) is int
    struct = struct_pb2.Struct()
    struct.update({"a": 1.0, "b": {"c": [4.0, 4.5]}})
    assert struct_to_dict(struct) == {"a": 1, "b": {"c": [4, 4.5]}}
    assert to_python(to_value((1, 2))) == [1, 2]


def test_numpy_and_other_real_numbers_are_taken_as_python_numbers() -> None:
    """What pandas hands back (``df[col].sum()``) goes out as it is, as in HEAT's example."""
    outputs = {
        "altitude": numpy.int64(3412),
        "speed": numpy.float64(120.7),
        "ok": numpy.bool_(True),
        "ratio": numpy.float32(0.5),
        "half": fractions.Fraction(1, 2),
    }
    assert to_python(to_value(outputs)) == {
        "altitude": 3412,
        "speed": 120.7,
        "ok": True,
        "ratio": 0.5,
        "half": 0.5,
    }
    assert type(to_python(to_value(numpy.int64(7)))) is int
    with pytest.raises(NotJsonable, match=r"outputs\['rows'\] is a ndarray"):
        to_value({"rows": numpy.array([1, 2])}, "outputs")
    with pytest.raises(NotJsonable, match="is nan"):
        to_value(numpy.float64("nan"), "outputs")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"when": datetime.now(UTC)}, "outputs['when'] is a datetime"),
        ({"rows": [1, float("nan")]}, "outputs['rows'][1] is nan"),
        ({1: "a"}, "has the key 1"),
        ({"big": 2**60}, "beyond ±2**53"),
        ({"raw": b"\x00"}, "is a bytes"),
    ],
)
def test_values_refuse_what_json_cannot_hold(value: Any, problem: str) -> None:
    with pytest.raises(NotJsonable, match=problem.replace("[", r"\[").replace("*", r"\*")):
        to_value(value, "outputs")


def test_the_package_exports_its_api_and_needs_no_server_dependencies() -> None:
    probe = (
        "import json, sys, heat_runtime, heat_runtime.testing, heat_runtime.testing.pytest_plugin;"
        "print(json.dumps([sorted({'asyncpg', 'kubernetes_asyncio', 'scheduler', 'jsonschema',"
        " 'pandas', 'pydantic'} & set(sys.modules)), sorted(heat_runtime.__all__),"
        " sorted(heat_runtime.testing.__all__)]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert json.loads(result.stdout) == [
        [],
        [
            "BaseProcessor",
            "ConfigError",
            "HeatRuntime",
            "PermanentError",
            "Processor",
            "Runtime",
            "RuntimeConfig",
            "TaskInfo",
            "current_task",
        ],
        [
            "HeatScheduler",
            "NodeResult",
            "SessionResult",
            "TaskFailed",
            "TaskFailure",
            "TaskOutcome",
            "run_task",
            "run_task_sync",
        ],
    ]
