"""The operator CLI (submit, show, sessions, cancel, watch, priority, credentials) in
subprocesses, against a real scheduler."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support import Served, serve

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "csv_sum"
NAME = re.compile(r"^s-\d{8}-\d{6}-[0-9a-f]{8}$")

MANIFEST = {
    "runners": [
        {
            "name": "cli-runner",
            "containerImage": "busybox",
            "cpuLimit": "1",
            "memoryLimit": "64Mi",
        }
    ],
    "nodeTemplates": [
        {"name": "extract", "runner": "cli-runner"},
        {"name": "merge", "runner": "cli-runner", "multipleInputs": True},
    ],
    "sessionTemplates": [
        {
            "name": "two-step",
            "nodes": [
                {"key": "left", "nodeTemplate": "extract"},
                {"key": "right", "nodeTemplate": "extract"},
                {"key": "both", "nodeTemplate": "merge", "dependsOn": ["left", "right"]},
            ],
        }
    ],
}


def cli(
    served: Served, *args: str, timeout: float = 20, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli", *args, "--address", served.address],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", "HEAT_TOKEN": served.token, **(env or {})},
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rows(stdout: str) -> dict[str, list[str]]:
    """A printed table's rows by their first cell."""
    return {line.split()[0]: line.split() for line in stdout.splitlines() if line.strip()}


@pytest.fixture
def applied(served: Served) -> Served:
    served.call("RegistryService/ApplyManifest", {"manifest": MANIFEST})
    return served


def test_submit_show_list_cancel_and_watch_a_session(applied: Served) -> None:
    submitted = cli(applied, "submit", "--template", "two-step", "--param", "day=2024-05-01")
    name = ok(submitted).strip()
    assert NAME.match(name), submitted.stdout

    shown = rows(ok(cli(applied, "show", name)))
    assert shown["state"] == ["state", "pending"]
    assert shown["left"][:3] == ["left", "extract", "queued"]
    assert shown["right"][:3] == ["right", "extract", "queued"]
    assert shown["both"][:3] == ["both", "merge", "waiting"]
    assert shown["parameters"] == ["parameters", '{"day":"2024-05-01"}']

    listed = rows(ok(cli(applied, "sessions")))
    assert listed[name][:3] == [name, "pending", "two-step"]
    assert " ".join(listed[name]).endswith("0/3 succeeded · 2 queued · 1 waiting")
    assert name not in ok(cli(applied, "sessions", "--state", "cancelled"))

    cancelled = ok(cli(applied, "cancel", name, "--reason", "not today"))
    assert cancelled.startswith(f"{name} cancelled")
    after = rows(ok(cli(applied, "show", name)))
    assert after["state"] == ["state", "cancelled", "(not", "today)"]
    assert {after[k][2] for k in ("left", "right", "both")} <= {"cancelled", "upstream_failed"}
    assert name in ok(cli(applied, "sessions", "--state", "cancelled", "--template", "two-step"))

    started = time.monotonic()
    watched = cli(applied, "watch", name, timeout=10)
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert time.monotonic() - started < 5
    assert f"session {name} cancelled (not today)" in watched.stdout

    as_json = json.loads(ok(cli(applied, "show", name, "--json")))
    assert as_json["name"] == name and as_json["state"] == "SESSION_STATE_CANCELLED"


def test_a_session_is_submitted_at_a_priority_and_moved_to_another(applied: Served) -> None:
    name = ok(
        cli(applied, "submit", "--template", "two-step", "--priority", "7", "--label", "team=ml")
    ).strip()
    assert rows(ok(cli(applied, "show", name)))["priority"] == [
        "priority", "7", "(fairness", "key", "ml)",
    ]  # fmt: skip
    assert ok(cli(applied, "priority", name, "3")).strip() == f"{name} priority 3 (fairness key ml)"
    assert rows(ok(cli(applied, "sessions")))[name][5] == "3"
    refused = cli(applied, "priority", name, "10")
    assert refused.returncode == 2 and "1 to 9" in refused.stderr


def test_errors_show_the_code_and_each_field_violation(applied: Served, tmp_path: Path) -> None:
    cycle = tmp_path / "cycle.json"
    cycle.write_text(
        json.dumps(
            {
                "nodes": [
                    {"key": "a", "nodeTemplate": "merge", "dependsOn": ["b"]},
                    {"key": "b", "nodeTemplate": "merge", "dependsOn": ["a"]},
                ]
            }
        )
    )
    refused = cli(applied, "submit", "--dag", str(cycle))
    assert refused.returncode == 1 and refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert lines[0].startswith("error: INVALID_ARGUMENT: ")
    assert any(re.match(r"  dag\.nodes: the dependencies form a cycle", ln) for ln in lines)

    missing = cli(applied, "show", "s-20240101-000000-00000000")
    assert missing.returncode == 1 and missing.stderr.startswith("error: NOT_FOUND: ")

    not_json = tmp_path / "dag.json"
    not_json.write_text("{nodes")
    unreadable = cli(applied, "submit", "--dag", str(not_json))
    assert unreadable.returncode == 2 and "cannot read DAG file" in unreadable.stderr
    assert cli(applied, "submit", "--dag", str(tmp_path / "none.json")).returncode == 2


def test_watch_resumes_after_the_scheduler_restarts(applied: Served, db_dsn: str) -> None:
    name = ok(cli(applied, "submit", "--template", "two-step")).strip()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "watch", name, "--address", applied.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HEAT_TOKEN": applied.token},
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            lines.put(line.rstrip("\n").split(" ", 1)[1])  # without the time

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert lines.get(timeout=10) == (
            f"session {name} pending: 0/3 succeeded · 2 queued · 1 waiting"
        )
        ok(cli(applied, "cancel", name, "--node", "left"))
        before = [lines.get(timeout=10), lines.get(timeout=10)]
        assert before == [
            "left cancelled",
            "both not run: an upstream node failed or was cancelled",
        ]
        assert applied.stop() == 0
        # The same database on the same address: the watch reconnects after its cursor.
        again = serve(
            "--database-url", db_dsn, "--provisioner", "none", "--listen", applied.address
        )
        try:
            ok(cli(applied, "cancel", name))
            watcher.wait(timeout=20)
        finally:
            again.stop()
    finally:
        if watcher.poll() is None:
            watcher.kill()
        watcher.wait()
    reader.join(timeout=5)
    assert watcher.stderr is not None
    err = watcher.stderr.read()
    after = [lines.get_nowait() for _ in range(lines.qsize())]
    assert watcher.returncode == 1, [*after, err]
    assert "reconnecting" in err
    # Resumed after its cursor: nothing from before the restart is repeated.
    assert after == [
        "right cancelled",
        f"session {name} cancelled (cancelled by request): 0/3 succeeded · 2 cancelled"
        " · 1 upstream_failed",
    ]


def test_runner_credentials_are_issued_listed_and_revoked(applied: Served) -> None:
    issued = cli(applied, "credentials", "issue", "cli-runner", "--description", "staging")
    secret = ok(issued).strip()
    assert re.fullmatch(r"heatrc_\S+", secret), issued.stdout
    assert "only once" in issued.stderr and "HEAT_RUNNER_CREDENTIAL" in issued.stderr
    assert secret not in issued.stderr
    credential_id = re.search(r"credential (\S+) for runner cli-runner", issued.stderr)
    assert credential_id is not None
    cid = credential_id.group(1)

    listed = rows(ok(cli(applied, "credentials", "list", "cli-runner")))
    assert listed[cid][-2:] == ["-", "staging"]
    assert secret not in str(listed)

    assert ok(cli(applied, "credentials", "revoke", cid)).startswith(f"revoked {cid}")
    assert cid not in ok(cli(applied, "credentials", "list", "cli-runner"))
    revoked = rows(ok(cli(applied, "credentials", "list", "cli-runner", "--revoked")))
    assert revoked[cid][-1] == "staging" and revoked[cid][3] != "-"

    unknown = cli(applied, "credentials", "issue", "no-such-runner")
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: NOT_FOUND: ")


@pytest.mark.skipif(not (EXAMPLE / "runner.py").exists(), reason="no example runner")
def test_the_example_runner_completes_a_watched_session(served: Served) -> None:
    ok(cli(served, "apply", str(EXAMPLE / "manifest.json")))
    secret = ok(cli(served, "credentials", "issue", "csv-runner")).strip()
    runner = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "runner.py")],
        env={
            **os.environ,
            "HEAT_SCHEDULER_ADDRESS": served.address,
            "HEAT_RUNNER": "csv-runner",
            "HEAT_RUNNER_CREDENTIAL": secret,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        watched = cli(served, "submit", "--template", "csv-totals", "--watch", timeout=30)
    finally:
        runner.terminate()
        _, runner_log = runner.communicate(timeout=30)
    assert watched.returncode == 0, watched.stdout + watched.stderr + runner_log
    name, *changes = watched.stdout.splitlines()
    assert NAME.match(name)
    assert any(line.endswith(f"session {name} succeeded: 3/3 succeeded") for line in changes)
    shown = ok(cli(served, "show", name))
    assert re.search(r"^total +add-sums +succeeded +1 ", shown, re.MULTILINE), shown
    assert re.search(r'^total +\{.*"total":451\.25', shown, re.MULTILINE), shown
