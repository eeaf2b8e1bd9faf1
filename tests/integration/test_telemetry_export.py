"""Telemetry leaving the process the standard ways: OTLP over gRPC to a receiver in the test
(the OpenTelemetry protocol's own collector services), from the scheduler and from a runner
process configured by nothing but OTEL_* variables; and the Prometheus endpoint, scraped over
HTTP and read with prometheus-client's text parser."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from google.protobuf import json_format
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import session_pb2
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc
from prometheus_client.parser import text_string_to_metric_families

from scheduler.telemetry import SchedulerTelemetry, TelemetryConfig
from tests.otlp import Receiver
from tests.support import eventually, serving

WORKER = Path(__file__).resolve().parents[1] / "e2e" / "worker.py"
MANIFEST = {
    "runners": [{"name": "w", "containerImage": "busybox", "cpuLimit": "1", "memoryLimit": "64Mi"}],
    "nodeTemplates": [{"name": "echo", "runner": "w"}],
}


async def test_spans_of_the_scheduler_and_a_runner_process_reach_an_otlp_receiver(
    db_dsn: str,
) -> None:
    async with Receiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_SERVICE_NAME": "scheduler-under-test",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
        }
        telemetry = SchedulerTelemetry(TelemetryConfig.from_env(env))
        async with serving(db_dsn, telemetry=telemetry) as s:
            await s.registry.ApplyManifest(
                json_format.ParseDict({"manifest": MANIFEST}, rpb.ApplyManifestRequest())
            )
            issued = await s.registry.IssueRunnerCredential(
                rpb.IssueRunnerCredentialRequest(runner="w")
            )
            runner = subprocess.Popen(  # noqa: ASYNC220 (ended below, within the test)
                [sys.executable, str(WORKER)],
                env={
                    **os.environ,
                    **env,
                    "OTEL_SERVICE_NAME": "runner-under-test",
                    "OTEL_BSP_SCHEDULE_DELAY": "50",
                    "HEAT_SCHEDULER_ADDRESS": s.address,
                    "HEAT_RUNNER": "w",
                    "HEAT_RUNNER_CREDENTIAL": issued.credential.secret,
                    "HEAT_INSTANCE_ID": "otlp-runner",
                    "HEAT_DRAIN_TIMEOUT": "2",
                },
            )
            try:
                sessions = spb_grpc.SessionServiceStub(s.channel)
                created = await sessions.CreateSession(
                    json_format.ParseDict(
                        {"dag": {"nodes": [{"key": "a", "nodeTemplate": "echo"}]}},
                        spb.CreateSessionRequest(),
                    )
                )

                async def done() -> bool:
                    got = await sessions.GetSession(
                        spb.GetSessionRequest(name=created.session.name)
                    )
                    return got.session.state == session_pb2.SESSION_STATE_SUCCEEDED

                for _ in range(300):
                    if await done():
                        break
                    await asyncio.sleep(0.05)
                assert await done()
            finally:
                runner.send_signal(signal.SIGTERM)  # drains, then flushes its spans
                assert await asyncio.to_thread(runner.wait, 20) == 0
        # The scheduler flushed its spans as it stopped.
        spans = receiver.spans()
        trace_id = created.session.trace_id
        ours = [sp for sp in spans if sp.service == "scheduler-under-test"]
        theirs = [sp for sp in spans if sp.service == "runner-under-test"]
        (create,) = [sp for sp in ours if sp.name.endswith("/CreateSession")]
        (dispatch,) = [sp for sp in ours if sp.name == "dispatch echo"]
        (attempt,) = [sp for sp in theirs if sp.name == "attempt echo"]
        assert create.trace_id == dispatch.trace_id == attempt.trace_id == trace_id
        assert dispatch.parent_id == create.span_id
        assert attempt.parent_id == dispatch.span_id
        assert attempt.attribute("heat.outcome") == "success"
        assert {"validate", "process"} <= {
            sp.name for sp in theirs if sp.parent_id == attempt.span_id
        }
        assert "rpc.server.call.duration" in receiver.metric_names()


async def test_the_prometheus_endpoint_serves_the_metrics(db_dsn: str) -> None:
    telemetry = SchedulerTelemetry(TelemetryConfig(metrics_listen="127.0.0.1:0"))
    async with serving(db_dsn, telemetry=telemetry) as s:
        await s.registry.ApplyManifest(
            json_format.ParseDict({"manifest": MANIFEST}, rpb.ApplyManifestRequest())
        )
        await spb_grpc.SessionServiceStub(s.channel).CreateSession(
            json_format.ParseDict(
                {"dag": {"nodes": [{"key": "a", "nodeTemplate": "echo"}]}},
                spb.CreateSessionRequest(),
            )
        )
        assert telemetry.sampler is not None and telemetry.metrics_port
        await telemetry.sampler.refresh()
        await eventually(lambda: "leader timekeeper" in s.running.model.notes())
        url = f"http://127.0.0.1:{telemetry.metrics_port}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())

        text = await asyncio.to_thread(scrape)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    queued = [
        sample
        for sample in families["heat_task_count"].samples
        if sample.labels == {"heat_runner": "w", "heat_task_state": "queued"}
    ]
    assert [sample.value for sample in queued] == [1.0]
    assert families["heat_session_count"].type == "gauge"
    rpc = families["rpc_server_call_duration_seconds"]
    assert rpc.type == "histogram"
    assert any(
        sample.labels.get("rpc_method") == "heat.scheduler.v1.SessionService/CreateSession"
        and sample.labels.get("rpc_response_status_code") == "OK"
        for sample in rpc.samples
    )
    assert {"db_client_connection_count", "db_client_connection_max"} <= set(families)
    held = {
        x.labels["heat_leadership_duty"]: x.value for x in families["heat_leadership_held"].samples
    }
    assert held == {"timekeeper": 1.0, "provisioning": 0.0}  # the only replica; no provisioner
    (term,) = families["heat_leadership_term_start_time_seconds"].samples
    assert term.labels == {
        "heat_leadership_duty": "timekeeper",
        "heat_leadership_epoch": "1",
        "heat_leadership_holder": s.running.leadership.holder,
    }
