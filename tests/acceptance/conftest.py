"""The real command line in a subprocess, and grpcurl (a third-party client) against it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Served, serve


@pytest.fixture
def served(db_dsn: str) -> Iterator[Served]:
    server = serve("--database-url", db_dsn, "--shutdown-grace", "2", "--provisioner", "none")
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()
