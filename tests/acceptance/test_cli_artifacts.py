"""HEAT's guide example, unchanged, through `heat-scheduler serve` and its local provisioner:
the CLI submits the CSV as the node's file (`submit --file file=telemetry.csv`), the scheduler
starts `sum_processor.py` as a runner process for the work, and the CLI reads the Session's
files back (`artifacts list`, `artifacts get`)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.test_cli_sessions import NAME, ROOT, cli, ok, rows
from tests.support import Served, serve

EXAMPLE = ROOT / "examples" / "generic_sum_csv"
CSV = EXAMPLE / "telemetry.csv"


@pytest.fixture
def local(db_dsn: str) -> Iterator[Served]:
    server = serve(
        "--database-url", db_dsn,
        "--shutdown-grace", "2",
        "--provisioner", "local",
        "--local-runners", f"sum-csv-runner={sys.executable} {EXAMPLE / 'sum_processor.py'}",
    )  # fmt: skip
    yield server
    server.stop()


def test_heats_example_sums_a_submitted_csv_through_the_local_provisioner(
    local: Served, tmp_path: Path
) -> None:
    ok(cli(local, "apply", str(EXAMPLE / "manifest.heat")))
    watched = cli(
        local, "submit", "--template", "sum-csv", "--file", f"file={CSV}", "--watch", timeout=90
    )
    assert watched.returncode == 0, watched.stdout + watched.stderr + "".join(local.lines)
    name = watched.stdout.splitlines()[0]
    assert NAME.match(name)

    session = json.loads(ok(cli(local, "show", name, "--json")))
    (node,) = session["nodes"]
    assert node["outputs"] == {"speed": 120.7, "altitude": 3412, "temperature": None}
    given = node["files"]["file"]

    listed = rows(ok(cli(local, "artifacts", "list", name)))
    assert listed[given][1:4] == ["(given)", "telemetry.csv", "80"]
    out = tmp_path / "copy.csv"
    fetched = ok(cli(local, "artifacts", "get", given, "-o", str(out)))
    assert out.read_bytes() == CSV.read_bytes()
    assert hashlib.sha256(CSV.read_bytes()).hexdigest() in fetched
    assert ok(cli(local, "artifacts", "get", given)) == CSV.read_text()


def test_file_bindings_and_missing_files_are_told_apart(local: Served, tmp_path: Path) -> None:
    ok(cli(local, "apply", str(EXAMPLE / "manifest.heat")))
    bad = cli(local, "submit", "--template", "sum-csv", "--file", "nofile")
    assert bad.returncode == 2 and "[NODE:]INPUT=PATH" in bad.stderr
    missing = cli(local, "submit", "--template", "sum-csv", "--file", f"file={tmp_path}/none.csv")
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    wrong_node = cli(local, "submit", "--template", "sum-csv", "--file", f"other:file={CSV}")
    assert wrong_node.returncode == 1
    assert "files[0].node_key: 'other' is no node's key" in wrong_node.stderr
    uploaded = ok(cli(local, "artifacts", "upload", str(CSV))).strip()
    assert uploaded.startswith("artifacts/")
    named = cli(local, "submit", "--template", "sum-csv", "--file", f"sum:file={uploaded}")
    assert named.returncode == 0, named.stderr
