"""The artefact store's contract, kept by both stores: a folder and an S3-compatible bucket
(on a real server, versitygw). Content is invisible until committed, gone after an abort or a
delete, read back in bounded chunks exactly as written; keys cannot reach outside the store."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from scheduler.artifacts.filesystem import FileBlobStore
from scheduler.artifacts.s3 import S3BlobStore, S3Config
from scheduler.domain.errors import NotFound, PermissionDenied, Unavailable
from scheduler.domain.ports import BlobStore
from tests.s3 import S3Server, s3_server

PART = 5 * 1024 * 1024  # S3's smallest part: multipart uploads start beyond it


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


def s3_config(server: S3Server, **changes: object) -> S3Config:
    config = S3Config(
        endpoint=server.endpoint,
        bucket=server.bucket,
        prefix="blobs/",
        access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key,
        part_bytes=PART,
    )
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


@pytest_asyncio.fixture(params=["folder", "s3"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BlobStore]:
    if request.param == "folder":
        folder = Path(tempfile.mkdtemp(prefix="heat-blobs-"))
        try:
            yield await FileBlobStore.open(folder / "artifacts")
        finally:
            shutil.rmtree(folder)
        return
    server: S3Server = request.getfixturevalue("s3")
    opened = await S3BlobStore.open(s3_config(server))
    try:
        yield opened
    finally:
        await opened.close()


async def write(store: BlobStore, key: str, data: bytes, chunk: int = 1_000_000) -> None:
    writer = await store.writer(key)
    for start in range(0, len(data), chunk):
        await writer.write(data[start : start + chunk])
    await writer.commit()


async def read(store: BlobStore, key: str, chunk: int = 1024 * 1024) -> list[bytes]:
    return [part async for part in store.read(key, chunk)]


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 * 1024 + 5, 2 * PART + 123])
async def test_what_is_written_reads_back_in_bounded_chunks(store: BlobStore, size: int) -> None:
    data = os.urandom(size)
    await write(store, f"k{size}", data)
    chunks = await read(store, f"k{size}", chunk=256 * 1024)
    assert b"".join(chunks) == data
    assert all(len(c) <= 256 * 1024 for c in chunks)


async def test_nothing_is_visible_before_the_commit_and_an_abort_leaves_nothing(
    store: BlobStore,
) -> None:
    writer = await store.writer("pending")
    await writer.write(os.urandom(PART + 10))  # an S3 multipart upload has begun
    with pytest.raises(NotFound):
        await read(store, "pending")
    await writer.abort()
    with pytest.raises(NotFound):
        await read(store, "pending")
    await write(store, "pending", b"again")  # the key is free for a fresh write
    assert await read(store, "pending") == [b"again"]


async def test_delete_removes_the_content_and_may_be_repeated(store: BlobStore) -> None:
    await write(store, "doomed", b"x" * 10)
    await store.delete("doomed")
    await store.delete("doomed")
    await store.delete("never-written")
    with pytest.raises(NotFound):
        await read(store, "doomed")


@pytest.mark.parametrize("key", ["../escape", "a/b", "", "x" * 129, "dot.dot"])
async def test_keys_cannot_reach_outside_the_store(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="not an artefact store key"):
        await store.writer(key)
    with pytest.raises(ValueError, match="not an artefact store key"):
        await store.delete(key)


async def test_writers_of_different_keys_do_not_meet(store: BlobStore) -> None:
    blobs = {f"w{i}": os.urandom(200_000 + i) for i in range(6)}
    await asyncio.gather(*(write(store, k, v, chunk=50_000) for k, v in blobs.items()))
    for key, data in blobs.items():
        assert b"".join(await read(store, key)) == data


# --- what only one of them can be asked ---------------------------------------------------------


async def test_the_folder_store_keeps_files_private_and_drops_partial_writes() -> None:
    folder = Path(tempfile.mkdtemp(prefix="heat-blobs-"))
    try:
        store = await FileBlobStore.open(folder / "a")
        writer = await store.writer("cut-short")
        await writer.write(b"half")  # the process dies here
        assert (folder / "a").stat().st_mode & 0o777 == 0o700
        store = await FileBlobStore.open(folder / "a")  # a restart sweeps partial writes
        assert list((folder / "a" / ".partial").iterdir()) == []
    finally:
        shutil.rmtree(folder)


async def test_the_s3_store_says_what_is_wrong_with_its_settings(s3: S3Server) -> None:
    with pytest.raises(PermissionDenied, match="credentials"):
        await S3BlobStore.open(s3_config(s3, secret_access_key="wrong"))
    with pytest.raises(Unavailable, match="does not exist"):
        await S3BlobStore.open(s3_config(s3, bucket="no-such-bucket"))
    with pytest.raises(Unavailable, match="cannot be reached"):
        await S3BlobStore.open(s3_config(s3, endpoint="http://127.0.0.1:1"))


async def test_the_s3_store_keeps_objects_under_its_prefix(s3: S3Server) -> None:
    store = await S3BlobStore.open(s3_config(s3, prefix="tenant/blobs/"))
    try:
        await write(store, "abc", b"content")
    finally:
        await store.close()
    assert (s3.root / s3.bucket / "tenant" / "blobs" / "abc").read_bytes() == b"content"
