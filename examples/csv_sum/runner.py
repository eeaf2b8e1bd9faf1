"""An example runner: sums a column of a CSV, then adds such sums up.

Two processors in HEAT's shape (BaseProcessor subclasses served by HeatRuntime), one per Node
Template of ``manifest.json``:

* ``csv-column-sum``: config ``{"csv": "<CSV text with a header row>", "column": "amount"}``;
  returns ``{"column": "amount", "sum": 200.5, "rows": 2}``.
* ``add-sums``: takes several upstream nodes' outputs; returns
  ``{"total": 451.25, "parts": {"q1": 200.5, "q2": 250.75}}``.

Run it against a scheduler (``HEAT_RUNNER`` is required, the rest have defaults)::

    HEAT_RUNNER=csv-runner HEAT_RUNNER_CREDENTIAL=heatrc_... python examples/csv_sum/runner.py
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

from heat_runtime import BaseProcessor, ConfigError, HeatRuntime, current_task

log = logging.getLogger("csv_sum")

Number = int | float


class CsvColumnSum(BaseProcessor):
    """Sums one numeric column of an inline CSV document."""

    TEMPLATE_NAME = "csv-column-sum"

    async def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> None:
        await super().validate(inputs, config)
        _column_values(config)  # raises ValueError saying what is wrong

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        column, values = _column_values(config)
        log.info("summing %d rows of %r for node %s", len(values), column, current_task().node_key)
        return {"column": column, "sum": _number(sum(values, Decimal(0))), "rows": len(values)}


class AddSums(BaseProcessor):
    """Adds up the ``sum`` of every upstream output (e.g. of csv-column-sum nodes)."""

    TEMPLATE_NAME = "add-sums"

    async def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> None:
        await super().validate(inputs, config)
        if not inputs:
            raise ValueError("add-sums needs at least one upstream node whose output has a 'sum'")
        for key, output in inputs.items():
            _upstream_sum(key, output)

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        parts = {key: _upstream_sum(key, inputs[key]) for key in sorted(inputs)}
        total = sum((Decimal(repr(value)) for value in parts.values()), Decimal(0))
        return {"total": _number(total), "parts": parts}


def _column_values(config: dict[str, Any]) -> tuple[str, list[Decimal]]:
    """The column's name and its values; ValueError names the first problem."""
    text, column = config.get("csv"), config.get("column")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("config.csv must be CSV text with a header row, e.g. 'region,amount'")
    if not isinstance(column, str) or not column:
        raise ValueError("config.column must name a column of the CSV's header, e.g. 'amount'")
    reader = csv.reader(io.StringIO(text.strip()))
    header = [name.strip() for name in next(reader)]
    if column not in header:
        raise ValueError(f"column {column!r} is not in the CSV header; it has: {', '.join(header)}")
    index = header.index(column)
    values: list[Decimal] = []
    for row_number, row in enumerate(reader, start=1):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        cell = row[index].strip() if index < len(row) else ""
        try:
            value = Decimal(cell)
        except InvalidOperation:
            value = Decimal("NaN")
        if not value.is_finite():
            shown = repr(cell) if cell else "nothing"
            raise ValueError(
                f"column {column!r} holds {shown} in data row {row_number}, which is not a number"
            )
        values.append(value)
    return column, values


def _upstream_sum(key: str, output: Any) -> Number:
    value = output.get("sum") if isinstance(output, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"input {key!r} has no numeric 'sum' field: {output!r:.200}")
    return value


def _number(value: Decimal) -> Number:
    """A Decimal as a JSON number: an int when whole."""
    return int(value) if value == value.to_integral_value() else float(value)


def main() -> None:
    HeatRuntime.register(CsvColumnSum)
    HeatRuntime.register(AddSums)
    try:
        runtime = HeatRuntime()  # HEAT_* from the environment
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    runtime.init()


if __name__ == "__main__":
    main()
