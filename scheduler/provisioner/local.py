"""Runner instances as processes on this machine: the embedded default, for laptops and demos.

Each Runner that should run locally has a command (``--local-runners NAME=COMMAND``); an
instance is one process of it, given the same environment a pod would get. A process that
exits is observed at once (its exit code says succeeded or failed); nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import signal
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Final

from scheduler.domain.provisioning import InstanceSpec, Observed, Phase
from scheduler.provisioner.errors import ProvisionerError

log = logging.getLogger(__name__)

_STOP_GRACE_S: Final = 10.0


class LocalProvisioner:
    name = "local"

    def __init__(
        self,
        commands: Mapping[str, Sequence[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self._commands = {k: list(v) for k, v in commands.items()}
        self._env = dict(os.environ if env is None else env)
        self._cwd = cwd
        self._instances: dict[str, Observed] = {}
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._waiters: set[asyncio.Task[None]] = set()
        self._credentials: dict[str, str] = {}
        self._changed: Callable[[], None] = lambda: None

    async def start(self, changed: Callable[[], None]) -> None:
        self._changed = changed

    async def stop(self) -> None:
        """Stop every process this provisioner started: they ask to drain on SIGTERM."""
        for process in self._processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
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
        name = f"{runner.name}-{secrets.token_hex(3)}"
        env = {
            **self._env,
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
        waiter = asyncio.create_task(self._wait(name, process))
        self._waiters.add(waiter)
        waiter.add_done_callback(self._waiters.discard)
        return instance

    async def _wait(self, name: str, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
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
