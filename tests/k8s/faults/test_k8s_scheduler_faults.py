"""The scheduler on a Kubernetes API that fails: errors and a hang while it creates pods.

Against the emulator, with the test node (ProcessKubelet) running the pods as processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from heat.scheduler.v1 import session_pb2 as s
from kubernetes_asyncio.client import Configuration

from tests.integration.test_provisioning import apply, finished, submit
from tests.k8s.cluster import free_port
from tests.k8s.emulator import ApiServer, Call
from tests.k8s.helpers import NAMESPACE, Served, eventually
from tests.k8s.kube import Kube
from tests.k8s.kubelet import ProcessKubelet
from tests.k8s.scheduling import gaps_of, node, nodes_sleeping, runner_status, serving, status_until


def creates(api: ApiServer) -> list[Call]:
    return api.called("create", "pods")


@pytest_asyncio.fixture
async def process_kubelet(kube: Kube, tmp_path: Path) -> AsyncIterator[ProcessKubelet]:
    async with node(kube, NAMESPACE, tmp_path / "worker.log") as kubelet:
        yield kubelet


async def test_api_errors_back_off_and_leak_nothing(
    db_dsn: str, served: Served, process_kubelet: ProcessKubelet, caplog: pytest.LogCaptureFixture
) -> None:
    api = served.api
    api.fail("create", "pods", times=2)
    hang = api.hang("create", "pods", seconds=3)
    async with serving(db_dsn, Configuration(host=served.url), NAMESPACE, free_port()) as sc:
        await apply(sc, tasksPerPod=1, maxPods=2, idlePeriod="0.5s")
        # Enough work that two pods are still wanted when the API answers again.
        name = await submit(sc, nodes_sleeping(4, 2))
        await status_until(sc, lambda st: "injected failure" in st.last_provisioning_error)
        await eventually(lambda: hang.hits == 1, timeout=10)
        # The API server made that pod, but its answer never arrives (the client times out).
        lost = api.add("pods", NAMESPACE, creates(api)[-1].body)["metadata"]["name"]
        await eventually(lambda: len(creates(api)) == 4, timeout=10)  # the API answers
        await eventually(lambda: len(process_kubelet.running()) == 2)
        assert lost in process_kubelet.running() and len(api.select("pods", NAMESPACE)) == 2
        assert (await runner_status(sc)).desired_pods == 2, "exactly the desired pods"
        done = await finished(sc, name)
        assert done.state == s.SESSION_STATE_SUCCEEDED
        warnings = [r.getMessage() for r in caplog.records if r.name.startswith("scheduler.")]
        assert any("the Kubernetes API did not answer in time" in w for w in warnings)

        made = [c.at - creates(api)[0].at for c in creates(api)]
        gaps = gaps_of(made)
        print(f"\npod CREATEs (500, 500, hang, then the API answers) at gaps of {gaps} s")
        assert len(made) == 4 and gaps[1] > gaps[0], "the retries back off"
        assert len(process_kubelet.containers) == 2, "no duplicate of the pod whose answer was lost"
        # After the idle period every pod, the one whose answer was lost too, drains and goes.
        await eventually(lambda: not api.select("pods", NAMESPACE), timeout=10)
        assert {c.exit_code for c in process_kubelet.containers.values()} == {0}
        status = await status_until(sc, lambda st: st.observed_pods == 0)
        assert status.desired_pods == 0
        # runner.proto: "The last provisioning error …, empty when the last attempt succeeded."
        assert not status.last_provisioning_error, "an error is shown after the API recovered"
