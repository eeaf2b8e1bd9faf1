"""A real S3-compatible server for the tests: versitygw (scripts/s3-tools builds it) with its
posix backend in a private folder, on a free loopback port, with one bucket."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    root: Path  # the posix backend's folder: <root>/<bucket>/<key>

    def make_bucket(self, name: str) -> None:
        """A bucket is a folder of the posix backend."""
        (self.root / name).mkdir()


def versitygw() -> Path:
    """The versitygw binary: in $HEAT_S3_TOOLS (scripts/test sets it), else built now."""
    folder = os.environ.get("HEAT_S3_TOOLS")
    if not folder:
        folder = subprocess.run(
            [str(ROOT / "scripts" / "s3-tools")], capture_output=True, text=True, check=True
        ).stdout.strip()
    return Path(folder) / "versitygw"


@contextmanager
def s3_server() -> Iterator[S3Server]:
    root = Path(tempfile.mkdtemp(prefix="heat-s3-"))
    server = S3Server(
        endpoint="",
        access_key_id="heat-test",
        secret_access_key=secrets.token_hex(16),
        bucket="heat-artifacts",
        root=root,
    )
    server.make_bucket(server.bucket)
    port = free_port()
    process = subprocess.Popen(
        [
            str(versitygw()),
            "--port", f"127.0.0.1:{port}",
            "--access", server.access_key_id,
            "--secret", server.secret_access_key,
            "--quiet",
            "posix", str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"versitygw exited: {process.stderr.read() if process.stderr else ''}"
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("versitygw did not listen within 30 s") from None
                time.sleep(0.05)
        yield S3Server(
            f"http://127.0.0.1:{port}",
            server.access_key_id,
            server.secret_access_key,
            server.bucket,
            root,
        )
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)
