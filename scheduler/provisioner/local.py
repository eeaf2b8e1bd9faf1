"""Runner instances as processes on this machine: the embedded default, for laptops and demos.

Each Runner that should run locally has a command (``--local-runners NAME=COMMAND``); an
instance is one process of it, given the same environment a pod would get. A process that
exits is observed at once (its exit code says succeeded or failed); nothing polls.

With a ``state_dir``, each instance is recorded there (pid, the kernel's start time of the
process, Runner, uid) for as long as it runs. A scheduler that was killed without stopping its
instances leaves them running, and their records behind: the next provisioner on that folder
adopts the ones still alive (they count toward the Runner's pods, are stopped like its own,
and their exit is observed through a pidfd), and forgets the rest. An adopted process is not
our child, so its exit code is unknown: it is reported as ended (SUCCEEDED), and the
reconciler ends the leases of every ended instance at once, so a task it held goes back to
the queue instead of waiting out its lease.

Least privilege: a process inherits only an allow-listed part of the scheduler's environment
(``PATH``, ``HOME``, the locale, ``TMPDIR``, ``TZ``, ``OTEL_*`` but the exporters' headers, and
the names ``--local-runner-env`` adds), never the database URL or the scheduler's tokens; the
``HEAT_*`` variables it needs are set for it. At most ``max_processes`` run at once, all
Runners together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shlex
import signal
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from scheduler.domain.provisioning import InstanceSpec, Observed, Phase
from scheduler.provisioner.errors import ProvisionerError

log = logging.getLogger(__name__)

_STOP_GRACE_S: Final = 10.0
INHERITED: Final = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER"})


def inherited_environment(environ: Mapping[str, str], extra: Sequence[str] = ()) -> dict[str, str]:
    """The part of ``environ`` a runner process may see."""
    allowed = INHERITED | set(extra)
    return {
        name: value
        for name, value in environ.items()
        if name in allowed or name.startswith("LC_") or _telemetry(name)
    }


def _telemetry(name: str) -> bool:
    # OTEL_* configure the runtime's telemetry, but the exporters' headers may hold a
    # collector's credentials (OTEL_EXPORTER_OTLP_HEADERS, …_TRACES_HEADERS).
    return name.startswith("OTEL_") and not name.endswith("_HEADERS")


class LocalProvisioner:
    name = "local"

    def __init__(
        self,
        commands: Mapping[str, Sequence[str]],
        *,
        env: Mapping[str, str] | None = None,
        inherit: Sequence[str] = (),
        max_processes: int = 32,
        cwd: str | None = None,
        state_dir: Path | None = None,
    ) -> None:
        """``env``: variables every process gets as given (besides the inherited part of our
        own environment, see ``inherited_environment``; ``inherit`` names more of it)."""
        self._state_dir = state_dir
        self._adopted: dict[str, int] = {}  # instance name -> pidfd of a process we adopted
        self._commands = {k: list(v) for k, v in commands.items()}
        self._env = {**inherited_environment(os.environ, inherit), **(env or {})}
        self._max_processes = max_processes
        self._cwd = cwd
        self._instances: dict[str, Observed] = {}
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._waiters: set[asyncio.Task[None]] = set()
        self._credentials: dict[str, str] = {}
        self._changed: Callable[[], None] = lambda: None

    async def start(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        self._adopt()

    async def stop(self) -> None:
        """Stop every process this provisioner started (or adopted): they ask to drain on
        SIGTERM."""
        for process in self._processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        await self._stop_adopted()
        if self._waiters:
            _, pending = await asyncio.wait(self._waiters, timeout=_STOP_GRACE_S)
            for name, process in self._processes.items():
                if process.returncode is None:
                    log.warning("instance %s did not stop in time; killing it", name)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if pending:
                await asyncio.wait(pending, timeout=2)

    def observed(self) -> list[Observed]:
        return list(self._instances.values())

    async def create(self, spec: InstanceSpec) -> Observed:
        runner = spec.runner
        command = self._commands.get(runner.name)
        if command is None:
            known = ", ".join(sorted(self._commands)) or "none"
            raise ProvisionerError(
                f"no local command for runner {runner.name!r} (configured: {known}); "
                f"set --local-runners {runner.name}=COMMAND (env HEAT_LOCAL_RUNNERS)"
            )
        running = sum(1 for p in self._processes.values() if p.returncode is None)
        running += len(self._adopted)  # processes of an earlier scheduler, still ours
        if running >= self._max_processes:
            raise ProvisionerError(
                f"the local provisioner runs at most {self._max_processes} processes "
                "(--local-max-processes / HEAT_LOCAL_MAX_PROCESSES), and that many run"
            )
        name = f"{runner.name}-{secrets.token_hex(3)}"
        env = {
            **self._env,
            **dict(spec.environment),
            "HEAT_SCHEDULER_ADDRESS": spec.scheduler_address,
            "HEAT_RUNNER": runner.name,
            "HEAT_CAPACITY": str(runner.tasks_per_pod),
            "HEAT_INSTANCE_ID": name,
            "HEAT_RUNNER_CREDENTIAL": self._credentials.get(runner.name, ""),
        }
        try:
            process = await asyncio.create_subprocess_exec(
                *command, env=env, cwd=self._cwd, stdin=asyncio.subprocess.DEVNULL
            )
        except OSError as exc:
            raise ProvisionerError(f"cannot start {shlex.join(command)}: {exc}") from exc
        instance = Observed(
            name=name,
            runner=runner.name,
            uid=str(uuid.uuid4()),
            phase=Phase.RUNNING,
            ready=True,
            created=datetime.now(UTC),
        )
        self._instances[name] = instance
        self._processes[name] = process
        self._record(instance, process.pid)
        waiter = asyncio.create_task(self._wait(name, process))
        self._waiters.add(waiter)
        waiter.add_done_callback(self._waiters.discard)
        return instance

    async def _wait(self, name: str, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        self._forget_record(name)
        instance = self._instances.get(name)
        self._processes.pop(name, None)
        if instance is None:
            return
        if instance.deleting:
            del self._instances[name]
        elif code == 0:
            self._instances[name] = replace(instance, phase=Phase.SUCCEEDED, ready=False)
        else:
            reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            self._instances[name] = replace(
                instance, phase=Phase.FAILED, ready=False, reason=reason
            )
        self._changed()

    async def delete(self, instance: Observed) -> None:
        current = self._instances.get(instance.name)
        if current is None or current.uid != instance.uid:
            return
        if instance.name in self._adopted:
            self._instances[instance.name] = replace(current, deleting=True)
            self._signal_adopted(instance.name, signal.SIGTERM)
            return
        process = self._processes.get(instance.name)
        if process is None or process.returncode is not None:
            del self._instances[instance.name]
            return
        self._instances[instance.name] = replace(current, deleting=True)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)

    async def has_credential(self, runner: str) -> bool:
        return runner in self._credentials

    async def store_credential(self, runner: str, secret: str) -> None:
        self._credentials[runner] = secret

    # -- records of running instances, and adoption ----------------------------------------

    def _record_path(self, name: str) -> Path | None:
        return None if self._state_dir is None else self._state_dir / f"{name}.json"

    def _record(self, instance: Observed, pid: int) -> None:
        path = self._record_path(instance.name)
        started = _start_ticks(pid)
        if path is None or started is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "pid": pid,
            "start_ticks": started,
            "runner": instance.runner,
            "uid": instance.uid,
            "created": instance.created.isoformat() if instance.created else None,
        }
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        temporary.replace(path)

    def _forget_record(self, name: str) -> None:
        path = self._record_path(name)
        if path is not None:
            path.unlink(missing_ok=True)

    def _adopt(self) -> None:
        """Take over the instances an earlier provisioner on this folder left running."""
        if self._state_dir is None or not self._state_dir.is_dir():
            return
        loop = asyncio.get_running_loop()
        for path in sorted(self._state_dir.glob("*.json")):
            name = path.stem
            if name in self._instances:
                continue
            record = _read_record(path)
            pid = record.get("pid") if record else None
            if (
                record is None
                or not isinstance(pid, int)
                or _start_ticks(pid) != record.get("start_ticks")
            ):
                path.unlink(missing_ok=True)  # it ended (or its pid is someone else's now)
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                path.unlink(missing_ok=True)
                continue
            created = record.get("created")
            self._instances[name] = Observed(
                name=name,
                runner=str(record.get("runner", "")),
                uid=str(record.get("uid", "")),
                phase=Phase.RUNNING,
                ready=True,
                created=datetime.fromisoformat(created) if isinstance(created, str) else None,
            )
            self._adopted[name] = pidfd
            loop.add_reader(pidfd, self._adopted_exited, name)
            log.info("adopted instance %s (pid %d) left running by an earlier scheduler", name, pid)

    def _adopted_exited(self, name: str) -> None:
        pidfd = self._adopted.pop(name, None)
        if pidfd is None:
            return
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        self._forget_record(name)
        instance = self._instances.get(name)
        if instance is None:
            return
        if instance.deleting:
            del self._instances[name]
        else:
            # Not our child: its exit code cannot be read. Ended either way.
            self._instances[name] = replace(
                instance,
                phase=Phase.SUCCEEDED,
                ready=False,
                reason="exited (adopted from an earlier scheduler: exit code unknown)",
            )
        self._changed()

    def _signal_adopted(self, name: str, sig: signal.Signals) -> None:
        pidfd = self._adopted.get(name)
        if pidfd is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(pidfd, sig)

    async def _stop_adopted(self) -> None:
        if not self._adopted:
            return
        gone = asyncio.Event()
        changed = self._changed

        def notice() -> None:
            changed()
            if not self._adopted:
                gone.set()

        self._changed = notice
        for name in list(self._adopted):
            self._signal_adopted(name, signal.SIGTERM)
        try:
            await asyncio.wait_for(gone.wait(), _STOP_GRACE_S)
        except TimeoutError:
            for name in list(self._adopted):
                log.warning("adopted instance %s did not stop in time; killing it", name)
                self._signal_adopted(name, signal.SIGKILL)
        finally:
            self._changed = changed


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot): with the pid, it names one process,
    since a pid is reused but not at the same moment."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22: starttime
    except (IndexError, ValueError):
        return None


class NoProvisioner:
    """Runners are started by someone else; the scheduler only hands out work."""

    name = "none"

    async def start(self, changed: Callable[[], None]) -> None:
        return None

    async def stop(self) -> None:
        return None

    def observed(self) -> list[Observed]:
        return []

    async def create(self, spec: InstanceSpec) -> Observed:
        raise ProvisionerError("provisioner 'none' starts no instances")

    async def delete(self, instance: Observed) -> None:
        return None

    async def has_credential(self, runner: str) -> bool:
        return True

    async def store_credential(self, runner: str, secret: str) -> None:
        return None
