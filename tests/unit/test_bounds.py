"""The bounds: the edge's sweep of every request, the domain's limits, and poison values that a
rule must survive (no PostgreSQL, no server)."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from google.protobuf import struct_pb2
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import session_service_pb2 as spb

from scheduler.domain.errors import InvalidArgument
from scheduler.domain.limits import (
    FAILURE_DETAILS_MAX_BYTES,
    FAILURE_MESSAGE_MAX_LENGTH,
    JSON_MAX_DEPTH,
    MAX_BACKOFF,
    SCHEMA_MAX_BYTES,
    Limits,
)
from scheduler.domain.registry import (
    DagNode,
    NodeTemplate,
    RetryPolicy,
    Runner,
    check_dag_nodes,
    check_node_template,
    check_runner,
)
from scheduler.domain.sessions import NodeState
from scheduler.domain.validation import check_json_schema, config_checker
from scheduler.domain.verdicts import (
    EarlierVerdict,
    HeldNode,
    Outcome,
    OutcomeKind,
    Reply,
    ResultStatus,
    backoff,
    bounded,
    failure_verdict,
    repeated,
)
from scheduler.service.runner_protocol.settings import ProtocolSettings
from scheduler.transport import bounds
from scheduler.transport.runner import _drain_queue
from tests.unit.fakes import T0

M = TypeVar("M")


def build(cls: type[M], **fields: Any) -> M:
    """A message from plain values (dicts for nested messages), out-of-range ones included."""
    return cls(**fields)


def violations(request: object) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        bounds.check(request)  # type: ignore[arg-type]
    return {v.field: v.description for v in caught.value.violations}


def nested(levels: int) -> struct_pb2.Struct:
    root = struct_pb2.Struct()
    inner = root
    for _ in range(levels - 1):
        inner = inner.fields["a"].struct_value
    inner.fields["leaf"].string_value = "x"
    return root


def test_the_sweep_refuses_nul_non_finite_numbers_and_bad_times() -> None:
    request = spb.CreateSessionRequest(
        session_template="t\x00", labels={"k\x00": "v", "k": "v\x00"}, request_id="x" * 70_000
    )
    request.parameters.fields["n"].number_value = float("nan")
    request.parameters.fields["k\x00"].string_value = "v"
    request.parameters.fields["list"].list_value.values.add().number_value = float("-inf")
    found = violations(request)
    assert "NUL" in found["session_template"]
    assert "NUL" in found["labels['k\\x00'] (key)"]
    assert "NUL" in found["labels['k']"]
    assert "70000 characters" in found["request_id"]
    assert "finite" in found["parameters.n"]
    assert "finite" in found["parameters.list[0]"]
    assert "NUL" in found["parameters.k\x00 (key)"]
    times = build(spb.ListSessionsRequest, create_time_after={"seconds": 10**13})
    assert "9999" in violations(times)["create_time_after"]
    durations = build(rpb.CreateRunnerRequest, runner={"idle_period": {"seconds": 10**15}})
    assert "duration" in violations(durations)["runner.idle_period"]
    multiplier = build(
        rpb.CreateNodeTemplateRequest,
        node_template={"retry_policy": {"backoff_multiplier": float("inf")}},
    )
    assert "finite" in violations(multiplier)["node_template.retry_policy.backoff_multiplier"]


def test_the_sweep_bounds_json_depth_and_passes_what_is_fine() -> None:
    fine = spb.CreateSessionRequest(session_template="t")
    fine.parameters.CopyFrom(nested(JSON_MAX_DEPTH))
    fine.parameters.fields["blob"].string_value = "x" * 200_000  # JSON strings are data
    bounds.check(fine)
    deep = spb.CreateSessionRequest(session_template="t")
    deep.parameters.CopyFrom(nested(JSON_MAX_DEPTH + 1))
    assert any("nests more than" in d for d in violations(deep).values())
    outputs = pb.PostResultRequest(attempt_id="a")
    outputs.success.outputs.list_value.values.add().string_value = "\x00"
    assert "NUL" in violations(outputs)["success.outputs[0]"]


def test_the_decoder_answers_undecodable_requests() -> None:
    decode = bounds.decoder(spb.CreateSessionRequest.FromString)
    with pytest.raises(InvalidArgument) as caught:
        decode(b"\x1a\xff\xff\xff\xff\x0f")  # a length past the end
    assert "not a valid message" in caught.value.message


def test_registry_bounds() -> None:
    limits = Limits()
    runner = Runner(
        "r",
        "busybox",
        "1",
        "1Gi",
        max_pods=10**9,
        idle_period=timedelta(days=10_000),
    )
    found = {v.field for v in check_runner(runner, "runner", limits)}
    assert found == {"runner.max_pods", "runner.idle_period"}
    template = NodeTemplate(
        "t",
        "r",
        retry_policy=RetryPolicy(
            initial_backoff=timedelta(days=2),
            max_backoff=timedelta(days=3),
            backoff_multiplier=float("nan"),
        ),
        attempt_timeout=timedelta(days=365 * 10_000),
    )
    found = {
        v.field for v in check_node_template(template, "t", limits, runner_exists=lambda _: True)
    }
    assert found == {
        "t.retry_policy.initial_backoff",
        "t.retry_policy.max_backoff",
        "t.retry_policy.backoff_multiplier",
        "t.attempt_timeout",
    }


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(100, timedelta(seconds=1), timedelta(days=3650 * 1000), 1e300),
        RetryPolicy(100, timedelta(seconds=1), timedelta(days=1), float("inf")),
        RetryPolicy(100, timedelta(seconds=1), timedelta(days=1), float("nan")),
        RetryPolicy(100, timedelta(days=3650 * 1000), timedelta(days=3650 * 1000), 2.0),
    ],
)
def test_a_poison_retry_policy_still_gives_a_finite_wait(policy: RetryPolicy) -> None:
    node = HeldNode(1, 0, "r", NodeState.RUNNING, 99, "a", policy)
    rng = random.Random(1)  # noqa: S311
    for attempt in (1, 2, 50, 99):
        assert timedelta(0) <= backoff(policy, attempt, rng) <= MAX_BACKOFF
    verdict = failure_verdict(node, True, "boom", {}, T0, rng)
    assert verdict.not_before is not None and verdict.not_before <= T0 + MAX_BACKOFF


def test_failure_messages_and_details_are_bounded() -> None:
    outcome = Outcome(
        "a",
        OutcomeKind.FAILURE,
        message="m" * (FAILURE_MESSAGE_MAX_LENGTH * 3),
        details={"blob": "d" * FAILURE_DETAILS_MAX_BYTES},
    )
    kept = bounded(outcome)
    assert kept.message.startswith("m" * FAILURE_MESSAGE_MAX_LENGTH)
    assert kept.message.endswith("characters cut)")
    assert list(kept.details) == ["omitted"]
    small = Outcome("a", OutcomeKind.FAILURE, message="short", details={"k": 1})
    assert bounded(small) is small


def test_a_repeat_gets_the_same_answer_a_different_outcome_a_refusal() -> None:
    accepted = EarlierVerdict(Reply(ResultStatus.ACCEPTED), OutcomeKind.SUCCESS)
    assert repeated(accepted, Outcome("a", OutcomeKind.SUCCESS)).status is ResultStatus.ACCEPTED
    refused = repeated(accepted, Outcome("a", OutcomeKind.FAILURE))
    assert refused.status is ResultStatus.REJECTED_STALE
    assert "success" in refused.message
    unknown_kind = EarlierVerdict(Reply(ResultStatus.ACCEPTED), None)
    assert repeated(unknown_kind, Outcome("a", OutcomeKind.FAILURE)).status is ResultStatus.ACCEPTED


def test_schemas_refer_only_to_themselves_and_run_linear_patterns() -> None:
    for ref in ("http://127.0.0.1/x.json", "file:///etc/passwd", "other.json", "#/$defs/x"):
        found = check_json_schema({"properties": {"x": {"$ref": ref}}}, "s")
        assert bool(found) == (not ref.startswith("#")), ref
    assert not check_json_schema({"$ref": "https://json-schema.org/draft/2020-12/schema"}, "s")
    assert check_json_schema({"pattern": "(a)\\1"}, "s")
    assert check_json_schema({"patternProperties": {"(?=a)": {}}}, "s")
    assert not check_json_schema({"enum": [{"$ref": "http://x"}], "pattern": "^(a+)+$"}, "s")
    big = {"description": "x" * SCHEMA_MAX_BYTES}
    assert "bytes of JSON" in check_json_schema(big, "s")[0].description
    check = config_checker({"properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}})
    assert check({"s": "a" * 5000 + "!"}, "c")  # linear: a backtracking engine would never return
    unresolved = config_checker({"$ref": "http://127.0.0.1:9/x"})
    assert "does not resolve" in unresolved({}, "c")[0].description


def test_a_dag_check_that_runs_out_of_time_says_so() -> None:
    template = NodeTemplate("t", "r", config_schema={"type": "object"})
    nodes = [DagNode(f"n{i}", "t") for i in range(3)]
    found = check_dag_nodes(
        nodes, "dag", Limits(), templates={"t": template}.get, out_of_time=lambda: True
    )
    assert any("took too long" in v.description for v in found)


def test_silence_is_two_heartbeats_or_half_a_lease() -> None:
    settings = ProtocolSettings(timedelta(seconds=30), timedelta(seconds=10))
    assert settings.silence == timedelta(seconds=20)
    assert ProtocolSettings(timedelta(seconds=4), timedelta(seconds=0.5)).silence == timedelta(
        seconds=2
    )


async def test_a_stream_cancelled_with_its_call_leaves_no_getter_behind() -> None:
    """The queue-draining loop of the Heartbeat and PostResult streams, cancelled as gRPC
    cancels a call's task: no task is left waiting on the queue (it would take an answer off
    it for nobody, and be destroyed pending)."""
    queue: asyncio.Queue[object] = asyncio.Queue()
    never = asyncio.Event()

    async def wait_forever() -> None:
        await never.wait()

    async def consume() -> None:
        async for _ in _drain_queue(queue, wait_forever()):
            pass

    consumer = asyncio.create_task(consume())
    queue.put_nowait("first")
    await asyncio.sleep(0.01)  # the consumer took it and waits for the next
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await asyncio.sleep(0)
    waiting = [t for t in asyncio.all_tasks() if "Queue.get" in repr(t.get_coro()) and not t.done()]
    assert waiting == []
    queue.put_nowait("second")
    await asyncio.sleep(0)
    assert queue.get_nowait() == "second", "nobody took an item off the queue"
