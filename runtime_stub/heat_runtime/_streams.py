"""One connection to the scheduler: RunnerService's three streams over one channel.

``Connection.run()`` opens ClaimTask, Heartbeat and PostResult, feeds what arrives to a
``Listener`` and writes what the runtime queues, until the runtime closes it (returns) or a
stream fails: ``SchedulerRefused`` for an answer retrying cannot change (bad credential,
unknown service), ``StreamBroken`` for anything a reconnect may cure.

Fewer messages: the ClaimStart asks for tasks in batches and for credits returned with
results; what the scheduler grants (its ClaimStarted, the stream's first answer) holds for the
connection. Where it grants result batches, the outcomes queued while one message is written
go out together in the next, and credits queued together go out as one ClaimCredit. A
scheduler that grants nothing (the first version of the protocol) is spoken to as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Protocol, TypeVar

import grpc
import grpc.aio
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import runner_service_pb2_grpc as pb_grpc

__all__ = ["Backoff", "Connection", "Listener", "SchedulerRefused", "StreamBroken"]

_R = TypeVar("_R")
_Q = TypeVar("_Q")

# Codes that say the scheduler will not serve this instance as it is configured.
_REFUSALS: Final = {
    grpc.StatusCode.UNAUTHENTICATED: "the scheduler does not accept the runner's credential"
    " (check HEAT_RUNNER_CREDENTIAL: a secret from IssueRunnerCredential for this Runner)",
    grpc.StatusCode.PERMISSION_DENIED: "the runner's credential does not allow this"
    " (check HEAT_RUNNER and HEAT_RUNNER_CREDENTIAL: the credential must be the Runner's own)",
    grpc.StatusCode.UNIMPLEMENTED: "the server at this address does not serve"
    " heat.scheduler.v1.RunnerService (check HEAT_SCHEDULER_ADDRESS and the scheduler's version)",
    grpc.StatusCode.INVALID_ARGUMENT: "the scheduler rejects what this instance sends"
    " (check HEAT_RUNNER, HEAT_INSTANCE_ID and the registered processors)",
}
# The most outcomes written in one PostResult message (the scheduler takes up to 1,000).
MAX_RESULTS_PER_MESSAGE: Final = 256
# A heartbeat stream this long without an answer is taken for a dead connection.
_SILENCE_INTERVALS: Final = 2.0
_SILENCE_SLACK: Final = 5.0
_RANDOM: Final = random.SystemRandom()


class StreamBroken(Exception):
    """A stream failed or ended early; reconnecting may cure it."""


class SchedulerRefused(Exception):
    """The scheduler refused this instance; retrying with the same settings cannot help."""

    def __init__(self, stream: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(
            f"{_REFUSALS.get(code, 'the scheduler refused this instance')}:"
            f" {stream} stream ended with {code.name}: {details or '(no details)'}"
        )
        self.stream = stream
        self.code = code
        self.details = details


def _ended(stream: str, code: grpc.StatusCode, details: str | None) -> Exception:
    if code in _REFUSALS:
        return SchedulerRefused(stream, code, details or "")
    if code == grpc.StatusCode.OK:
        return StreamBroken(f"the scheduler ended the {stream} stream")
    return StreamBroken(f"{stream} stream: {code.name}: {details or '(no details)'}")


class Backoff:
    """Delays between reconnection attempts: doubling from ``initial`` up to ``cap``, each
    drawn from the upper half of its step (equal jitter) so instances do not reconnect in
    lockstep after a scheduler restart."""

    def __init__(self, initial: float, cap: float) -> None:
        self._initial = initial
        self._cap = cap
        self._failures = 0

    def next(self) -> float:
        step = min(self._cap, self._initial * 2.0 ** min(self._failures, 30))
        self._failures += 1
        return step / 2 + _RANDOM.uniform(0, step / 2)

    def reset(self) -> None:
        self._failures = 0


class Listener(Protocol):
    """What a connection asks of, and tells, the runtime. Called in the event loop."""

    @property
    def draining(self) -> bool: ...
    def heartbeat_request(self) -> pb.HeartbeatRequest: ...
    def heartbeat_interval(self) -> float: ...
    def on_connected(self) -> None: ...
    def on_started(self, started: pb.ClaimStarted) -> None: ...
    def on_task(self, task: pb.Task) -> None: ...
    def on_drain(self, request: pb.DrainRequest) -> None: ...
    def on_heartbeat(self, response: pb.HeartbeatResponse) -> None: ...
    def on_result(self, response: pb.PostResultResponse) -> None: ...


class Connection:
    """The three streams of one connection. The queue-feeding methods never block, so the
    runtime can call them from synchronous callbacks; writers drain the queues in order."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: tuple[tuple[str, str], ...],
        listener: Listener,
        *,
        claim_start: pb.ClaimStart | None,
        results: Iterable[pb.PostResultRequest],
    ) -> None:
        self._stub = pb_grpc.RunnerServiceStub(channel)
        self._metadata = metadata
        self._listener = listener
        self._claims: asyncio.Queue[pb.ClaimTaskRequest | None] = asyncio.Queue()
        self._results: asyncio.Queue[pb.PostResultRequest | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._claiming = claim_start is not None
        self._closing = False
        self._connected = False
        self._started = pb.ClaimStarted()  # what the scheduler granted: nothing yet
        self._unanswered_since: float | None = None
        if claim_start is not None:
            self._claims.put_nowait(pb.ClaimTaskRequest(start=claim_start))
        for request in results:
            self._results.put_nowait(request)

    @property
    def credits_with_results(self) -> bool:
        """Whether outcomes posted for this connection's tasks return their credits."""
        return self._started.credits_with_results

    # --- what the runtime queues -------------------------------------------------------------

    def grant(self, credits: int) -> None:
        """More credits on the ClaimTask stream, unless it no longer claims."""
        if self._claiming and credits > 0:
            self._claims.put_nowait(pb.ClaimTaskRequest(credit=pb.ClaimCredit(credits=credits)))

    def stop_claiming(self) -> None:
        """Half-close the ClaimTask stream: no more tasks, no more credits."""
        if self._claiming:
            self._claiming = False
            self._claims.put_nowait(None)

    def post(self, request: pb.PostResultRequest) -> None:
        self._results.put_nowait(request)

    def wake_heartbeat(self) -> None:
        """Re-read the heartbeat interval now (it changed)."""
        self._wake.set()

    def close(self) -> None:
        """Half-close every stream; ``run()`` returns once the scheduler has ended them."""
        self._closing = True
        self.stop_claiming()
        self._results.put_nowait(None)
        self._wake.set()

    # --- the streams ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the streams until closed (returns) or one fails (raises)."""
        metadata = self._metadata or None
        calls: list[grpc.aio.Call] = []
        try:
            async with asyncio.TaskGroup() as group:
                heartbeat = self._stub.Heartbeat(metadata=metadata)
                calls.append(heartbeat)
                group.create_task(self._heartbeats(heartbeat))
                group.create_task(
                    self._read(
                        heartbeat,
                        "Heartbeat",
                        pb.HeartbeatResponse,
                        self._on_heartbeat,
                        lambda: self._closing,
                    )
                )
                results = self._stub.PostResult(metadata=metadata)
                calls.append(results)
                group.create_task(self._write_results(results))
                group.create_task(
                    self._read(
                        results,
                        "PostResult",
                        pb.PostResultResponse,
                        self._listener.on_result,
                        lambda: self._closing,
                    )
                )
                if self._claiming:
                    claims = self._stub.ClaimTask(metadata=metadata)
                    calls.append(claims)
                    group.create_task(self._write_claims(claims))
                    group.create_task(
                        self._read(
                            claims,
                            "ClaimTask",
                            pb.ClaimTaskResponse,
                            self._on_claim,
                            lambda: self._closing or self._listener.draining,
                        )
                    )
        except BaseExceptionGroup as failures:
            raise _most_telling(failures) from None
        finally:
            for call in calls:
                call.cancel()

    def _on_claim(self, response: pb.ClaimTaskResponse) -> None:
        kind = response.WhichOneof("response")
        if kind == "task":
            self._listener.on_task(response.task)
        elif kind == "tasks":
            for task in response.tasks.tasks:
                self._listener.on_task(task)
        elif kind == "started":
            self._started = response.started
            self._listener.on_started(response.started)
        elif kind == "drain":
            self._listener.on_drain(response.drain)

    def _on_heartbeat(self, response: pb.HeartbeatResponse) -> None:
        self._unanswered_since = None
        self._listener.on_heartbeat(response)

    async def _read(
        self,
        call: grpc.aio.StreamStreamCall[_Q, _R],
        stream: str,
        kind: type[_R],
        handle: Callable[[_R], None],
        may_end: Callable[[], bool],
    ) -> None:
        while True:
            try:
                message = await call.read()
            except grpc.aio.AioRpcError as error:
                raise _ended(stream, error.code(), error.details()) from None
            if message is grpc.aio.EOF:
                code = await call.code()
                if code == grpc.StatusCode.OK and may_end():
                    return
                raise _ended(stream, code, await call.details())
            if not isinstance(message, kind):  # pragma: no cover - the stub's type
                raise StreamBroken(f"{stream} stream: unexpected {type(message).__name__}")
            if not self._connected:
                self._connected = True
                self._listener.on_connected()
            handle(message)

    async def _write_claims(
        self, call: grpc.aio.StreamStreamCall[pb.ClaimTaskRequest, pb.ClaimTaskResponse]
    ) -> None:
        """The ClaimStart, then credits: those queued together go out as one ClaimCredit."""
        while True:
            message = await self._claims.get()
            ended = message is None
            if message is not None and message.WhichOneof("request") == "credit":
                credits = message.credit.credits
                while not self._claims.empty():
                    following = self._claims.get_nowait()
                    if following is None:
                        ended = True
                        break
                    credits += following.credit.credits
                message = pb.ClaimTaskRequest(credit=pb.ClaimCredit(credits=credits))
            if message is not None:
                await self._send(call, "ClaimTask", functools.partial(call.write, message))
            if ended:
                await self._send(call, "ClaimTask", call.done_writing)
                return

    async def _write_results(
        self, call: grpc.aio.StreamStreamCall[pb.PostResultRequest, pb.PostResultResponse]
    ) -> None:
        """Outcomes in order; where the scheduler takes batches, those queued while the last
        message was written go out together."""
        while True:
            message = await self._results.get()
            ended = message is None
            batch = [] if message is None else [message]
            while (
                batch
                and self._started.result_batches
                and len(batch) < MAX_RESULTS_PER_MESSAGE
                and not self._results.empty()
            ):
                following = self._results.get_nowait()
                if following is None:
                    ended = True
                    break
                batch.append(following)
            if len(batch) == 1:
                await self._send(call, "PostResult", functools.partial(call.write, batch[0]))
            elif batch:
                request = pb.PostResultRequest(batch=batch)
                await self._send(call, "PostResult", functools.partial(call.write, request))
            if ended:
                await self._send(call, "PostResult", call.done_writing)
                return

    async def _send(
        self,
        call: grpc.aio.StreamStreamCall[_Q, _R],
        stream: str,
        action: Callable[[], Awaitable[None]],
    ) -> None:
        try:
            await action()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            # The call is over: its status says why (the reader usually reports it first).
            raise _ended(stream, await call.code(), await call.details()) from None

    async def _heartbeats(
        self, call: grpc.aio.StreamStreamCall[pb.HeartbeatRequest, pb.HeartbeatResponse]
    ) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            interval = self._listener.heartbeat_interval()
            since = self._unanswered_since
            silent = 0.0 if since is None else loop.time() - since
            if silent > _SILENCE_INTERVALS * interval + _SILENCE_SLACK:
                raise StreamBroken(f"no answer to heartbeats for {silent:.1f}s")
            request = self._listener.heartbeat_request()
            await self._send(call, "Heartbeat", functools.partial(call.write, request))
            sent = loop.time()
            if self._unanswered_since is None:
                self._unanswered_since = sent
            while not self._closing:
                remaining = sent + self._listener.heartbeat_interval() - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
        await self._send(call, "Heartbeat", call.done_writing)


def _most_telling(failures: BaseExceptionGroup[BaseException]) -> BaseException:
    """A refusal over a broken stream over anything else (a bug: re-raised as it is)."""
    leaves = list(_leaves(failures))
    for kind in (SchedulerRefused, StreamBroken):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return failures


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterable[BaseException]:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error
