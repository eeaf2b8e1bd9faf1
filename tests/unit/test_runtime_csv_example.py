"""The example runner of examples/csv_sum: its processors, and a manifest the scheduler takes."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.protobuf import json_format
from heat.scheduler.v1 import registry_service_pb2
from heat_runtime import TaskInfo
from heat_runtime._context import set_current

from examples.csv_sum.runner import AddSums, CsvColumnSum
from scheduler.domain import registry
from scheduler.domain.limits import Limits
from scheduler.transport import convert

MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "csv_sum" / "manifest.json"
CSV = "region,amount,note\nnorth,120,ok\nsouth,80.5,\n\neast,-0.5,late\n"

_T = TypeVar("_T")


async def as_task(hook: Callable[[], Awaitable[_T]]) -> _T:
    """Run a hook as the runtime does: in its own task, with current_task() set."""

    async def run() -> _T:
        set_current(
            TaskInfo(
                attempt_id="a-1",
                session="sessions/s-1",
                node_key="q1",
                node_template="csv-column-sum",
                attempt=1,
                parameters={},
                trace_context={},
                attempt_deadline=None,
            )
        )
        return await hook()

    return await asyncio.create_task(run())


async def test_csv_column_sum_sums_the_column() -> None:
    processor = CsvColumnSum()
    config = {"csv": CSV, "column": "amount"}
    await processor.validate({}, config)
    outputs = await as_task(lambda: processor.process({}, config))
    assert outputs == {"column": "amount", "sum": 200, "rows": 3}
    decimals = {"csv": "amount\n0.1\n0.2\n", "column": "amount"}
    assert (await as_task(lambda: processor.process({}, decimals)))["sum"] == 0.3


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"csv": CSV, "column": "price"}, "column 'price' is not in the CSV header"),
        ({"csv": "region,amount\nnorth,\n", "column": "amount"}, "holds nothing in data row 1"),
        ({"csv": "amount\n12\nn/a\n", "column": "amount"}, "holds 'n/a' in data row 2"),
        ({"csv": "amount\ninf\n", "column": "amount"}, "holds 'inf'"),
        ({"column": "amount"}, "config.csv must be CSV text"),
        ({"csv": CSV}, "config.column must name a column"),
    ],
)
async def test_csv_column_sum_rejects_bad_tables(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        await CsvColumnSum().validate({}, config)


async def test_add_sums_adds_every_upstream_sum() -> None:
    processor = AddSums()
    inputs = {"q2": {"column": "amount", "sum": 250.75, "rows": 3}, "q1": {"sum": 200.5}}
    await processor.validate(inputs, {})
    assert await processor.process(inputs, {}) == {
        "total": 451.25,
        "parts": {"q1": 200.5, "q2": 250.75},
    }
    assert (await processor.process({"a": {"sum": 0.1}, "b": {"sum": 0.2}}, {}))["total"] == 0.3


@pytest.mark.parametrize(
    ("inputs", "problem"),
    [({}, "at least one upstream"), ({"q1": {"total": 3}}, "input 'q1' has no numeric 'sum'")],
)
async def test_add_sums_rejects_inputs_without_sums(inputs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        await AddSums().validate(inputs, {})


def test_the_manifest_is_one_the_scheduler_accepts() -> None:
    document = json.loads(MANIFEST.read_text(encoding="utf-8"))
    manifest = convert.manifest(json_format.ParseDict(document, registry_service_pb2.Manifest()))
    limits = Limits()
    (runner,) = manifest.runners
    assert (runner.name, runner.container_image, runner.cpu_limit, runner.memory_limit) == (
        "csv-runner",
        "heat-csv-runner:0.1.0",  # examples/csv_sum/Dockerfile
        "500m",
        "256Mi",
    )
    assert (runner.feature_internal_name, runner.tasks_per_pod) == ("heat-core", 4)
    assert registry.check_runner(runner, "runner", limits) == []
    templates = {t.name: t for t in manifest.node_templates}
    assert set(templates) == {CsvColumnSum.TEMPLATE_NAME, AddSums.TEMPLATE_NAME}
    assert templates["add-sums"].multiple_inputs
    schema = templates["csv-column-sum"].config_schema
    assert schema is not None and schema["required"] == ["csv", "column"]
    for template in templates.values():
        assert template.runner == "csv-runner"
        violations = registry.check_node_template(
            template, "t", limits, runner_exists=lambda name: name == "csv-runner"
        )
        assert violations == []
    (session,) = manifest.session_templates
    assert session.name == "csv-totals"
    nodes = {n.key: n for n in session.nodes}
    assert set(nodes) == {"q1", "q2", "total"} and nodes["total"].depends_on == ("q1", "q2")
    assert registry.check_session_template(session, "s", limits, templates=templates.get) == []


async def test_the_session_template_computes_its_total() -> None:
    """The DAG of csv-totals run by hand through the processors: what the demo shows."""
    document = json.loads(MANIFEST.read_text(encoding="utf-8"))
    nodes = {n["key"]: n for n in document["sessionTemplates"][0]["nodes"]}
    outputs: dict[str, Any] = {}
    for key in ("q1", "q2"):
        outputs[key] = await as_task(
            functools.partial(CsvColumnSum().process, {}, nodes[key]["config"])
        )
    assert outputs["q1"]["sum"] == 200.5 and outputs["q2"]["sum"] == 250.75
    total = await AddSums().process(outputs, {})
    assert total == {"total": 451.25, "parts": {"q1": 200.5, "q2": 250.75}}
