"""The csv-totals Session end to end: a real scheduler (the heat_scheduler fixture of
heat-runtime[testing]) and this runner's processors, served in the test process."""

from __future__ import annotations

from pathlib import Path

from heat_runtime.testing import HeatScheduler

from examples.csv_sum.runner import AddSums, CsvColumnSum

MANIFEST = Path(__file__).with_name("manifest.json")


def test_csv_totals_adds_up_both_quarters(heat_scheduler: HeatScheduler) -> None:
    heat_scheduler.apply(MANIFEST)
    with heat_scheduler.runner(CsvColumnSum, AddSums, runner="csv-runner", capacity=2):
        done = heat_scheduler.run(template="csv-totals")
        broken = heat_scheduler.run(
            [{"key": "q9", "nodeTemplate": "csv-column-sum", "config": {"csv": "amount\nn/a\n"}}]
        )
    assert done.state == "SUCCEEDED"
    assert done.outputs["total"] == {"total": 451.25, "parts": {"q1": 200.5, "q2": 250.75}}
    assert broken.state == "FAILED"
    q9 = broken.nodes["q9"]
    assert q9.attempt == 1 and not q9.retryable, "validate() rejected it: no retry"
    assert "holds 'n/a' in data row 1" in q9.error
