"""Files CreateSession reads by URI, once the service has checked them against the operator's
allow-list (setting artifact_sources).

``file://``: the path is opened without following a symbolic link at its last step, and the
file actually opened is checked again to lie under an allowed folder (through
``/proc/self/fd``), so a link planted under an allowed folder cannot reach elsewhere.
``s3://bucket/key``: read with the artefact store's S3 endpoint and credentials.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from scheduler.artifacts.s3 import S3Client
from scheduler.domain.artifacts import SourceUri
from scheduler.domain.errors import NotFound, PermissionDenied, Unavailable


class Sources:
    def __init__(self, allowed: Sequence[SourceUri], s3: S3Client | None = None) -> None:
        self._folders = [Path(os.path.realpath(a.location)) for a in allowed if a.scheme == "file"]
        self._s3 = s3

    async def read(self, uri: SourceUri, chunk_bytes: int) -> AsyncIterator[bytes]:
        if uri.scheme == "file":
            async for chunk in self._read_file(uri.location, chunk_bytes):
                yield chunk
            return
        if self._s3 is None:
            raise Unavailable(
                "s3:// file inputs need the S3 endpoint of settings s3_endpoint and its credentials"
            )
        bucket, _, key = uri.location.partition("/")
        try:
            async for chunk in self._s3.get_object(bucket, key, chunk_bytes):
                yield chunk
        except NotFound:
            raise NotFound("file", f"s3://{uri.location}") from None

    async def _read_file(self, path: str, chunk_bytes: int) -> AsyncIterator[bytes]:
        def open_checked() -> int:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise IsADirectoryError(path)
                real = Path(os.path.realpath(f"/proc/self/fd/{fd}"))
                if not any(real.is_relative_to(folder) for folder in self._folders):
                    raise PermissionError(path)
            except BaseException:
                os.close(fd)
                raise
            return fd

        try:
            fd = await asyncio.to_thread(open_checked)
        except FileNotFoundError:
            raise NotFound("file", f"file://{path}") from None
        except (PermissionError, IsADirectoryError, NotADirectoryError, OSError) as error:
            raise PermissionDenied(
                f"file://{path} cannot be read as a file under the folders setting"
                f" artifact_sources allows ({type(error).__name__})"
            ) from None
        try:
            while True:
                chunk = await asyncio.to_thread(os.read, fd, chunk_bytes)
                if not chunk:
                    return
                yield chunk
        finally:
            os.close(fd)
