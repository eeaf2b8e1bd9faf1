"""A runner process built on heat_runtime with a no-op processor, for the benchmarks.

Configured like any runner (HEAT_SCHEDULER_ADDRESS, HEAT_RUNNER, HEAT_RUNNER_CREDENTIAL,
HEAT_CAPACITY, HEAT_INSTANCE_ID). It prints ``ready`` once imported and waits for a ``go``
line on stdin before connecting, so a harness can let many processes go at the same moment.

With HEAT_BENCH_RECORD set, each process() call appends ``<session>\\t<node key>\\t<time.time()>``
(taken as process() starts) to that file, written when the process exits. With
HEAT_BENCH_MESSAGES set, the messages of each stream each way (``ClaimTask sent``,
``PostResult received``...) are counted and written to that file as JSON when it exits. A node
whose configuration has ``sleep_ms`` takes that long (asyncio.sleep), to stand for real work.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from heat_runtime import Runtime, _streams, _telemetry, current_task


class NoOp:
    TEMPLATE_NAME = "noop"

    def __init__(self, record: list[tuple[str, str, float]] | None) -> None:
        self._record = record

    async def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> None:
        return None

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        if self._record is not None:
            now = time.time()
            task = current_task()
            self._record.append((task.session, task.node_key, now))
        if config.get("sleep_ms"):
            await asyncio.sleep(float(config["sleep_ms"]) / 1000)
        return None


def count_messages(counts: Counter[str]) -> None:
    """Count every message the runtime's streams write and read, per stream and way. The
    runtime is left as it is: its connection's one write step and one read step are wrapped."""
    send = _streams.Connection._send
    read = _streams.Connection._read

    async def counted_send(self: Any, call: Any, stream: str, action: Any) -> None:
        if isinstance(action, functools.partial):  # a write; done_writing sends no message
            counts[f"{stream} sent"] += 1
        await send(self, call, stream, action)

    async def counted_read(
        self: Any, call: Any, stream: str, kind: Any, handle: Callable[[Any], None], *rest: Any
    ) -> None:
        def counted(message: Any) -> None:
            counts[f"{stream} received"] += 1
            handle(message)

        await read(self, call, stream, kind, counted, *rest)

    _streams.Connection._send = counted_send  # type: ignore[method-assign]
    _streams.Connection._read = counted_read  # type: ignore[method-assign,assignment]


def main() -> None:
    path = os.environ.get("HEAT_BENCH_RECORD")
    messages_path = os.environ.get("HEAT_BENCH_MESSAGES")
    counts: Counter[str] = Counter()
    if messages_path:
        count_messages(counts)
    record: list[tuple[str, str, float]] | None = [] if path else None
    runtime = Runtime.from_env()
    runtime.register(NoOp(record))
    if _telemetry._wanted(os.environ):
        # What serve() would import as it starts tracing (the SDK, the OTLP exporter: about a
        # third of a second of CPU per process), imported now, so no process's start-up runs
        # inside a measured window while other processes already work.
        importlib.import_module("opentelemetry.sdk.trace")
        importlib.import_module("opentelemetry.sdk.trace.export")
        importlib.import_module("opentelemetry.sdk.resources")
        importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
        importlib.import_module("opentelemetry.trace.propagation.tracecontext")
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    try:
        runtime.run()
    finally:
        if path and record is not None:
            with open(path, "w") as out:  # noqa: PTH123
                out.writelines(f"{s}\t{k}\t{t:.6f}\n" for s, k, t in record)
        if messages_path:
            with open(messages_path, "w") as out:  # noqa: PTH123
                json.dump(dict(counts), out)


if __name__ == "__main__":
    main()
