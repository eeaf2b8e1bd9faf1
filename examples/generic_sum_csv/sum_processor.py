"""HEAT's guide example, ``generic-sum-csv``: sums every numeric column of a CSV file.

Written as HEAT's guide ("Developing Runners") writes it: a ``BaseProcessor`` subclass with
``TEMPLATE_NAME`` and two async hooks, registered with ``HeatRuntime.register`` and served by
``HeatRuntime().init()``. ``inputs["file"]`` is the CSV, as bytes or as a binary file object;
the outputs hold one entry per column: its sum, or null for a column that is not numbers::

    {"speed": 120.7, "altitude": 3412, "temperature": null}

Run it against a scheduler (``HEAT_RUNNER`` is required, the rest have defaults)::

    HEAT_RUNNER=sum-csv-runner HEAT_RUNNER_CREDENTIAL=heatrc_... python sum_processor.py
"""

from io import BytesIO
from typing import Any

import pandas as pd
from heat_runtime import BaseProcessor, HeatRuntime


class SumProcessor(BaseProcessor):
    """Aggregates all numeric columns of a CSV (supplied in memory) into one JSON object."""

    TEMPLATE_NAME = "generic-sum-csv"  # must match the node template

    async def validate(self, inputs: dict[str, Any], config: dict[str, Any]) -> None:
        await super().validate(inputs, config)
        if "file" not in inputs:
            raise ValueError("expected 'file' artefact in inputs")

    async def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        """Sum every numeric column; columns that are not numbers give null."""
        raw = inputs["file"]  # bytes or a file-like object
        # pandas reads a file-like buffer: wrap bytes in one
        buffer = BytesIO(raw) if isinstance(raw, bytes | bytearray) else raw
        df = pd.read_csv(buffer)
        result: dict[str, Any] = {}
        for col in df.columns:
            if pd.api.types.is_numeric_dtype(df[col]):
                result[col] = df[col].sum()  # a NumPy number: the runtime takes it as it is
            else:
                result[col] = None
        return result


if __name__ == "__main__":
    HeatRuntime.register(SumProcessor)
    HeatRuntime().init()
