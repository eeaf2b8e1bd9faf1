"""Log lines written inside a span carry its trace and span ids (JSON and text)."""

from __future__ import annotations

import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from scheduler.logs import JsonFormatter, TextFormatter


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("scheduler", logging.INFO, __file__, 1, message, None, None)


def test_a_line_inside_a_span_carries_its_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    outside = json.loads(JsonFormatter().format(record("before")))
    assert "trace_id" not in outside and "span_id" not in outside
    with tracer.start_as_current_span("work") as span:
        inside = json.loads(JsonFormatter().format(record("during")))
        text = TextFormatter("%(message)s").format(record("during"))
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert f"trace_id={inside['trace_id']}" in text
