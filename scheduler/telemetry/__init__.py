"""Telemetry: OpenTelemetry traces and metrics, configured by the standard ``OTEL_*``
variables, with a Prometheus endpoint of its own.

- ``config``       TelemetryConfig from the environment (and ``--metrics-listen``)
- ``setup``        SchedulerTelemetry: providers, exporters, the endpoint, the sampler
- ``reporter``     the port the services call (``scheduler.domain.telemetry.Telemetry``)
- ``interceptor``  a server span and a duration for every RPC
- ``instruments``  the metrics, by name
- ``gauges``       the gauges' values, sampled from the database

It imports the domain (the port it keeps, the Store it samples) and nothing above it: the
services report through the port and never see the SDK.
"""

from __future__ import annotations

from scheduler.telemetry.config import TelemetryConfig
from scheduler.telemetry.setup import SchedulerTelemetry

__all__ = ["SchedulerTelemetry", "TelemetryConfig"]
