"""The server: one cluster in a data folder, started and stopped with pg_ctl."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, Self
from urllib.parse import quote

import asyncpg

from scheduler.embedded.binaries import RunAs, find_pg_bin, run_as
from scheduler.embedded.errors import EmbeddedPostgresError

log = logging.getLogger(__name__)

SUPERUSER: Final = "heat"

_PG_CTL_TIMEOUT_S: Final = 60
# Leftover backends of a killed postmaster notice its death within milliseconds; this is slack.
_LINGER_TIMEOUT_S: Final = 10.0
_LOG_ROTATE_BYTES: Final = 10 * 1024 * 1024
_LOG_TAIL_LINES: Final = 30
_PORT_ATTEMPTS: Final = 3
# With no TCP the port only names the socket file, in a folder of our own: any number works.
SOCKET_PORT: Final = 5432
HBA: Final = """\
# Written by heat-scheduler's embedded PostgreSQL at every start: a password for everyone.
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
host  all all ::1/128 scram-sha-256
"""
# Only while an older cluster (trust auth, no password yet) gets its password: the socket's
# folder is private, TCP is off.
_HBA_UPGRADE: Final = "local all all trust\n"


class EmbeddedPostgres:
    """One PostgreSQL server on ``data_dir``, reachable only with its password.

    It listens on a Unix socket in a private folder (0700, of the server's user) and, only when
    ``host`` is given, on ``host:port`` too (``port=None`` picks a free port; a restart of the
    same object tries the last one first). Every connection needs the password of the
    ``heat`` superuser (scram-sha-256), generated at the first start and kept in
    ``password_file`` (0600; default ``<data_dir>.password`` beside the data folder); the DSNs
    carry it. ``durable=False`` (for tests) trades durability for speed: a killed server loses
    its last fraction of a second of commits, and an OS crash may corrupt the cluster.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str | None = None,
        durable: bool = True,
        pg_bin: Path | None = None,
        password_file: Path | None = None,
    ) -> None:
        # The server programs run with cwd "/" (the unprivileged user may not enter ours).
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.durable = durable
        self.pg_bin = pg_bin if pg_bin is not None else find_pg_bin()
        self.log_file = self.data_dir / "log" / "embedded.log"
        self.password_file = (
            Path(password_file).absolute()
            if password_file is not None
            else self.data_dir.with_name(self.data_dir.name + ".password")
        )
        self._password = ""
        self._requested_port = port
        self._port = port if host is not None else (port or SOCKET_PORT)
        self._run_as = run_as()
        self._socket_dir: Path | None = None
        self._last_socket_dir: Path | None = None
        self._running = False

    # -- public API ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port of the running (else the last) server."""
        if self._port is None:
            raise EmbeddedPostgresError("the port is picked at start(); start the server first")
        return self._port

    @property
    def dsn(self) -> str:
        """The superuser's DSN for the ``postgres`` database."""
        return self.dsn_for("postgres")

    @property
    def password(self) -> str:
        """The ``heat`` superuser's password (known once started)."""
        return self._password

    @property
    def socket_dir(self) -> Path:
        """The private folder of the server's Unix socket."""
        folder = self._socket_dir or self._last_socket_dir
        if folder is None:
            raise EmbeddedPostgresError("the socket is made at start(); start the server first")
        return folder

    def dsn_for(self, database: str) -> str:
        """A DSN with the password: over TCP when the server listens there, else the socket."""
        user = f"{SUPERUSER}:{quote(self._password, safe='')}"
        name = quote(database, safe="")
        if self.host is not None:
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"postgresql://{user}@{host}:{self.port}/{name}"
        socket_dir = quote(str(self.socket_dir), safe="")
        return f"postgresql://{user}@/{name}?host={socket_dir}&port={self.port}"

    @property
    def running(self) -> bool:
        return self._running

    async def database(self, name: str) -> str:
        """The DSN of database ``name`` on the running server, created if it is missing."""
        conn = await asyncpg.connect(self.dsn)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.dsn_for(name)

    async def start(self, *, same_port: bool = False) -> None:
        """Start the server (``same_port``: on the port it had, or fail, so DSNs handed out
        stay valid)."""
        if self._running:
            return
        await asyncio.to_thread(self._prepare_data_dir)
        upgrade = False
        if not (self.data_dir / "PG_VERSION").exists():
            self._password = await asyncio.to_thread(self._new_password)
            await self._initdb()
        elif self.password_file.exists():
            self._password = await asyncio.to_thread(self._read_password)
        else:
            # A cluster of an older release: trust auth, no password. It gets one now.
            self._password = await asyncio.to_thread(self._new_password)
            upgrade = True
        await asyncio.to_thread(self._write_hba, _HBA_UPGRADE if upgrade else HBA)
        await asyncio.to_thread(self._prepare_log)
        await self._clear_leftovers()
        self._socket_dir = await asyncio.to_thread(self._make_socket_dir)
        try:
            await self._pg_ctl_start(same_port=same_port)
            if upgrade:
                await self._set_password()
        except BaseException:
            if upgrade:
                with contextlib.suppress(EmbeddedPostgresError):
                    await self.stop()
            await asyncio.to_thread(self._remove_socket_dir)
            raise
        self._running = True
        where = f"{self.host}:{self.port} and " if self.host is not None else ""
        log.info("embedded PostgreSQL on %s%s, data in %s", where, self._socket_dir, self.data_dir)

    async def stop(self) -> None:
        if not self._running:
            return
        # A server killed from outside may linger as a zombie, which pg_ctl would wait on.
        if await asyncio.to_thread(self._live_postmaster) is not None:
            code, output = await self._run(
                "pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w",
                "-t", str(_PG_CTL_TIMEOUT_S),
            )  # fmt: skip
            if code != 0 and await asyncio.to_thread(self._live_postmaster) is not None:
                raise EmbeddedPostgresError(f"pg_ctl stop failed (exit {code}):\n{output}")
        self._running = False
        await asyncio.to_thread(self._remove_socket_dir)

    async def keep_running(self, down: Callable[[str], None], up: Callable[[], None]) -> None:
        """Keep the started server running, for as long as this runs: when it dies, start it
        again on the same port. ``down(reason)`` once it is found dead, ``up()`` once it
        accepts connections again.

        A connection held to the server says when it goes (no polling); the postmaster's PID
        then says whether it died or only ended that connection. A failed restart raises, for
        the caller to try again later (the scheduler's supervisor, with backoff).
        """
        while True:
            if await asyncio.to_thread(self._live_postmaster) is None:
                down("the embedded PostgreSQL is not running; restarting it")
                log.warning("the embedded PostgreSQL on %s died; restarting it", self.data_dir)
                self._running = False
                await asyncio.to_thread(self._remove_socket_dir)
                await self.start(same_port=True)
            conn = await asyncpg.connect(self.dsn)
            up()
            ended = asyncio.Event()
            conn.add_termination_listener(lambda _c, ended=ended: ended.set())
            try:
                await ended.wait()
            finally:
                conn.terminate()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the password -------------------------------------------------------------------------

    def _new_password(self) -> str:
        password = secrets.token_urlsafe(24)
        self.password_file.parent.mkdir(parents=True, exist_ok=True)
        self.password_file.unlink(missing_ok=True)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(password + "\n")
        return password

    def _read_password(self) -> str:
        password = self.password_file.read_text(encoding="utf-8").strip()
        if not password:
            raise EmbeddedPostgresError(
                f"{self.password_file} is empty; it holds the embedded PostgreSQL's password"
            )
        return password

    def _write_hba(self, content: str) -> None:
        path = self.data_dir / "pg_hba.conf"
        path.write_text(content, encoding="utf-8")
        path.chmod(0o600)
        if self._run_as is not None:
            os.chown(path, self._run_as.uid, self._run_as.gid)

    async def _set_password(self) -> None:
        """Give an older cluster its password, then require it."""
        conn = await asyncpg.connect(
            host=str(self._socket_dir), port=self.port, user=SUPERUSER, database="postgres"
        )
        try:
            await conn.execute(f"ALTER ROLE {SUPERUSER} PASSWORD {_literal(self._password)}")
            await asyncio.to_thread(self._write_hba, HBA)
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        log.info("the embedded PostgreSQL now requires its password (%s)", self.password_file)

    # -- folders ------------------------------------------------------------------------------

    def _prepare_data_dir(self) -> None:
        data = self.data_dir
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (data / "PG_VERSION").exists() and any(data.iterdir()):
            raise EmbeddedPostgresError(
                f"{data} is neither empty nor a PostgreSQL data folder (it has no PG_VERSION); "
                "give the embedded server an empty or new folder"
            )
        if self._run_as is not None:
            self._check_reachable(self._run_as)
            if data.stat().st_uid != self._run_as.uid:
                self._chown_tree(data, self._run_as)
        # PostgreSQL refuses a data folder that others may read.
        data.chmod(0o700)

    def _check_reachable(self, user: RunAs) -> None:
        for folder in self.data_dir.parents:
            st = folder.stat()
            if st.st_uid == user.uid:
                allowed = st.st_mode & stat.S_IXUSR
            elif st.st_gid in user.groups:
                allowed = st.st_mode & stat.S_IXGRP
            else:
                allowed = st.st_mode & stat.S_IXOTH
            if not allowed:
                raise EmbeddedPostgresError(
                    f"PostgreSQL runs as user {user.name!r} (it refuses to run as root), and "
                    f"{user.name!r} cannot enter {folder} (mode {stat.filemode(st.st_mode)}) "
                    f"on the way to the data folder {self.data_dir}; allow it "
                    f"(chmod o+x {shlex.quote(str(folder))}) or put the data folder elsewhere"
                )

    @staticmethod
    def _chown_tree(root: Path, user: RunAs) -> None:
        os.chown(root, user.uid, user.gid)
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                os.chown(Path(folder) / name, user.uid, user.gid, follow_symlinks=False)

    def _prepare_log(self) -> None:
        folder = self.log_file.parent
        folder.mkdir(mode=0o700, exist_ok=True)
        if self._run_as is not None:
            os.chown(folder, self._run_as.uid, self._run_as.gid)
        # pg_ctl only ever appends; keep one previous generation so the folder stays bounded.
        with contextlib.suppress(FileNotFoundError):
            if self.log_file.stat().st_size > _LOG_ROTATE_BYTES:
                self.log_file.replace(self.log_file.with_name(self.log_file.name + ".1"))

    def _make_socket_dir(self) -> Path:
        # A restart makes the same folder again if it can, so DSNs handed out stay valid.
        folder = self._last_socket_dir
        try:
            if folder is None:
                raise FileExistsError
            folder.mkdir(mode=0o700)
        except FileExistsError:
            # Unix socket paths are limited to about 100 bytes: keep it short, whatever
            # TMPDIR says. mkdtemp's folder is 0700: the socket is private to its owner.
            base = "/tmp" if Path("/tmp").is_dir() else None  # noqa: S108
            folder = Path(tempfile.mkdtemp(prefix="heatpg", dir=base))
        if self._run_as is not None:
            os.chown(folder, self._run_as.uid, self._run_as.gid)
        self._last_socket_dir = folder
        return folder

    def _remove_socket_dir(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    # -- programs -----------------------------------------------------------------------------

    async def _run(self, program: str, *args: str) -> tuple[int, str]:
        """Run a server program as the right user; its exit code and combined output."""
        proc = await asyncio.create_subprocess_exec(
            *self._as_server_user(str(self.pg_bin / program)),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd="/",
            env=_server_env(),
        )
        out, _ = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")

    def _as_server_user(self, program: str) -> list[str]:
        """The command that runs ``program`` as the server's user.

        The user is switched by setpriv rather than by Popen's ``user=``: switching it in the
        child makes Python fork() instead of vfork(), and a fork() runs gRPC's fork handlers in
        a child of a process that serves gRPC, where they can crash it (SIGSEGV).
        """
        run_as = self._run_as
        if run_as is None:
            return [program]
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise EmbeddedPostgresError(
                "running as root, PostgreSQL must run as another user, which needs setpriv"
                " (util-linux) on PATH; install it, or run the scheduler as a normal user"
            )
        groups = ",".join(map(str, run_as.groups))
        return [
            setpriv, f"--reuid={run_as.uid}", f"--regid={run_as.gid}",
            f"--groups={groups}" if groups else "--clear-groups", "--", program,
        ]  # fmt: skip

    async def _initdb(self) -> None:
        # initdb reads the password from a file its user can read: one of its own, at once gone.
        folder = Path(tempfile.mkdtemp(prefix="heatpw"))
        pwfile = folder / "pw"
        pwfile.write_text(self._password + "\n", encoding="utf-8")
        pwfile.chmod(0o600)
        if self._run_as is not None:
            for path in (folder, pwfile):
                os.chown(path, self._run_as.uid, self._run_as.gid)
        args = [
            "-D", str(self.data_dir), f"--username={SUPERUSER}", "--auth=scram-sha-256",
            f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C",
        ]  # fmt: skip
        if not self.durable:
            args.append("--no-sync")
        log.info("creating a PostgreSQL cluster in %s", self.data_dir)
        try:
            code, output = await self._run("initdb", *args)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if code != 0:
            raise EmbeddedPostgresError(
                f"initdb failed (exit {code}) for {self.data_dir}:\n{output.strip()}"
            )

    def _server_options(self, port: int, socket_dir: Path) -> str:
        settings = {
            "listen_addresses": self.host or "",
            "port": str(port),
            "unix_socket_directories": str(socket_dir),
            "max_connections": "200",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        # pg_ctl hands this string to /bin/sh, hence the quoting.
        return " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in settings.items())

    async def _pg_ctl_start(self, *, same_port: bool = False) -> None:
        assert self._socket_dir is not None
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if self.host is None:
                port = self.port  # a socket only: its folder is ours, no port can be taken
            elif self._requested_port is not None:
                port = self._requested_port
            elif same_port and self._port is not None:
                port = self._port
            elif attempt == 1 and self._port is not None:
                # A restart keeps the previous port if it can, so DSNs handed out stay valid.
                port = self._port
            else:
                port = _free_port(self.host)
            offset = await asyncio.to_thread(_file_size, self.log_file)
            code, output = await self._run(
                "pg_ctl", "start", "-w", "-t", str(_PG_CTL_TIMEOUT_S),
                "-D", str(self.data_dir), "-l", str(self.log_file),
                "-o", self._server_options(port, self._socket_dir),
            )  # fmt: skip
            if code == 0:
                self._port = port
                return
            server_log = await asyncio.to_thread(_tail, self.log_file, offset)
            # Another process may grab the free port between our probe and the server's bind.
            if (
                self._requested_port is None
                and self.host is not None
                and not same_port
                and attempt < _PORT_ATTEMPTS
                and "could not bind" in server_log
            ):
                log.warning("port %s was taken before PostgreSQL bound it; retrying", port)
                continue
            raise EmbeddedPostgresError(
                f"PostgreSQL did not start on {self.host or 'its socket'}:{port} from "
                f"{self.data_dir} "
                f"(pg_ctl exit {code}).\npg_ctl said:\n{output.strip()}\n"
                f"last lines of {self.log_file}:\n{server_log}"
            )

    # -- leftovers of killed runs -------------------------------------------------------------

    async def _clear_leftovers(self) -> None:
        """Deal with a postmaster.pid left by a run that did not stop cleanly."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists() or not _HAVE_PROC:
            # Without /proc, PostgreSQL's own stale-lock check (kill(pid, 0)) has to do.
            return
        pid = await asyncio.to_thread(self._live_postmaster)
        if pid is not None:
            log.warning(
                "a PostgreSQL server (PID %s) left by a previous run is still serving %s; "
                "stopping it",
                pid,
                self.data_dir,
            )
            code, output = await self._run(
                "pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w",
                "-t", str(_PG_CTL_TIMEOUT_S),
            )  # fmt: skip
            if code != 0:
                raise EmbeddedPostgresError(
                    f"could not stop the server (PID {pid}) left running on {self.data_dir}:\n"
                    f"{output.strip()}"
                )
            return
        # The postmaster is dead, or a zombie nobody reaps (PID 1 of many containers), or its
        # PID now names another process. PostgreSQL takes the last two for a live server and
        # refuses to start, so the lock file goes; but only once the old backends, which still
        # hold the old shared memory, are gone.
        deadline = time.monotonic() + _LINGER_TIMEOUT_S
        while lingering := await asyncio.to_thread(_processes_in, self.data_dir):
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"processes {lingering} of a dead PostgreSQL server still run in "
                    f"{self.data_dir}; end them before starting a new server there"
                )
            await asyncio.sleep(0.05)
        log.warning("removing a stale %s left by a killed server", pid_file)
        pid_file.unlink(missing_ok=True)

    def _live_postmaster(self) -> int | None:
        """The PID in postmaster.pid if it is a live process serving our data folder."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (FileNotFoundError, ValueError):
            return None
        if not _HAVE_PROC:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                pass
            return pid
        return pid if pid in _processes_in(self.data_dir) else None


_HAVE_PROC: Final = Path("/proc/self/cwd").exists()


def _processes_in(folder: Path) -> list[int]:
    """Live (not zombie) processes whose working folder is ``folder``.

    A postmaster and all its children run in their data folder, so this finds them whatever
    their PIDs are, and tells a real postmaster from a recycled PID.
    """
    target = folder.resolve()
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or entry.name == me:
            continue
        try:
            if (entry / "cwd").readlink() != target:
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            found.append(int(entry.name))
    return sorted(found)


def _literal(text: str) -> str:
    """A SQL string literal (the password is URL-safe base64; this is for good measure)."""
    return "'" + text.replace("'", "''") + "'"


def _server_env() -> dict[str, str]:
    # libpq variables in our environment would redirect pg_ctl's own checks.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _tail(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(text.strip().splitlines()[-_LOG_TAIL_LINES:]) or "(empty)"
