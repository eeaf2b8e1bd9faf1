"""The benchmark command: start PostgreSQL, run the scenarios, print a table, write JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from bench import report
from bench.context import Context, Sizes
from bench.harness import ROOT, Postgres, git_state, log
from bench.scenarios import (
    critical_path,
    dagsize,
    fairness,
    fanout,
    latency,
    peer,
    replicas,
    streams,
    telemetry,
    throughput,
)

Scenario = Callable[[Context], Awaitable[dict[str, Any]]]
SCENARIOS: Final[dict[str, Scenario]] = {
    "throughput": throughput.run,
    "latency": latency.run,
    "dag": dagsize.run,
    "fanout": fanout.run,
    "streams": streams.run,
    "replicas": replicas.run,
    "fairness": fairness.run,
    "critical_path": critical_path.run,
    "peer": peer.run,
    "telemetry": telemetry.run,
}
# The idle-streams window runs first, on a quiet server: WAL is counted server-wide, and
# autovacuum after the big scenarios would show up in it.
ORDER: Final = (
    "streams", "throughput", "latency", "dag", "fanout", "replicas", "fairness", "critical_path",
    "peer", "telemetry",
)  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark heat-scheduler end to end against its own durable PostgreSQL,"
        " with pgbench's commit ceiling and pgqueuer as the reference.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes: under 2 minutes")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes: checks the harness, figures mean nothing"
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(SCENARIOS), metavar="NAME",
        help=f"run only these scenarios ({', '.join(SCENARIOS)})",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results.json", help="JSON results file"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (logs, runner records)"
    )
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    sizes = Sizes.tiny() if args.tiny else Sizes.quick() if args.quick else Sizes.full()
    names = [name for name in ORDER if name in (args.only or ORDER)]
    work = Path(tempfile.mkdtemp(prefix="heat-bench-work-"))
    started = time.monotonic()
    log(f"mode {sizes.mode}; scenarios {', '.join(names)}; logs in {work}")
    pg = await Postgres.start()
    results: dict[str, Any] = {
        "mode": sizes.mode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "git": await git_state(),
        "postgres": {**await pg.settings(), "pg_stat_statements": pg.statements},
        "sizes": sizes.__dict__,
    }
    failed = []
    try:
        ctx = Context(sizes, pg, work)
        for name in names:
            t0 = time.monotonic()
            try:
                results[name] = await SCENARIOS[name](ctx)
            except Exception as exc:
                failed.append(name)
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"{name} failed:\n{traceback.format_exc()}")
            results.setdefault("durations_s", {})[name] = time.monotonic() - t0
    finally:
        await pg.stop()
    results["elapsed_s"] = time.monotonic() - started
    results["targets"] = report.targets(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report.table(results))
    log(f"results in {args.out}; took {results['elapsed_s']:.0f} s")
    if args.keep or failed:
        log(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(amain(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
