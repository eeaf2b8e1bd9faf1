"""Artefacts over real gRPC: uploads, file inputs of a Session (uploads and URIs), reads and
writes under a task's lease, references in results, digests, size bounds and retention."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from heat.scheduler.v1 import access_service_pb2 as aspb_access
from heat.scheduler.v1 import access_service_pb2_grpc as apb_grpc
from heat.scheduler.v1 import artifact_pb2 as apb
from heat.scheduler.v1 import artifact_service_pb2 as aspb
from heat.scheduler.v1 import artifact_service_pb2_grpc as aspb_grpc
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import runner_service_pb2_grpc as pb_grpc
from heat.scheduler.v1 import session_pb2 as s
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

from tests.integration.test_protocol import Claimer, dag, post, setup_registry, success
from tests.support import Scheduler, failure, serving

CHUNK = 1024 * 1024


@pytest.fixture
def inputs_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="heat-inputs-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def store_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="heat-store-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest_asyncio.fixture
async def sc(db_dsn: str, inputs_folder: Path, store_folder: Path) -> AsyncIterator[Scheduler]:
    async with serving(
        db_dsn,
        artifact_store=str(store_folder),
        artifact_sources=f"file://{inputs_folder}/allowed",
        max_artifact_bytes=3 * CHUNK,
        artifact_retention=0.0,
    ) as served:
        yield served


def artifacts(sc: Scheduler) -> Any:
    return aspb_grpc.ArtifactServiceStub(sc.channel)


def sessions(sc: Scheduler) -> Any:
    return spb_grpc.SessionServiceStub(sc.channel)


def runner(sc: Scheduler) -> Any:
    return pb_grpc.RunnerServiceStub(sc.channel)


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


async def upload(sc: Scheduler, data: bytes, **header: Any) -> apb.Artifact:
    async def parts() -> AsyncIterator[aspb.UploadArtifactRequest]:
        yield aspb.UploadArtifactRequest(upload=aspb.ArtifactUpload(**header))
        for start in range(0, len(data), CHUNK):
            yield aspb.UploadArtifactRequest(data=data[start : start + CHUNK])

    response = await artifacts(sc).UploadArtifact(parts())
    artifact: apb.Artifact = response.artifact
    return artifact


async def download(sc: Scheduler, name: str) -> tuple[apb.Artifact, bytes]:
    first: apb.Artifact | None = None
    data = bytearray()
    async for message in artifacts(sc).DownloadArtifact(aspb.DownloadArtifactRequest(name=name)):
        if message.WhichOneof("part") == "artifact":
            first = message.artifact
        else:
            data += message.data
    assert first is not None
    return first, bytes(data)


async def read_for(sc: Scheduler, secret: str, attempt_id: str, name: str) -> bytes:
    call = runner(sc).ReadArtifact(
        pb.ReadArtifactRequest(attempt_id=attempt_id, name=name), metadata=bearer(secret)
    )
    parts = [m async for m in call]
    assert parts[0].WhichOneof("part") == "artifact"
    return b"".join(m.data for m in parts[1:])


async def write_for(sc: Scheduler, secret: str, attempt_id: str, data: bytes) -> apb.Artifact:
    async def parts() -> AsyncIterator[pb.WriteArtifactRequest]:
        yield pb.WriteArtifactRequest(write=pb.ArtifactWrite(attempt_id=attempt_id))
        for start in range(0, len(data), CHUNK):
            yield pb.WriteArtifactRequest(data=data[start : start + CHUNK])

    response = await runner(sc).WriteArtifact(parts(), metadata=bearer(secret))
    artifact: apb.Artifact = response.artifact
    return artifact


def stored_paths(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def stored_files(folder: Path) -> set[str]:
    return {p.name for p in stored_paths(folder)}


def with_files(request: spb.CreateSessionRequest, *files: apb.FileInput) -> Any:
    request.files.extend(files)
    return request


# --- uploads and downloads --------------------------------------------------------------------


async def test_an_upload_reads_back_whole_with_its_digest(sc: Scheduler) -> None:
    data = os.urandom(2 * CHUNK + 17)
    sha = hashlib.sha256(data).hexdigest()
    stored = await upload(sc, data, filename="data.bin", size_bytes=len(data), sha256=sha)
    assert stored.name.startswith("artifacts/") and stored.session == ""
    assert (stored.size_bytes, stored.sha256, stored.filename) == (len(data), sha, "data.bin")
    assert stored.source == "upload" and stored.HasField("expire_time")
    got = await artifacts(sc).GetArtifact(aspb.GetArtifactRequest(name=stored.name))
    assert got.artifact == stored
    first, content = await download(sc, stored.name)
    assert first == stored and content == data
    audit = apb_grpc.AccessServiceStub(sc.channel)
    events = (
        await audit.ListAuditEvents(aspb_access.ListAuditEventsRequest(name=stored.name))
    ).events
    assert [(e.action, e.resource) for e in events] == [("upload", "artifact")]


@pytest.mark.parametrize(
    ("header", "size", "code", "text"),
    [
        ({"sha256": "0" * 64}, 10, grpc.StatusCode.INVALID_ARGUMENT, "changed on the way"),
        ({"size_bytes": 11}, 10, grpc.StatusCode.INVALID_ARGUMENT, "not the announced 11"),
        ({}, 3 * CHUNK + 1, grpc.StatusCode.RESOURCE_EXHAUSTED, "max_artifact_bytes"),
        ({"sha256": "XYZ"}, 1, grpc.StatusCode.INVALID_ARGUMENT, "hex digits"),
    ],
)
async def test_an_upload_that_is_not_what_it_claims_is_refused_and_kept_nowhere(
    sc: Scheduler, store_folder: Path, header: dict[str, Any], size: int, code: Any, text: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await upload(sc, b"x" * size, **header)
    assert raised.value.code() == code and text in (raised.value.details() or "")
    assert stored_files(store_folder) == set()


async def test_an_upload_must_open_with_its_header(sc: Scheduler) -> None:
    async def parts() -> AsyncIterator[aspb.UploadArtifactRequest]:
        yield aspb.UploadArtifactRequest(data=b"no header")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await artifacts(sc).UploadArtifact(parts())
    assert failure(raised.value).violations == {"upload": "the first message must carry the upload"}


async def test_a_damaged_file_in_the_store_ends_its_download_with_data_loss(
    sc: Scheduler, store_folder: Path
) -> None:
    stored = await upload(sc, b"the original content")
    (path,) = [p for p in stored_paths(store_folder) if p.name in stored.name]
    path.write_bytes(b"the changed content!")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await download(sc, stored.name)
    assert raised.value.code() == grpc.StatusCode.DATA_LOSS
    path.unlink()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await download(sc, stored.name)
    assert raised.value.code() == grpc.StatusCode.DATA_LOSS
    assert "missing" in (raised.value.details() or "")


@pytest.mark.parametrize("name", ["x", "artifacts/xyz", "sessions/a/artifacts/b"])
async def test_names_that_are_no_artefacts_are_invalid(sc: Scheduler, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await artifacts(sc).GetArtifact(aspb.GetArtifactRequest(name=name))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await artifacts(sc).GetArtifact(aspb.GetArtifactRequest(name="artifacts/" + "0" * 32))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


# --- file inputs of a Session -------------------------------------------------------------------


async def test_a_file_given_to_a_session_reaches_its_task_as_a_reference(sc: Scheduler) -> None:
    secret = await setup_registry(sc)
    stored = await upload(sc, b"a,b\n1,2\n", filename="data.csv")
    created = (
        await sessions(sc).CreateSession(
            with_files(
                dag(("load", []), ("sum", ["load"])),
                apb.FileInput(input="file", artifact=stored.name),
                apb.FileInput(input="schema", node_key="sum", artifact=stored.name),
            )
        )
    ).session
    assert dict(created.nodes[0].files) == {"file": stored.name}
    assert dict(created.nodes[1].files) == {"schema": stored.name}
    listed = await artifacts(sc).ListArtifacts(aspb.ListArtifactsRequest(session=created.name))
    assert [(a.name, a.session, a.node_key) for a in listed.artifacts] == [
        (stored.name, created.name, "")
    ]
    assert not listed.artifacts[0].HasField("expire_time"), "kept while the Session runs"

    claimer = Claimer(sc, secret, "i-1", 1)
    task = await claimer.task()
    assert task.node_key == "load"
    assert {k: v.struct_value.fields["$artifact"].string_value for k, v in task.inputs.items()} == {
        "file": stored.name
    }
    assert await read_for(sc, secret, task.attempt_id, stored.name) == b"a,b\n1,2\n"
    await post(sc, secret, success(task.attempt_id, {"rows": 1}))
    claimer.credit()
    second = await claimer.task()
    assert set(second.inputs) == {"load", "schema"}
    await claimer.close()


async def test_an_upload_goes_to_one_session_only(sc: Scheduler) -> None:
    await setup_registry(sc)
    stored = await upload(sc, b"once")
    given = apb.FileInput(input="file", artifact=stored.name)
    await sessions(sc).CreateSession(with_files(dag(("a", [])), given))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sessions(sc).CreateSession(with_files(dag(("a", [])), given))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert stored.name in (raised.value.details() or "")
    listed = await sessions(sc).ListSessions(spb.ListSessionsRequest())
    assert len(listed.sessions) == 1, "the refused Session was not created"


@pytest.mark.parametrize(
    ("given", "field", "text"),
    [
        ({"input": "file", "nodeKey": "nope"}, "files[0].node_key", "is no node's key"),
        ({"input": "a", "nodeKey": "b"}, "files[0].input", "upstream node of 'b'"),
        ({"input": "9lives"}, "files[0].input", "is not an input name"),
        ({"input": "file", "artifact": ""}, "files[0].source", "exactly one"),
    ],
)
async def test_file_inputs_that_do_not_fit_the_dag_are_invalid(
    sc: Scheduler, given: dict[str, Any], field: str, text: str
) -> None:
    from google.protobuf import json_format

    await setup_registry(sc)
    stored = await upload(sc, b"x")
    file = json_format.ParseDict({"artifact": stored.name, **given}, apb.FileInput())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sessions(sc).CreateSession(with_files(dag(("a", []), ("b", ["a"])), file))
    assert text in failure(raised.value).violations[field]


async def test_a_uri_is_read_only_under_the_allowed_folders(
    sc: Scheduler, inputs_folder: Path
) -> None:
    secret = await setup_registry(sc)
    (inputs_folder / "allowed").mkdir()
    (inputs_folder / "allowed" / "in.csv").write_bytes(b"1,2,3\n")
    (inputs_folder / "secret.txt").write_bytes(b"not for callers")
    (inputs_folder / "allowed" / "link").symlink_to(inputs_folder / "secret.txt")
    (inputs_folder / "allowed" / "dir-link").symlink_to(inputs_folder)

    uri = f"file://{inputs_folder}/allowed/in.csv"
    created = (
        await sessions(sc).CreateSession(
            with_files(dag(("a", [])), apb.FileInput(input="file", uri=uri))
        )
    ).session
    name = created.nodes[0].files["file"]
    got = (await artifacts(sc).GetArtifact(aspb.GetArtifactRequest(name=name))).artifact
    assert (got.source, got.filename, got.size_bytes) == (uri, "in.csv", 6)
    claimer = Claimer(sc, secret, "i-1", 1)
    task = await claimer.task()
    assert await read_for(sc, secret, task.attempt_id, name) == b"1,2,3\n"
    await claimer.close()

    refused = {
        f"file://{inputs_folder}/secret.txt": grpc.StatusCode.PERMISSION_DENIED,
        f"file://{inputs_folder}/allowed-not/x": grpc.StatusCode.PERMISSION_DENIED,
        f"file://{inputs_folder}/allowed/link": grpc.StatusCode.PERMISSION_DENIED,
        f"file://{inputs_folder}/allowed/dir-link/secret.txt": grpc.StatusCode.PERMISSION_DENIED,
        f"file://{inputs_folder}/allowed/../secret.txt": grpc.StatusCode.INVALID_ARGUMENT,
        f"file://{inputs_folder}/allowed/missing.csv": grpc.StatusCode.NOT_FOUND,
        "https://example.com/data.csv": grpc.StatusCode.INVALID_ARGUMENT,
        "s3://bucket/key": grpc.StatusCode.PERMISSION_DENIED,
    }
    for uri, code in refused.items():
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await sessions(sc).CreateSession(
                with_files(dag(("a", [])), apb.FileInput(input="file", uri=uri))
            )
        assert raised.value.code() == code, (uri, raised.value.details())


# --- under the lease ----------------------------------------------------------------------------


async def test_reads_and_writes_need_the_running_attempt_of_the_runners_own(
    sc: Scheduler,
) -> None:
    secret = await setup_registry(sc)
    other = (
        await sc.registry.IssueRunnerCredential(rpb.IssueRunnerCredentialRequest(runner="other"))
    ).credential.secret
    mine = await upload(sc, b"mine")
    foreign = await upload(sc, b"another session's")
    await sessions(sc).CreateSession(
        with_files(dag(("a", [])), apb.FileInput(input="f", artifact=mine.name))
    )
    await sessions(sc).CreateSession(
        with_files(dag(("a", [])), apb.FileInput(input="f", artifact=foreign.name))
    )
    claimer = Claimer(sc, secret, "i-1", 1)
    task = await claimer.task()
    (own,) = {v.struct_value.fields["$artifact"].string_value for v in task.inputs.values()}
    stranger = foreign.name if own == mine.name else mine.name

    async def code_of(call: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        return raised.value.code()

    assert await code_of(read_for(sc, other, task.attempt_id, own)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert await code_of(write_for(sc, other, task.attempt_id, b"x")) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert await code_of(read_for(sc, secret, task.attempt_id, stranger)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert await code_of(read_for(sc, "heatrc_wrong", task.attempt_id, own)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    written = await write_for(sc, secret, task.attempt_id, b"result bytes")
    assert (written.node_key, written.attempt, written.source) == ("a", 1, "output")
    await post(sc, secret, success(task.attempt_id, {"file": {"$artifact": written.name}}))
    for call in (
        read_for(sc, secret, task.attempt_id, own),
        write_for(sc, secret, task.attempt_id, b"late"),
    ):
        assert await code_of(call) == grpc.StatusCode.FAILED_PRECONDITION
    assert await code_of(read_for(sc, secret, "0" * 8 + "-0000-0000-0000-" + "0" * 12, own)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    await claimer.close()
    _, content = await download(sc, written.name)
    assert content == b"result bytes"


@pytest.mark.parametrize(
    "outputs",
    [
        {"file": {"$artifact": "FOREIGN"}},
        {"file": {"$artifact": "artifacts/" + "a" * 32}},
        {"file": {"$artifact": "OWN", "size": 3}},
        [{"$artifact": 7}],
    ],
)
async def test_outputs_may_refer_only_to_files_of_their_session(
    sc: Scheduler, outputs: Any
) -> None:
    import json

    secret = await setup_registry(sc)
    foreign = await upload(sc, b"someone else's")
    claimer = Claimer(sc, secret, "i-1", 1)
    created = (await sessions(sc).CreateSession(dag(("a", [])))).session
    task = await claimer.task()
    own = await write_for(sc, secret, task.attempt_id, b"own")
    text = json.dumps(outputs).replace("FOREIGN", foreign.name).replace("OWN", own.name)
    verdicts = await post(sc, secret, success(task.attempt_id, json.loads(text)))
    assert verdicts[task.attempt_id] == pb.RESULT_STATUS_REJECTED_INVALID
    got = (await sessions(sc).GetSession(spb.GetSessionRequest(name=created.name))).session
    assert got.nodes[0].state == s.NODE_STATE_FAILED
    assert "refer to files" in got.nodes[0].error.message
    await claimer.close()


# --- retention ----------------------------------------------------------------------------------


async def test_files_are_deleted_after_their_session_ended_and_unused_uploads_expire(
    sc: Scheduler, store_folder: Path, db_dsn: str
) -> None:
    import asyncpg

    secret = await setup_registry(sc)
    given = await upload(sc, b"given")
    unused = await upload(sc, b"never used")
    claimer = Claimer(sc, secret, "i-1", 1)
    created = (
        await sessions(sc).CreateSession(
            with_files(dag(("a", [])), apb.FileInput(input="f", artifact=given.name))
        )
    ).session
    task = await claimer.task()
    output = await write_for(sc, secret, task.attempt_id, b"returned")
    await post(sc, secret, success(task.attempt_id, {"$artifact": output.name}))
    await claimer.close()
    assert len(stored_files(store_folder)) == 3

    swept = await sc.running.artifacts.sweep()  # retention 0: the ended Session's two go
    assert swept == 2
    for name in (given.name, output.name):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await artifacts(sc).GetArtifact(aspb.GetArtifactRequest(name=name))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert stored_files(store_folder) == {unused.name.removeprefix("artifacts/")}
    ended = (await sessions(sc).GetSession(spb.GetSessionRequest(name=created.name))).session
    assert ended.state == s.SESSION_STATE_SUCCEEDED, "the Session itself stays"

    conn = await asyncpg.connect(db_dsn)  # an hour later, for the unused upload
    try:
        await conn.execute("UPDATE artifacts SET expire_time = expire_time - interval '1 hour'")
    finally:
        await conn.close()
    assert await sc.running.artifacts.sweep() == 1
    assert stored_files(store_folder) == set()
