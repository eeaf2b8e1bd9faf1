"""The benchmark harness runs end to end at tiny sizes and writes every section.

Not a benchmark: no figure is checked, only that each scenario ran and reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = (
    "throughput", "latency", "dag", "fanout", "streams", "fairness", "critical_path", "peer",
    "telemetry",
)  # fmt: skip


@pytest.mark.slow
def test_harness_runs_every_scenario_at_tiny_sizes(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    for section in SECTIONS:
        assert section in results, section
        assert "error" not in results[section], results[section]
    assert results["postgres"]["fsync"] == "on"
    assert results["postgres"]["synchronous_commit"] == "on"
    assert [r["runners"] for r in results["throughput"]["runs"]] == [1, 2]
    assert results["latency"]["missing_records"] == 0
    assert len(results["dag"]["runs"]) == 2
    assert results["streams"]["stream_errors"] == 0
    assert results["peer"]["pgqueuer"]["runs"][0]["done"] == results["sizes"]["pgqueuer_jobs"]
    assert results["telemetry"]["full"]["spans"] > 0, "the receiver got the spans"
    assert results["fairness"]["shares_under_weights"]["team_a"] > 0
    assert results["fairness"]["claims"]["many_sessions"]["claim_32_ms"]["count"] > 0
    assert results["critical_path"]["makespan_dag_order_s"] > 0
    assert {t["target"] for t in results["targets"]}
    assert "| scenario |" in done.stdout
