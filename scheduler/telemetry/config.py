"""Telemetry settings, the standard way: the OpenTelemetry ``OTEL_*`` environment variables.

Off unless something is configured. Traces are exported when ``OTEL_TRACES_EXPORTER`` names
an exporter, or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); metrics likewise (``OTEL_METRICS_EXPORTER``,
``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``), and they are also served on the Prometheus endpoint
when ``--metrics-listen`` is set. ``OTEL_SDK_DISABLED=true`` turns both off. OTLP goes over
gRPC only. The sampler is the standard one named by ``OTEL_TRACES_SAMPLER`` (with
``OTEL_TRACES_SAMPLER_ARG``); by default parent-based, at a trace-id ratio of
``DEFAULT_RATIO`` for traces that start here. A bad value raises SettingsError naming the
variable and what it accepts.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from scheduler.settings import SettingsError

_Get = Callable[[str], str]

DEFAULT_RATIO: Final = 0.1
DEFAULT_SERVICE_NAME: Final = "heat-scheduler"
DEFAULT_EXPORT_INTERVAL: Final = 60.0
EXPORTERS: Final = ("otlp", "console", "none")
SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


@dataclass(frozen=True, slots=True)
class Sampling:
    """Which traces are kept: ``name`` one of SAMPLERS, ``ratio`` for the trace-id ratio."""

    name: str = "parentbased_traceidratio"
    ratio: float = DEFAULT_RATIO


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """What to report and where; ``TelemetryConfig()`` reports nothing."""

    traces: tuple[str, ...] = ()  # exporters of spans: otlp, console
    metrics: tuple[str, ...] = ()  # exporters of metrics: otlp, console
    metrics_listen: str = ""  # host:port of the Prometheus endpoint; "" none
    sampling: Sampling = field(default_factory=Sampling)
    resource: Mapping[str, str] = field(default_factory=dict)
    traces_endpoint: str = ""  # "" the exporter's own default (its OTEL_* variables)
    metrics_endpoint: str = ""
    export_interval: float = DEFAULT_EXPORT_INTERVAL  # seconds between OTLP metric exports

    @property
    def metering(self) -> bool:
        return bool(self.metrics or self.metrics_listen)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, metrics_listen: str = ""
    ) -> TelemetryConfig:
        environ = os.environ if env is None else env

        def get(name: str) -> str:
            return environ.get(name, "").strip()

        if get("OTEL_SDK_DISABLED").lower() == "true":
            return cls(metrics_listen=metrics_listen)
        endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT")
        traces_endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or endpoint
        metrics_endpoint = get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or endpoint
        traces = _exporters(get, "OTEL_TRACES_EXPORTER", bool(traces_endpoint))
        metrics = _exporters(get, "OTEL_METRICS_EXPORTER", bool(metrics_endpoint))
        for signal, used in (("TRACES_", traces), ("METRICS_", metrics), ("", traces + metrics)):
            name = f"OTEL_EXPORTER_OTLP_{signal}PROTOCOL"
            protocol = get(name)
            if "otlp" in used and protocol and protocol != "grpc":
                raise SettingsError(
                    f"setting {name}: {protocol!r} is not supported; OTLP is exported over "
                    "gRPC only: use grpc (or leave it unset)"
                )
        return cls(
            traces=traces,
            metrics=metrics,
            metrics_listen=metrics_listen,
            sampling=_sampling(get),
            resource=_resource(get),
            traces_endpoint=traces_endpoint,
            metrics_endpoint=metrics_endpoint,
            export_interval=_interval(get),
        )


def _exporters(get: _Get, name: str, endpoint_set: bool) -> tuple[str, ...]:
    value = get(name).lower()
    if not value:
        return ("otlp",) if endpoint_set else ()
    chosen = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    for exporter in chosen:
        if exporter not in EXPORTERS:
            hint = ""
            if exporter == "prometheus":
                hint = "; the Prometheus endpoint is --metrics-listen (HEAT_METRICS_LISTEN)"
            raise SettingsError(
                f"setting {name}: {exporter!r} is not one of: {', '.join(EXPORTERS)}{hint}"
            )
    return tuple(e for e in chosen if e != "none")


def _sampling(get: _Get) -> Sampling:
    name = get("OTEL_TRACES_SAMPLER").lower() or "parentbased_traceidratio"
    if name not in SAMPLERS:
        raise SettingsError(
            f"setting OTEL_TRACES_SAMPLER: {name!r} is not one of: " + ", ".join(SAMPLERS)
        )
    raw = get("OTEL_TRACES_SAMPLER_ARG")
    ratio = DEFAULT_RATIO
    if raw and name.endswith("traceidratio"):
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise SettingsError(
                f"setting OTEL_TRACES_SAMPLER_ARG: {raw!r} is not a ratio from 0 to 1 (e.g. 0.1)"
            )
    return Sampling(name, ratio)


def _resource(get: _Get) -> dict[str, str]:
    attributes: dict[str, str] = {"service.name": DEFAULT_SERVICE_NAME}
    for item in get("OTEL_RESOURCE_ATTRIBUTES").split(","):
        key, sep, value = item.partition("=")
        if not item.strip():
            continue
        if not sep or not key.strip():
            raise SettingsError(
                f"setting OTEL_RESOURCE_ATTRIBUTES: {item.strip()!r} is not key=value; "
                "e.g. deployment.environment.name=prod,service.namespace=heat"
            )
        attributes[key.strip()] = urllib.parse.unquote(value.strip())
    if get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = get("OTEL_SERVICE_NAME")
    return attributes


def _interval(get: _Get) -> float:
    raw = get("OTEL_METRIC_EXPORT_INTERVAL")
    if not raw:
        return DEFAULT_EXPORT_INTERVAL
    try:
        millis = float(raw)
    except ValueError:
        millis = 0.0
    if millis <= 0:
        raise SettingsError(
            f"setting OTEL_METRIC_EXPORT_INTERVAL: {raw!r} is not a positive number of "
            "milliseconds (e.g. 60000)"
        )
    return millis / 1000
