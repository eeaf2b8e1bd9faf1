"""heat_runtime against a real scheduler, with files: what process() returns as bytes (or a
file object) is stored and reaches the downstream node as bytes, or as a file object when it
is larger than HEAT_INLINE_FILE_BYTES; a damaged file fails the attempt."""

from __future__ import annotations

import asyncio
import io
from typing import Any

from heat.scheduler.v1 import artifact_service_pb2 as aspb
from heat.scheduler.v1 import artifact_service_pb2_grpc as aspb_grpc
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import session_pb2 as s
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc
from heat_runtime import BaseProcessor, HeatRuntime, RuntimeConfig, current_task
from heat_runtime._values import to_python
from heat_runtime.testing import run_task

from tests.integration.fake_scheduler import TEMPLATE, Server, serving, settings, task
from tests.integration.test_protocol import dag, setup_registry
from tests.support import Scheduler

seen: dict[str, Any] = {}


class Produce(BaseProcessor):
    TEMPLATE_NAME = "step"

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        key = current_task().node_key
        if key == "make":
            return {"small": b"a,b\n1,2\n", "large": io.BytesIO(b"x" * 5000), "rows": 1}
        if key == "raw":
            return b"just bytes"
        made = inputs["make"]
        large = made["large"]
        seen.update(
            small=made["small"],
            large_kind=type(large).__name__,
            large=large.read(),
            raw=inputs["raw"],
            rows=made["rows"],
        )
        return {"echo": made["small"] + inputs["raw"]}


async def ended(sc: Scheduler, name: str) -> s.Session:
    stub = spb_grpc.SessionServiceStub(sc.channel)
    async for event in stub.WatchSession(spb.WatchSessionRequest(name=name)):
        if event.WhichOneof("event") == "session_change" and event.session_change.state in (
            s.SESSION_STATE_SUCCEEDED,
            s.SESSION_STATE_FAILED,
        ):
            break
    session: s.Session = (await stub.GetSession(spb.GetSessionRequest(name=name))).session
    return session


async def test_returned_files_reach_the_downstream_node(scheduler: Scheduler) -> None:
    secret = await setup_registry(scheduler)
    runtime = HeatRuntime(
        RuntimeConfig(
            address=scheduler.address,
            runner="w",
            credential=secret,
            inline_file_bytes=4096,
            heartbeat_interval=1.0,
        )
    )
    runtime.register(Produce)
    created = await spb_grpc.SessionServiceStub(scheduler.channel).CreateSession(
        dag(("make", []), ("raw", []), ("use", ["make", "raw"]))
    )
    async with serving(runtime):
        session = await asyncio.wait_for(ended(scheduler, created.session.name), 30)
    assert session.state == s.SESSION_STATE_SUCCEEDED, session
    assert seen == {
        "small": b"a,b\n1,2\n",
        "large_kind": "BufferedRandom",  # over inline_file_bytes: a temporary file
        "large": b"x" * 5000,
        "raw": b"just bytes",
        "rows": 1,
    }
    outputs = {n.key: to_python(n.outputs) for n in session.nodes}
    assert set(outputs["make"]) == {"small", "large", "rows"}
    assert set(outputs["raw"]) == {"$artifact"}
    name = outputs["use"]["echo"]["$artifact"]
    stub = aspb_grpc.ArtifactServiceStub(scheduler.channel)
    data = b"".join(
        [m.data async for m in stub.DownloadArtifact(aspb.DownloadArtifactRequest(name=name))]
    )
    assert data == b"a,b\n1,2\njust bytes"
    listed = await stub.ListArtifacts(aspb.ListArtifactsRequest(session=session.name))
    assert sorted(a.node_key for a in listed.artifacts) == ["make", "make", "raw", "use"]


# --- against the fake RunnerService -------------------------------------------------------------

opened: list[Any] = []


class Reads(BaseProcessor):
    TEMPLATE_NAME = TEMPLATE

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        opened.append(inputs["file"])
        if config.get("reserved"):
            return {"$artifact": "artifacts/" + "0" * 32}
        data = inputs["file"] if isinstance(inputs["file"], bytes) else inputs["file"].read()
        return {"size": len(data)}


async def test_files_are_checked_spooled_and_closed_and_the_reserved_key_refused(
    server: Server,
) -> None:
    fake = server.fake
    name = "artifacts/" + "1" * 32
    fake.files[name] = b"z" * 3000
    runtime = HeatRuntime(RuntimeConfig(**settings(server)), inline_file_bytes=1000)
    runtime.register(Reads)
    reference = {"file": {"$artifact": name}}
    async with serving(runtime):
        fake.push(task("a-1", inputs=reference))
        await fake.wait_for(lambda: len(fake.results) == 1)
        fake.push(task("a-2", {"reserved": True}, inputs=reference))
        await fake.wait_for(lambda: len(fake.results) == 2)
        fake.digests[name] = "0" * 64  # what arrives is not what the scheduler says it is
        fake.push(task("a-3", inputs=reference))
        await fake.wait_for(lambda: len(fake.results) == 3)
    first, reserved, damaged = fake.results
    assert to_python(first.success.outputs) == {"size": 3000}
    assert opened[0].closed, "the temporary file went with the attempt"
    assert reserved.failure.kind == pb.FAILURE_KIND_PERMANENT
    assert "holds the key '$artifact'" in reserved.failure.message
    assert damaged.failure.kind == pb.FAILURE_KIND_RETRYABLE
    assert "arrived damaged" in damaged.failure.message
    assert len(opened) == 2, "the damaged file never reached process()"


class Echo(BaseProcessor):
    TEMPLATE_NAME = "echo"

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        return {"copy": inputs["up"]["file"], "file": io.BytesIO(b"from a file"), "n": 1}


async def test_the_testing_kit_hands_back_returned_files_as_bytes() -> None:
    outcome = await run_task(Echo, inputs={"up": {"file": b"abc", "rows": 2}})
    assert outcome.result() == {"copy": b"abc", "file": b"from a file", "n": 1}
