"""HeatRuntime: claims tasks for the registered processors, runs them, heartbeats meanwhile,
posts their outcomes, reconnects when the scheduler goes away and drains when told to stop.

Bookkeeping, all in the event loop:

* ``_held``: every task this instance holds, from its arrival until its outcome is
  acknowledged (or it was cancelled, or its lease lost). A held task that ``counts`` takes one
  unit of capacity; free capacity is what ClaimStart offers. Where the connection the task
  came on returns credits with results, its posted result frees the slot and carries the
  credit back; otherwise the slot is freed once the outcome is acknowledged (or the task
  stopped with nothing to post) and a ClaimCredit grants it back.
* ``_pending``: outcomes posted and not yet acknowledged, each with the future its
  acknowledgement settles. They are re-posted on every new connection until acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeVar, Unpack, overload

import grpc.aio
from heat.scheduler.v1 import runner_service_pb2 as pb

from heat_runtime import _telemetry
from heat_runtime._config import RuntimeConfig, RuntimeSettings
from heat_runtime._context import TaskInfo, set_current
from heat_runtime._files import AttemptFiles, FileClient
from heat_runtime._hooks import Registration, registration
from heat_runtime._inputs import resolve_inputs
from heat_runtime._processing import Attempt, Outcome, Served, release, run_attempt
from heat_runtime._streams import Backoff, Connection, SchedulerRefused, StreamBroken
from heat_runtime._telemetry import NO_TRACING, Tracing
from heat_runtime._threads import HookThreads
from heat_runtime._values import struct_to_dict
from heat_runtime._version import VERSION

__all__ = ["EXIT_DRAINED", "EXIT_REFUSED", "HeatRuntime"]

log = logging.getLogger("heat_runtime")

EXIT_DRAINED: Final = 0
"""serve()'s result after a drain: every held task finished or was handed back."""
EXIT_REFUSED: Final = 3
"""serve()'s result when the scheduler refuses this instance (credential, address, version)."""

_T = TypeVar("_T")
_MIN_HEARTBEAT_INTERVAL: Final = 0.05
_CLOSE_TIMEOUT: Final = 2.0
_STABLE_CONNECTION: Final = 5.0
_WORKER_EXIT_TIMEOUT: Final = 1.0
_MAX_RECEIVE_BYTES: Final = 64 * 1024 * 1024
_MAX_TASKS_PER_MESSAGE: Final = 256
_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(eq=False, slots=True)
class _Held:
    task: pb.Task
    info: TaskInfo
    started: float
    counts: bool
    via: Connection | None = None  # the connection it came on
    slot_freed: bool = False  # its outcome was posted, or it stopped: the slot is free
    worker: asyncio.Task[None] | None = None
    # Why processing stops early: cancelled / lost (post nothing), draining (handed back).
    stop_reason: str | None = None
    # An outcome was decided for it: posted (result or release), or nothing to post.
    settled: bool = False


@dataclass(slots=True)
class _Pending:
    request: pb.PostResultRequest
    acknowledged: asyncio.Future[pb.PostResultResponse]


@dataclass(eq=False)
class _State:
    """What one serve() keeps; created inside the running loop."""

    loop: asyncio.AbstractEventLoop
    heartbeat_interval: float
    backoff: Backoff
    served: dict[str, Served]
    threads: HookThreads
    files: FileClient
    tracing: Tracing = NO_TRACING
    held: dict[str, _Held] = field(default_factory=dict)
    workers: set[asyncio.Task[None]] = field(default_factory=set)
    pending: dict[str, _Pending] = field(default_factory=dict)
    connection: Connection | None = None
    draining: bool = False
    drain_deadline: float = 0.0
    drain_started: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False
    reconnects: int = 0
    connected_at: float | None = None


class _Register(Protocol):
    def __call__(self, processor: _T, /) -> _T: ...


class _Registrar:
    """``register``: called on the class, it registers for every runtime of the process
    (HEAT's way; also a class decorator); called on an instance, for that one alone."""

    @overload
    def __get__(self, instance: None, owner: type[HeatRuntime]) -> _Register: ...
    @overload
    def __get__(
        self, instance: HeatRuntime, owner: type[HeatRuntime] | None = None
    ) -> _Register: ...
    def __get__(
        self, instance: HeatRuntime | None, owner: type[HeatRuntime] | None = None
    ) -> _Register:
        if instance is not None:
            return instance._register
        assert owner is not None

        def register(processor: _T, /) -> _T:
            """Serve ``processor`` (a class with TEMPLATE_NAME, validate() and process(), or an
            instance of one) from every runtime of this process. Returns it."""
            entry = registration(processor)
            for base in owner.__mro__[1:]:
                if "_class_registrations" in base.__dict__:  # refuses a clash, changes nothing
                    _add(dict(base.__dict__["_class_registrations"]), entry, base.__name__)
            _add(_class_registry(owner), entry, owner.__name__)
            return processor

        return register


def _class_registry(cls: type) -> dict[str, Registration]:
    registry: dict[str, Registration] | None = cls.__dict__.get("_class_registrations")
    if registry is None:
        registry = {}
        setattr(cls, "_class_registrations", registry)  # noqa: B010 - a class of its own
    return registry


def _add(registry: dict[str, Registration], entry: Registration, where: str) -> None:
    name = entry.plan.template
    known = registry.get(name)
    if known is not None and known.target is not entry.target:
        raise ValueError(
            f"a processor for node template {name!r} is already registered on {where}"
            f" ({_label(known.target)}); each template has one processor"
        )
    registry[name] = entry


def _label(target: object) -> str:
    return target.__name__ if isinstance(target, type) else f"{type(target).__name__}()"


class HeatRuntime:
    """Serves registered processors to the scheduler. HEAT's way::

        @HeatRuntime.register  # or HeatRuntime.register(SumProcessor) after the class
        class SumProcessor(BaseProcessor):
            TEMPLATE_NAME = "generic-sum-csv"
            ...


        HeatRuntime().init()  # settings from HEAT_* variables; blocks; returns after a drain

    ``HeatRuntime.register(...)`` takes a processor class (created when serving starts) or an
    instance, and returns it. Called on the class it registers for every runtime of the
    process; called on an instance (``runtime.register(...)``) for that runtime alone.

    Settings: ``HeatRuntime(**settings)`` reads the HEAT_* environment variables, the keyword
    arguments (RuntimeConfig's fields) winning over them; ``HeatRuntime(config)`` takes a
    RuntimeConfig as it is, with no environment. ``Runtime`` is the same class, ``run()`` the
    same method as ``init()``.
    """

    register = _Registrar()

    def __init__(
        self,
        config: RuntimeConfig | None = None,
        /,
        *,
        env: Mapping[str, str] | None = None,
        **settings: Unpack[RuntimeSettings],
    ) -> None:
        if config is None:
            config = RuntimeConfig.from_env(env, **settings)
        elif settings:
            config = replace(config, **settings)
        self._config = config
        self._registrations: dict[str, Registration] = {}
        self._state: _State | None = None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **settings: Unpack[RuntimeSettings]
    ) -> HeatRuntime:
        """A runtime configured by HEAT_* environment variables (``env``, default
        ``os.environ``), overridden by the keyword arguments. ConfigError names a bad one."""
        return cls(RuntimeConfig.from_env(env, **settings))

    @property
    def config(self) -> RuntimeConfig:
        return self._config

    @property
    def templates(self) -> list[str]:
        """Names of the Node Templates served, in registration order (the class's first)."""
        return list(self._merged())

    def _register(self, processor: _T, /) -> _T:
        """Serve ``processor`` (an instance or a class with TEMPLATE_NAME, validate() and
        process()) from this runtime. Returns it. Register everything before serving."""
        entry = registration(processor)
        if self._state is not None:
            raise RuntimeError(
                "register() after serving started: the scheduler was already told which"
                " templates this instance processes; register every processor before init()"
            )
        for owner, registry in self._class_registries():
            _add(dict(registry), entry, owner.__name__)  # refuses a clash, changes nothing
        _add(self._registrations, entry, "this runtime")
        return processor

    def _class_registries(self) -> list[tuple[type, dict[str, Registration]]]:
        """What was registered on this runtime's class and its bases, base first."""
        return [
            (cls, cls.__dict__["_class_registrations"])
            for cls in reversed(type(self).__mro__)
            if "_class_registrations" in cls.__dict__
        ]

    def _merged(self) -> dict[str, Registration]:
        merged: dict[str, Registration] = {}
        for owner, registry in self._class_registries():
            for entry in registry.values():
                _add(merged, entry, owner.__name__)
        for entry in self._registrations.values():
            _add(merged, entry, "this runtime")
        return merged

    # --- running ----------------------------------------------------------------------------

    def init(self) -> None:
        """Serve until drained (SIGTERM, SIGINT or the scheduler's drain request), then return.

        Sets up logging at HEAT_LOG_LEVEL when the application has not. When the scheduler
        refuses this instance (bad credential, wrong address), logs why and exits with
        status 3 (SystemExit). It blocks, so call it outside any event loop; inside one,
        ``await runtime.serve()``.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "init() blocks until the runtime is drained and cannot run inside an event"
                " loop; from a coroutine, await runtime.serve() instead"
            )
        logging.getLogger("heat_runtime").setLevel(self._config.log_level)
        if not logging.getLogger().handlers:
            logging.basicConfig(level=self._config.log_level, format=_LOG_FORMAT)
        code = asyncio.run(self.serve())
        if code != EXIT_DRAINED:
            raise SystemExit(code)

    run = init

    async def serve(self, *, handle_signals: bool = True) -> int:
        """Serve until drained; returns 0 then, or 3 when the scheduler refuses this instance.

        ``handle_signals``: SIGTERM and SIGINT start a drain (a second one hands held tasks
        back at once); possible only in the main thread.
        """
        if self._state is not None:
            raise RuntimeError("this runtime is already serving")
        registrations = self._merged()
        if not registrations:
            raise RuntimeError(
                "no processor registered; call HeatRuntime.register(MyProcessor) before init()"
            )
        served = {name: Served(r.instance(), r.plan) for name, r in registrations.items()}
        loop = asyncio.get_running_loop()
        state = _State(
            loop=loop,
            heartbeat_interval=self._config.heartbeat_interval,
            backoff=Backoff(self._config.reconnect_initial, self._config.reconnect_max),
            served=served,
            threads=HookThreads(self._config.capacity),
            tracing=_telemetry.setup(self._config.runner, self._config.instance_id),
            files=FileClient(
                self._config.address,
                self._metadata(),
                self._channel_options(),
                inline_bytes=self._config.inline_file_bytes,
                tls=self._tls(),
            ),
        )
        self._state = state
        # What is alive now (modules, the processors, OpenTelemetry's SDK and exporter when
        # tracing) lives as long as the process: out of the collector's reach, so a full
        # collection walks only what the tasks made (with tracing on it walked twice the heap).
        gc.collect()
        gc.freeze()
        logging.getLogger("heat_runtime").setLevel(self._config.log_level)
        signals = self._install_signals(loop) if handle_signals else []
        log.info(
            "runner starting runner=%s instance_id=%s scheduler=%s capacity=%d templates=%s"
            " runtime_version=%s",
            self._config.runner,
            self._config.instance_id,
            self._config.address,
            self._config.capacity,
            ",".join(served),
            VERSION,
        )
        supervisor = asyncio.create_task(self._supervise(), name="heat-runtime-connection")
        drainer = asyncio.create_task(self._drain(), name="heat-runtime-drain")
        try:
            await asyncio.wait({supervisor, drainer}, return_when=asyncio.FIRST_COMPLETED)
            if drainer.done():
                drainer.result()
                await self._close(supervisor)
                log.info("drained; exiting instance_id=%s", self._config.instance_id)
                return EXIT_DRAINED
            try:
                supervisor.result()
            except SchedulerRefused as refusal:
                log.error("the scheduler refused this instance; exiting: %s", refusal)
                return EXIT_REFUSED
            raise AssertionError("the connection supervisor ended on its own")  # pragma: no cover
        finally:
            for task in (supervisor, drainer):
                task.cancel()
            await asyncio.wait({supervisor, drainer})
            await self._stop_workers()
            state.threads.close()
            await asyncio.to_thread(state.tracing.shutdown)
            await state.files.close()
            for signum in signals:
                loop.remove_signal_handler(signum)
            self._state = None

    def drain(self, reason: str = "requested", deadline: datetime | None = None) -> None:
        """Stop claiming; let held tasks finish until HEAT_DRAIN_TIMEOUT (or ``deadline``,
        whichever is sooner), then hand back what still runs; serve() then returns 0.
        Call it from the event loop serve() runs in."""
        epoch = None
        if deadline is not None:
            epoch = (deadline if deadline.tzinfo else deadline.replace(tzinfo=UTC)).timestamp()
        self._begin_drain(reason, epoch)

    # --- connections ------------------------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        credential = self._config.credential
        return (("authorization", f"Bearer {credential}"),) if credential else ()

    @staticmethod
    def _channel_options() -> list[tuple[str, Any]]:
        return [
            ("grpc.primary_user_agent", f"heat-runtime/{VERSION}"),
            ("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES),
            # A scheduler that vanished without closing (node lost, NAT entry dropped) is
            # noticed within 40 s, not at the next heartbeat's TCP timeout; the scheduler
            # accepts pings every 10 s or more.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ]

    def _tls(self) -> grpc.ChannelCredentials | None:
        """The channel credentials of HEAT_TLS_CA/CERT/KEY, or None for plaintext."""
        if not self._config.tls:
            return None
        root, key, chain = self._config.tls_files()
        return grpc.ssl_channel_credentials(root, key, chain)

    async def _supervise(self) -> None:
        state = self._running()
        metadata = self._metadata()
        options = self._channel_options()
        tls = self._tls()
        while not state.closing:
            channel = (
                grpc.aio.secure_channel(self._config.address, tls, options=options)
                if tls is not None
                else grpc.aio.insecure_channel(self._config.address, options=options)
            )
            claim_start = None
            if not state.draining:
                claim_start = pb.ClaimStart(
                    runner=self._config.runner,
                    instance_id=self._config.instance_id,
                    credits=self._free_capacity(),
                    node_templates=list(state.served),
                    runtime_version=VERSION,
                    max_tasks_per_message=min(self._config.capacity, _MAX_TASKS_PER_MESSAGE),
                    credits_with_results=True,
                )
            connection = Connection(
                channel,
                metadata,
                _Listener(self),
                claim_start=claim_start,
                results=[pending.request for pending in state.pending.values()],
            )
            state.connection = connection
            try:
                await connection.run()
                reason = "the scheduler ended the streams"
            except StreamBroken as broken:
                reason = str(broken)
            finally:
                state.connection = None
                await channel.close()
            if state.closing:
                return
            if state.connected_at is not None:
                # A connection that held up a while resets the backoff; one that failed at
                # once (the scheduler answers, then drops the streams) keeps it growing.
                if state.loop.time() - state.connected_at >= _STABLE_CONNECTION:
                    state.backoff.reset()
                state.connected_at = None
            delay = state.backoff.next()
            state.reconnects += 1
            log.log(
                logging.WARNING if state.reconnects == 1 else logging.INFO,
                "scheduler connection lost (%s); reconnecting in %.2fs attempt=%d held=%d"
                " unacknowledged=%d",
                reason,
                delay,
                state.reconnects,
                len(state.held),
                len(state.pending),
            )
            await asyncio.sleep(delay)

    def _connected(self) -> None:
        state = self._running()
        state.connected_at = state.loop.time()
        if state.reconnects:
            log.info(
                "reconnected to the scheduler at %s after %d attempts; %d results re-posted",
                self._config.address,
                state.reconnects,
                len(state.pending),
            )
        else:
            log.info("connected to the scheduler at %s", self._config.address)
        state.reconnects = 0

    async def _close(self, supervisor: asyncio.Task[None]) -> None:
        state = self._running()
        state.closing = True
        if state.connection is not None:
            state.connection.close()
        done, _ = await asyncio.wait({supervisor}, timeout=_CLOSE_TIMEOUT)
        if not done:
            log.debug("the scheduler kept the streams open after they were closed; dropping")

    # --- tasks ------------------------------------------------------------------------------

    def _on_task(self, task: pb.Task) -> None:
        state = self._running()
        if task.attempt_id in state.held:
            # It used a credit of the scheduler's count but takes no slot here: give it back.
            log.warning("task received twice; ignoring attempt_id=%s", task.attempt_id)
            if not state.draining and state.connection is not None:
                state.connection.grant(1)
            return
        if task.HasField("heartbeat_interval"):
            self._adopt_interval(task.heartbeat_interval.ToTimedelta().total_seconds())
        over = not state.draining and self._free_capacity() <= 0
        held = _Held(
            task=task,
            info=_task_info(task),
            started=state.loop.time(),
            counts=not (state.draining or over),
            via=state.connection,
        )
        state.held[task.attempt_id] = held
        if not held.counts:
            reason = "draining" if state.draining else "over capacity"
            log.warning(
                "handing back a task received while %s attempt_id=%s node_key=%s",
                reason,
                task.attempt_id,
                task.node_key,
            )
            held.settled = True
            self._post(held, release(task.attempt_id, reason))
            return
        log.info(
            "task started attempt_id=%s session=%s node_key=%s template=%s attempt=%d",
            task.attempt_id,
            task.session,
            task.node_key,
            task.node_template,
            task.attempt,
        )
        held.worker = state.loop.create_task(self._work(held), name=f"heat-task-{task.attempt_id}")
        state.workers.add(held.worker)
        held.worker.add_done_callback(state.workers.discard)

    async def _work(self, held: _Held) -> None:
        state = self._running()
        task = held.task
        set_current(held.info)
        deadline = None
        if task.HasField("attempt_deadline"):
            remaining = task.attempt_deadline.ToNanoseconds() / 1e9 - time.time()
            deadline = state.loop.time() + remaining
        outcome: Outcome | None = None
        files = AttemptFiles(state.files, task.attempt_id)
        attempt = Attempt(
            attempt_id=task.attempt_id,
            node_template=task.node_template,
            config=struct_to_dict(task.config),
            inputs=functools.partial(resolve_inputs, task, files),
            stop=held.info.stop_event,
            files=files,
        )
        attributes = {
            "heat.session": task.session,
            "heat.node.key": task.node_key,
            "heat.node_template": task.node_template,
            "heat.attempt": task.attempt,
            "heat.attempt_id": task.attempt_id,
            "heat.runner": self._config.runner,
            "heat.instance_id": self._config.instance_id,
        }
        with state.tracing.attempt(task.node_template, task.trace_context, attributes) as span:
            try:
                outcome = await run_attempt(
                    state.served.get(task.node_template),
                    attempt,
                    known_templates=list(state.served),
                    deadline=deadline,
                    max_result_bytes=self._config.max_result_bytes,
                    threads=state.threads,
                    tracing=state.tracing,
                )
            except asyncio.CancelledError:
                if held.stop_reason is None:
                    raise
            finally:
                files.close()
            if outcome is None:
                state.tracing.finished(span, f"stopped-{held.stop_reason}", "")
            else:
                state.tracing.finished(span, outcome.label, outcome.message)
        duration = state.loop.time() - held.started
        if held.stop_reason is not None or outcome is None:
            log.info(
                "task stopped attempt_id=%s node_key=%s reason=%s duration=%.3fs",
                task.attempt_id,
                task.node_key,
                held.stop_reason,
                duration,
            )
            if held.stop_reason in ("cancelled", "lost"):
                self._forget(held)
            return
        level = logging.INFO if outcome.label == "success" else logging.WARNING
        log.log(
            level,
            "task finished attempt_id=%s node_key=%s template=%s outcome=%s duration=%.3fs%s",
            task.attempt_id,
            task.node_key,
            task.node_template,
            outcome.label,
            duration,
            f" message={outcome.message!r}" if outcome.message else "",
            exc_info=outcome.error,
        )
        held.settled = True
        self._post(held, outcome.request)

    def _post(self, held: _Held, request: pb.PostResultRequest) -> None:
        state = self._running()
        state.pending[held.task.attempt_id] = _Pending(request, state.loop.create_future())
        connection = state.connection
        # Where the task's own connection (still the current one) takes credits back with
        # results, the result frees the slot and returns the credit itself (a hand-back never
        # does). Elsewhere the slot stays taken until the outcome is acknowledged.
        if (
            connection is not None
            and held.via is connection
            and connection.credits_with_results
            and request.WhichOneof("outcome") != "release"
        ):
            self._free_slot(held, grant=False)
        if connection is not None:
            connection.post(request)
        state.changed.set()

    def _on_started(self, started: pb.ClaimStarted) -> None:
        log.debug(
            "the scheduler grants tasks_per_message=%d credits_with_results=%s result_batches=%s",
            started.max_tasks_per_message,
            started.credits_with_results,
            started.result_batches,
        )

    def _on_result(self, response: pb.PostResultResponse) -> None:
        if response.batch:
            for entry in response.batch:
                self._on_verdict(entry)
        else:
            self._on_verdict(response)

    def _on_verdict(self, response: pb.PostResultResponse) -> None:
        state = self._running()
        pending = state.pending.pop(response.attempt_id, None)
        if pending is None:
            log.debug("acknowledgement of no pending result attempt_id=%s", response.attempt_id)
            return
        if not pending.acknowledged.done():
            pending.acknowledged.set_result(response)
        verdict = pb.ResultStatus.Name(response.status).removeprefix("RESULT_STATUS_")
        if response.status == pb.RESULT_STATUS_ACCEPTED:
            log.debug("result accepted attempt_id=%s", response.attempt_id)
        else:
            log.warning(
                "the scheduler did not accept the result attempt_id=%s verdict=%s: %s",
                response.attempt_id,
                verdict,
                response.message or "(no message)",
            )
        held = state.held.get(response.attempt_id)
        if held is not None:
            self._forget(held)

    def _stop(self, attempt_id: str, reason: str, why: str) -> None:
        """Stop a held task the scheduler no longer wants (cancelled, lease lost): post
        nothing for it."""
        state = self._running()
        held = state.held.get(attempt_id)
        if held is None or held.stop_reason in ("cancelled", "lost"):
            return
        held.stop_reason = reason
        log.info(
            "stopping task attempt_id=%s node_key=%s reason=%s: %s",
            attempt_id,
            held.task.node_key,
            reason,
            why or "(no reason given)",
        )
        if held.worker is not None and not held.worker.done():
            held.worker.cancel()
            return  # _work forgets it once process() has stopped
        # Already settled: its outcome will not be taken; stop re-posting it.
        pending = state.pending.pop(attempt_id, None)
        if pending is not None:
            pending.acknowledged.cancel()
        self._forget(held)

    def _forget(self, held: _Held) -> None:
        """The task is no longer held: its slot (if still taken) is free, its credit back."""
        state = self._running()
        if state.held.pop(held.task.attempt_id, None) is None:
            return
        self._free_slot(held, grant=True)
        state.changed.set()

    def _free_slot(self, held: _Held, *, grant: bool) -> None:
        """Free the task's slot once; ``grant``: give its credit back as a ClaimCredit."""
        state = self._running()
        if not held.counts or held.slot_freed:
            return
        held.slot_freed = True
        if grant and not state.draining and state.connection is not None:
            state.connection.grant(1)

    def _free_capacity(self) -> int:
        state = self._running()
        used = sum(1 for held in state.held.values() if held.counts and not held.slot_freed)
        return max(0, self._config.capacity - used)

    def _heartbeat_request(self) -> pb.HeartbeatRequest:
        state = self._running()
        return pb.HeartbeatRequest(
            instance_id=self._config.instance_id,
            attempt_ids=[
                attempt_id
                for attempt_id, held in state.held.items()
                if held.stop_reason not in ("cancelled", "lost")
            ],
        )

    def _on_heartbeat(self, response: pb.HeartbeatResponse) -> None:
        if response.HasField("heartbeat_interval"):
            self._adopt_interval(response.heartbeat_interval.ToTimedelta().total_seconds())
        for cancellation in response.cancellations:
            self._stop(cancellation.attempt_id, "cancelled", cancellation.reason)
        for attempt_id in response.lost_attempt_ids:
            self._stop(attempt_id, "lost", "the lease is gone; a result would be rejected")
        if response.HasField("drain"):
            self._on_drain(response.drain)

    def _adopt_interval(self, seconds: float) -> None:
        state = self._running()
        if seconds <= 0:
            return
        seconds = max(seconds, _MIN_HEARTBEAT_INTERVAL)
        if seconds != state.heartbeat_interval:
            log.debug("heartbeat interval %.3fs (was %.3fs)", seconds, state.heartbeat_interval)
            state.heartbeat_interval = seconds
            if state.connection is not None:
                state.connection.wake_heartbeat()

    async def _stop_workers(self) -> None:
        state = self._state
        if state is None:
            return
        workers = [worker for worker in state.workers if not worker.done()]
        for held in state.held.values():
            held.stop_reason = held.stop_reason or "shutdown"
        for worker in workers:
            worker.cancel()
        if workers:
            # A processor that swallows cancellation is not waited for.
            await asyncio.wait(workers, timeout=_WORKER_EXIT_TIMEOUT)
        for pending in state.pending.values():
            pending.acknowledged.cancel()

    # --- draining ---------------------------------------------------------------------------

    def _on_drain(self, request: pb.DrainRequest) -> None:
        epoch = request.deadline.ToNanoseconds() / 1e9 if request.HasField("deadline") else None
        self._begin_drain(f"the scheduler asked: {request.reason or 'no reason given'}", epoch)

    def _begin_drain(self, reason: str, deadline_epoch: float | None) -> None:
        state = self._running()
        now = state.loop.time()
        limit = now + self._config.drain_timeout
        if deadline_epoch is not None:
            limit = min(limit, now + deadline_epoch - time.time())
        if state.draining:
            if limit < state.drain_deadline:
                state.drain_deadline = limit
                state.changed.set()
            return
        state.draining = True
        state.drain_deadline = limit
        running = sum(1 for held in state.held.values() if not held.settled)
        log.info(
            "draining (%s): claiming stopped; %d running tasks get %.1fs to finish",
            reason,
            running,
            max(0.0, limit - now),
        )
        if state.connection is not None:
            state.connection.stop_claiming()
        state.drain_started.set()

    def _on_signal(self, signum: int) -> None:
        state = self._running()
        name = signal.Signals(signum).name
        if not state.draining:
            self._begin_drain(name, None)
            return
        log.warning("%s while draining: handing back the held tasks now", name)
        state.drain_deadline = state.loop.time()
        state.changed.set()

    async def _drain(self) -> None:
        state = self._running()
        await state.drain_started.wait()
        # 1. Held tasks finish, until the drain deadline.
        while self._still_running():
            if not await self._wait_changed(state.drain_deadline):
                break
        # 2. What still runs is cancelled and handed back, not counted as an attempt.
        for held in list(state.held.values()):
            if held.settled or held.stop_reason is not None:
                continue
            held.stop_reason = "draining"
            held.settled = True
            log.info(
                "handing back task attempt_id=%s node_key=%s (drain deadline)",
                held.task.attempt_id,
                held.task.node_key,
            )
            self._post(held, release(held.task.attempt_id, "draining"))
            if held.worker is not None:
                held.worker.cancel()
        # 3. The scheduler acknowledges every result and hand-back.
        acks_deadline = state.loop.time() + self._config.ack_grace
        while state.pending:
            remaining = acks_deadline - state.loop.time()
            if remaining > 0:
                waiting = [pending.acknowledged for pending in state.pending.values()]
                await asyncio.wait(waiting, timeout=remaining)
            else:
                log.warning(
                    "the scheduler did not acknowledge %d results within %.1fs; exiting"
                    " anyway, their leases will expire attempt_ids=%s",
                    len(state.pending),
                    self._config.ack_grace,
                    ",".join(state.pending),
                )
                break

    def _still_running(self) -> bool:
        state = self._running()
        return any(not h.settled and h.stop_reason is None for h in state.held.values())

    async def _wait_changed(self, deadline: float) -> bool:
        """Wait for a change of the bookkeeping until ``deadline`` (loop time); False once
        the deadline has passed."""
        state = self._running()
        remaining = deadline - state.loop.time()
        if remaining <= 0:
            return False
        state.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.changed.wait(), remaining)
        return True

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signals on this platform
            installed.append(signum)
        return installed

    def _running(self) -> _State:
        if self._state is None:
            raise RuntimeError("the runtime is not serving; call it from within serve()")
        return self._state


class _Listener:
    """The runtime as a connection sees it."""

    def __init__(self, runtime: HeatRuntime) -> None:
        self._runtime = runtime

    @property
    def draining(self) -> bool:
        return self._runtime._running().draining

    def heartbeat_request(self) -> pb.HeartbeatRequest:
        return self._runtime._heartbeat_request()

    def heartbeat_interval(self) -> float:
        return self._runtime._running().heartbeat_interval

    def on_connected(self) -> None:
        self._runtime._connected()

    def on_started(self, started: pb.ClaimStarted) -> None:
        self._runtime._on_started(started)

    def on_task(self, task: pb.Task) -> None:
        self._runtime._on_task(task)

    def on_drain(self, request: pb.DrainRequest) -> None:
        self._runtime._on_drain(request)

    def on_heartbeat(self, response: pb.HeartbeatResponse) -> None:
        self._runtime._on_heartbeat(response)

    def on_result(self, response: pb.PostResultResponse) -> None:
        self._runtime._on_result(response)


def _task_info(task: pb.Task) -> TaskInfo:
    deadline = None
    if task.HasField("attempt_deadline"):
        deadline = task.attempt_deadline.ToDatetime(tzinfo=UTC)
    parameters: dict[str, Any] = struct_to_dict(task.parameters)
    return TaskInfo(
        attempt_id=task.attempt_id,
        session=task.session,
        node_key=task.node_key,
        node_template=task.node_template,
        attempt=task.attempt,
        parameters=parameters,
        trace_context=dict(task.trace_context),
        attempt_deadline=deadline,
    )
