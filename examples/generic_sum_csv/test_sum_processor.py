"""generic-sum-csv through the testing kit: the CSV as bytes and as a file object, no
scheduler; and end to end through a real one (the heat_scheduler fixture), the CSV given to
the Session as its file input."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from heat_runtime.testing import HeatScheduler, run_task

from examples.generic_sum_csv.sum_processor import SumProcessor

HERE = Path(__file__).parent
CSV = (HERE / "telemetry.csv").read_bytes()  # temperature holds "sensor fault": not numbers
EXPECTED = {"speed": 120.7, "altitude": 3412, "temperature": None}


async def test_sums_the_numeric_columns_of_bytes() -> None:
    outcome = await run_task(SumProcessor, inputs={"file": CSV})
    assert outcome.result() == EXPECTED


async def test_sums_the_numeric_columns_of_a_file_object() -> None:
    assert (await run_task(SumProcessor, inputs={"file": io.BytesIO(CSV)})).result() == EXPECTED
    with (HERE / "telemetry.csv").open("rb") as file:
        assert (await run_task(SumProcessor, inputs={"file": file})).result() == EXPECTED


@pytest.mark.parametrize("inputs", [{}, {"other": {"rows": 3}}])
async def test_a_task_without_a_file_is_rejected_for_good(inputs: dict[str, object]) -> None:
    outcome = await run_task(SumProcessor, inputs=inputs)
    assert outcome.failure is not None and not outcome.failure.retryable
    assert outcome.failure.hook == "validate"
    assert outcome.failure.message == "expected 'file' artefact in inputs"


def test_a_session_given_the_csv_sums_it(heat_scheduler: HeatScheduler) -> None:
    heat_scheduler.apply(HERE / "manifest.heat")
    with heat_scheduler.runner(SumProcessor, runner="sum-csv-runner"):
        done = heat_scheduler.run(template="sum-csv", files={"file": HERE / "telemetry.csv"})
    assert done.state == "SUCCEEDED", done
    assert done.outputs["sum"] == EXPECTED
