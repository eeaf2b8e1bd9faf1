"""HEAT's guide example, unchanged, through the Kubernetes path on the real kube-apiserver:
with the chart's ServiceAccount and Role, the scheduler's provisioner creates a pod of the
example's image (``heat-examples/generic-sum-csv:latest``), the test kubelet runs it as
``sum_processor.py`` with the environment the pod spec gives it (the Runner's credential from
the Secret the scheduler made), and the CSV given to the Session reaches ``inputs["file"]``
through RunnerService.ReadArtifact under the task's lease."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from google.protobuf import json_format
from heat.scheduler.v1 import artifact_pb2 as apb
from heat.scheduler.v1 import artifact_service_pb2 as aspb
from heat.scheduler.v1 import artifact_service_pb2_grpc as aspb_grpc
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import session_pb2 as s
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc
from heat_runtime._values import to_python
from kubernetes_asyncio.client import Configuration

from tests.integration.test_provisioning import finished
from tests.k8s.chart import Identity, install
from tests.k8s.cluster import Cluster, free_port
from tests.k8s.kube import Kube
from tests.k8s.kubelet import ProcessKubelet
from tests.k8s.scheduling import serving

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "generic_sum_csv"
IMAGE = "heat-examples/generic-sum-csv:latest"


@pytest_asyncio.fixture
async def example_node(kube: Kube, namespace: str) -> AsyncIterator[ProcessKubelet]:
    """A node that runs the example's image as its program."""
    kubelet = ProcessKubelet(
        kube,
        namespace,
        {IMAGE: [sys.executable, str(EXAMPLE / "sum_processor.py")]},
        {**os.environ, "HEAT_DRAIN_TIMEOUT": "5"},
    )
    await kubelet.start()
    try:
        yield kubelet
    finally:
        await kubelet.close()


async def test_heats_example_sums_a_given_csv_in_a_pod(
    db_dsn: str, cluster: Cluster, namespace: str, example_node: ProcessKubelet
) -> None:
    identity: Identity = await install(cluster, namespace)
    config: Configuration = cluster.configuration(identity.token)
    manifest = json.loads((EXAMPLE / "manifest.heat").read_text())
    async with serving(db_dsn, config, namespace, free_port()) as sc:
        await sc.registry.ApplyManifest(
            json_format.ParseDict({"manifest": manifest}, rpb.ApplyManifestRequest())
        )
        data = (EXAMPLE / "telemetry.csv").read_bytes()

        async def parts() -> AsyncIterator[aspb.UploadArtifactRequest]:
            yield aspb.UploadArtifactRequest(upload=aspb.ArtifactUpload(filename="t.csv"))
            yield aspb.UploadArtifactRequest(data=data)

        uploaded = await aspb_grpc.ArtifactServiceStub(sc.channel).UploadArtifact(parts())
        request = spb.CreateSessionRequest(session_template="sum-csv")
        request.files.append(apb.FileInput(input="file", artifact=uploaded.artifact.name))
        created = await spb_grpc.SessionServiceStub(sc.channel).CreateSession(request)
        session = await finished(sc, created.session.name)
    assert session.state == s.SESSION_STATE_SUCCEEDED, session
    (node,) = session.nodes
    assert to_python(node.outputs) == {"speed": 120.7, "altitude": 3412, "temperature": None}
    (pod,) = example_node.seen
    assert pod["spec"]["containers"][0]["image"] == IMAGE
    (container,) = example_node.containers.values()
    assert container.exit_code == 0 or container.exit_code is None
