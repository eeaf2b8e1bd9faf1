"""The real command line in a subprocess, and grpcurl (a third-party client) against it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
READY_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    """A ``heat-scheduler serve`` process; its log lines are collected as they come."""

    process: subprocess.Popen[str]
    address: str
    lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if (
                " serving " in line
                or line.rstrip().endswith(" serving")
                or "serving address=" in line
            ):
                self._ready.set()
        self._ready.set()

    def wait_ready(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(READY_TIMEOUT) or self.process.poll() is not None:
            raise AssertionError("scheduler did not start:\n" + "".join(self.lines))

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def grpcurl(self, *args: str, data: Any = None) -> subprocess.CompletedProcess[str]:
        command = [GRPCURL, "-plaintext"]
        if data is not None:
            command += ["-d", json.dumps(data)]
        command += [self.address, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)

    def call(self, method: str, data: Any) -> Any:
        result = self.grpcurl(f"heat.scheduler.v1.{method}", data=data)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def serve(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, port: int = 0
) -> Served:
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "serve", "--listen", f"127.0.0.1:{port}", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    served = Served(process, f"127.0.0.1:{port}")
    try:
        served.wait_ready()
    except BaseException:
        process.kill()
        raise
    return served


@pytest.fixture
def served(db_dsn: str) -> Iterator[Served]:
    server = serve("--database-url", db_dsn, "--shutdown-grace", "2", "--provisioner", "none")
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()
