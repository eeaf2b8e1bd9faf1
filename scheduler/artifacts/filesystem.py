"""Artefact content in a folder: ``<root>/<key[:2]>/<key>``.

A write goes to ``<root>/.partial/`` and is renamed into place at commit, after an fsync, so a
reader never sees half a file and a crash leaves only a partial file (swept at start). The
file calls run in worker threads: the event loop never waits for the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import secrets
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Final

from scheduler.domain.errors import NotFound, Unavailable

_KEY: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
_PARTIAL: Final = ".partial"


def _checked(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise ValueError(f"{key!r} is not an artefact store key")
    return key


def _unavailable(error: OSError, what: str) -> Unavailable:
    if error.errno == errno.ENOSPC:
        return Unavailable(f"the artefact folder is full: cannot {what}")
    return Unavailable(f"the artefact folder failed to {what}: {error.strerror or error}")


class FileBlobWriter:
    def __init__(self, file: Path, final: Path) -> None:
        self._path = file
        self._final = final
        self._fd: int | None = None

    async def _open(self) -> None:
        def create() -> int:
            return os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

        try:
            self._fd = await asyncio.to_thread(create)
        except OSError as error:
            raise _unavailable(error, "create a file") from error

    async def write(self, chunk: bytes) -> None:
        assert self._fd is not None, "write after commit or abort"
        fd = self._fd

        def write_all() -> None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]

        try:
            await asyncio.to_thread(write_all)
        except OSError as error:
            raise _unavailable(error, "write") from error

    async def commit(self) -> None:
        assert self._fd is not None, "commit after commit or abort"
        fd, self._fd = self._fd, None

        def publish() -> None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._final.parent.mkdir(exist_ok=True)
            self._path.replace(self._final)
            folder = os.open(self._final.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

        try:
            await asyncio.to_thread(publish)
        except OSError as error:
            await self.abort()
            raise _unavailable(error, "store a file") from error

    async def abort(self) -> None:
        fd, self._fd = self._fd, None

        def drop() -> None:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

        await asyncio.to_thread(drop)


class FileBlobStore:
    """Content under ``root``, which is created (mode 0700) if missing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"folder {root}"

    @classmethod
    async def open(cls, root: Path) -> FileBlobStore:
        store = cls(root)

        def prepare() -> None:
            (root / _PARTIAL).mkdir(parents=True, exist_ok=True, mode=0o700)
            root.chmod(0o700)
            for leftover in (root / _PARTIAL).iterdir():  # writes a crash cut short
                with contextlib.suppress(OSError):
                    leftover.unlink()

        try:
            await asyncio.to_thread(prepare)
        except OSError as error:
            raise _unavailable(error, f"be prepared at {root}") from error
        return store

    def _path(self, key: str) -> Path:
        key = _checked(key)
        return self.root / key[:2] / key

    async def writer(self, key: str) -> FileBlobWriter:
        final = self._path(key)
        partial = self.root / _PARTIAL / f"{key}.{secrets.token_hex(4)}"
        writer = FileBlobWriter(partial, final)
        await writer._open()
        return writer

    async def read(self, key: str, chunk_bytes: int) -> AsyncGenerator[bytes, None]:
        path = self._path(key)
        try:
            file = await asyncio.to_thread(path.open, "rb", buffering=0)
        except FileNotFoundError:
            raise NotFound("artefact content", key) from None
        except OSError as error:
            raise _unavailable(error, "open a file") from error
        try:
            while True:
                try:
                    chunk = await asyncio.to_thread(file.read, chunk_bytes)
                except OSError as error:
                    raise _unavailable(error, "read") from error
                if not chunk:
                    return
                yield chunk
        finally:
            file.close()

    async def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as error:
            raise _unavailable(error, "delete a file") from error

    async def close(self) -> None:
        return None
