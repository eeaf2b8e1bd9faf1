"""Telemetry configured by the standard OTEL_* variables: off unless asked, the default
sampler, errors that name the variable; W3C contexts and dispatch span ids; and a runtime
without OpenTelemetry that never imports it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from scheduler.domain.sessions import TraceContext
from scheduler.domain.telemetry import dispatch_span_id
from scheduler.settings import SettingsError
from scheduler.telemetry import SchedulerTelemetry, TelemetryConfig
from scheduler.telemetry.config import DEFAULT_RATIO, Sampling


def test_nothing_configured_reports_nothing() -> None:
    config = TelemetryConfig.from_env({})
    assert config.traces == () and config.metrics == () and not config.metering
    telemetry = SchedulerTelemetry(config)
    assert telemetry.instruments is None and not telemetry.reporter.tracing


def test_an_otlp_endpoint_turns_traces_and_metrics_on_with_the_default_sampler() -> None:
    config = TelemetryConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
            "OTEL_SERVICE_NAME": "sched",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod,team=a%20b",
        }
    )
    assert config.traces == ("otlp",) and config.metrics == ("otlp",)
    assert config.sampling == Sampling("parentbased_traceidratio", DEFAULT_RATIO)
    assert config.traces_endpoint == "http://collector:4317"
    assert config.resource == {
        "service.name": "sched",
        "deployment.environment.name": "prod",
        "team": "a b",
    }


def test_each_signal_is_chosen_on_its_own() -> None:
    config = TelemetryConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317",
            "OTEL_METRICS_EXPORTER": "console",
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.5",
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        },
        metrics_listen="127.0.0.1:9464",
    )
    assert config.traces == ("otlp",) and config.metrics == ("console",)
    assert config.sampling == Sampling("traceidratio", 0.5)
    assert config.export_interval == 5.0 and config.metrics_listen == "127.0.0.1:9464"
    assert TelemetryConfig.from_env({"OTEL_TRACES_EXPORTER": "none"}).traces == ()
    disabled = TelemetryConfig.from_env(
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    )
    assert disabled.traces == () and disabled.metrics == ()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, "--metrics-listen"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "OTEL_RESOURCE_ATTRIBUTES"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, "OTEL_METRIC_EXPORT_INTERVAL"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        TelemetryConfig.from_env(env)


def test_trace_contexts_and_dispatch_span_ids() -> None:
    context = TraceContext("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "k=v")
    assert context.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert context.carrier() == {"traceparent": context.traceparent, "tracestate": "k=v"}
    assert (
        not TraceContext()
        and TraceContext().carrier() == {}
        and TraceContext("junk").trace_id == ""
    )
    assert dispatch_span_id("0af76519-16cd-43dd-8448-eb211c80319c") == 0x0AF7651916CD43DD
    assert dispatch_span_id("00000000-0000-0000-8448-eb211c80319c") == 0x8448EB211C80319C


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_runtime_without_opentelemetry_pays_nothing() -> None:
    # Not configured: OpenTelemetry is never imported, even where it is installed.
    assert (
        run_python(
            """
        import sys
        from heat_runtime import _telemetry
        print(_telemetry.setup("r", "i", env={}) is _telemetry.NO_TRACING,
              any(m.startswith("opentelemetry") for m in sys.modules))
        """
        )
        == "True False"
    )
    # Asked for, but not installed (an image without heat-runtime[otel]): a warning, no tracing.
    assert (
        run_python(
            """
        import sys
        sys.modules["opentelemetry"] = None  # as if it were not installed
        from heat_runtime import _telemetry
        tracing = _telemetry.setup("r", "i", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
        with tracing.attempt("t", {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}, {}):
            with tracing.hook("process"):
                pass
        print(tracing is _telemetry.NO_TRACING)
        """
        )
        == "True"
    )
