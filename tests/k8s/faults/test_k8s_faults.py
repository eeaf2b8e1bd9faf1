"""KubernetesProvisioner when the API fails: errors, hangs, dropped connections, broken watches.

Against the emulator (see conftest.py); everything else runs against the real server
(tests/k8s/test_k8s_provisioner.py)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest

from scheduler.domain.provisioning import Observed, Phase
from scheduler.provisioner.errors import ProvisionerError
from scheduler.provisioner.kubernetes import KubernetesProvisioner
from tests.k8s.emulator import ApiServer
from tests.k8s.helpers import (
    NAMESPACE,
    Changes,
    MakeProvisioner,
    eventually,
    spec,
)
from tests.k8s.kubelet import Kubelet

SELECTOR = "app.kubernetes.io/managed-by=heat-scheduler,heat.io/scheduler=alpha"


def by_name(provisioner: KubernetesProvisioner) -> dict[str, Observed]:
    return {o.name: o for o in provisioner.observed()}


def our_pod(name: str, scheduler: str = "alpha", runner_name: str = "csv-runner") -> dict[str, Any]:
    """A pod as a scheduler (this one before a restart, or another) would have made it."""
    return {
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/managed-by": "heat-scheduler",
                "heat.io/scheduler": scheduler,
                "heat.io/runner": runner_name,
            },
            "annotations": {"heat.io/runner": runner_name},
        },
        "spec": {"containers": [{"name": "runner", "image": "img"}]},
    }


@pytest.mark.parametrize(
    ("fault", "status", "words"),
    [
        (lambda api: api.fail("create", "pods", status=403, message="exceeded quota: pods=10"),
         403, "exceeded quota"),
        (lambda api: api.fail("create", "pods", status=500), 500, "injected failure"),
        (lambda api: None, 422, "quantities must match"),  # cpu "two" is not a quantity
        (lambda api: api.hang("create", "pods"), None, "did not answer"),
        (lambda api: api.drop("create", "pods"), None, "creating a pod for runner"),
    ],
    ids=["403-quota", "500", "422-invalid", "timeout", "dropped"],
)  # fmt: skip
async def test_create_failures_say_why(
    make_provisioner: MakeProvisioner,
    api: ApiServer,
    fault: Callable[[ApiServer], Any],
    status: int | None,
    words: str,
) -> None:
    prov = make_provisioner(request_timeout=0.3)
    fault(api)
    with pytest.raises(ProvisionerError) as caught:
        await prov.create(spec(cpu_limit="two" if status == 422 else "1"))
    assert caught.value.status == status
    assert words in str(caught.value)
    assert prov.observed() == []


async def test_credential_round_trip(make_provisioner: MakeProvisioner, api: ApiServer) -> None:
    prov = make_provisioner()
    assert not await prov.has_credential("csv-runner")
    await prov.store_credential("csv-runner", "s3cret-1")
    assert await prov.has_credential("csv-runner")
    secret = api.read("secrets", NAMESPACE, "heat-runner-alpha-csv-runner")
    assert base64.b64decode(secret["data"]["credential"]) == b"s3cret-1"
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "heat-scheduler"
    assert secret["metadata"]["labels"]["heat.io/scheduler"] == "alpha"
    uid = secret["metadata"]["uid"]

    await prov.store_credential("csv-runner", "s3cret-2")  # exists: replaced
    secret = api.read("secrets", NAMESPACE, "heat-runner-alpha-csv-runner")
    assert base64.b64decode(secret["data"]["credential"]) == b"s3cret-2"
    assert secret["metadata"]["uid"] == uid
    assert [c.verb for c in api.calls if c.plural == "secrets"] == [
        "get", "create", "get", "create", "update",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "verb"),
    [("has", "get"), ("store", "create"), ("store", "update")],
)
async def test_credential_failures_say_why(
    make_provisioner: MakeProvisioner, api: ApiServer, call: str, verb: str
) -> None:
    prov = make_provisioner()
    if verb == "update":
        await prov.store_credential("r", "old")
    api.fail(verb, "secrets", status=500, message="etcd is sad")
    with pytest.raises(ProvisionerError) as caught:
        if call == "has":
            await prov.has_credential("r")
        else:
            await prov.store_credential("r", "new")
    assert caught.value.status == 500
    assert "etcd is sad" in str(caught.value) and "heat-runner-alpha-r" in str(caught.value)


async def test_a_watch_that_ends_is_resumed_from_where_it_was(
    make_provisioner: MakeProvisioner, api: ApiServer, kubelet: Kubelet
) -> None:
    prov = make_provisioner(watch_timeout_seconds=1)
    await prov.start(Changes())
    name = (await prov.create(spec())).name
    api.add("pods", NAMESPACE, our_pod("theirs", scheduler="beta"))  # moves the version on
    version = api.rv
    await eventually(lambda: len(api.called("watch", "pods")) == 2, timeout=3)
    watch = api.called("watch", "pods")[1]
    assert watch.params["resourceVersion"] == str(version)  # from the bookmark
    assert watch.params["timeoutSeconds"] == "1"
    assert len(api.called("list", "pods")) == 1
    await kubelet.run(name)
    await eventually(lambda: by_name(prov)[name].ready)

    api.end_watches()  # the server ends it early: resumed too
    await eventually(lambda: len(api.called("watch", "pods")) == 3)
    assert len(api.called("list", "pods")) == 1


@pytest.mark.parametrize(
    "interruption",
    [
        "error-event-410",  # the watch fell behind a compaction
        "http-410",
        "error-event-500",
        "http-500",
        "dropped",
        "hang",
    ],
)
async def test_a_broken_watch_lists_again_and_loses_nothing(
    make_provisioner: MakeProvisioner, api: ApiServer, kubelet: Kubelet, interruption: str
) -> None:
    changes = Changes()
    kind, _, code = interruption.rpartition("-")
    # A 410 means "list again", not "the API is failing": with a minute of backoff, any wait
    # before that list would outlast the test's patience.
    backoff = (60.0, 60.0) if code == "410" else (0.2, 30.0)
    prov = make_provisioner(request_timeout=0.3, backoff=backoff)
    await prov.start(changes)
    keep, gone, changed = [(await prov.create(spec())).name for _ in range(3)]
    await kubelet.run(keep)
    await kubelet.run(changed)
    await eventually(lambda: by_name(prov)[changed].ready)
    changes.reset()

    with api.stall():  # what happens now, the watch does not tell
        api.remove("pods", NAMESPACE, gone)
        await kubelet.fail(changed, reason="OOMKilled", exit_code=137)
        api.add("pods", NAMESPACE, our_pod("new-one"))
        if kind == "error-event" and code == "410":
            api.compact()
        elif kind == "error-event":
            api.end_watches(error=int(code))
        else:
            if kind == "http":
                api.fail("watch", "pods", status=int(code))
            elif interruption == "dropped":
                api.drop("watch", "pods", times=2)  # aiohttp retries the first by itself
            else:
                api.hang("watch", "pods")
            api.end_watches()
    await eventually(lambda: set(by_name(prov)) == {keep, changed, "new-one"})
    assert by_name(prov)[changed].reason == "OOMKilled (exit code 137)"
    assert by_name(prov)[keep].ready
    assert len(prov.observed()) == 3
    assert changes.count >= 1
    assert len(api.called("list", "pods")) == 2
    # And it watches on from the new list.
    await eventually(lambda: api.watch_count == 1)
    assert api.called("watch", "pods")[-1].params["resourceVersion"] == str(api.rv)
    await kubelet.succeed(keep)
    await eventually(lambda: by_name(prov)[keep].phase is Phase.SUCCEEDED)


@pytest.mark.parametrize(
    ("fault", "lists", "least_wait"),
    [
        (lambda api: api.fail("list", "pods", status=500, times=3), 4, 0.1 + 0.2 + 0.4),
        (lambda api: api.fail("list", "pods", status=403), 2, 0.1),
        (lambda api: api.hang("list", "pods"), 2, 0.3 + 0.1),
        # aiohttp itself retries an idempotent request once when the connection drops
        (lambda api: api.drop("list", "pods", times=2), 3, 0.1),
        # gone right after listing, again and again: no tight loop either
        (lambda api: api.fail("watch", "pods", status=410, times=2), 3, 0.1 + 0.2),
    ],
    ids=["list-500", "list-403", "list-timeout", "list-dropped", "watch-410-after-list"],
)
async def test_failing_lists_and_watches_back_off_and_recover(
    make_provisioner: MakeProvisioner,
    api: ApiServer,
    fault: Callable[[ApiServer], Any],
    lists: int,
    least_wait: float,
) -> None:
    api.add("pods", NAMESPACE, our_pod("existing"))
    fault(api)
    prov = make_provisioner(request_timeout=0.3)
    started = time.monotonic()
    await prov.start(Changes())  # returns once listed
    await eventually(lambda: api.watch_count == 1)
    assert time.monotonic() - started >= least_wait  # backed off, with jitter, from 0.2 s
    assert set(by_name(prov)) == {"existing"}
    calls = api.called("list", "pods")
    assert len(calls) == lists
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    if lists == 4:
        assert gaps == sorted(gaps)  # doubling each time (jitter takes at most half off)


async def test_start_can_be_cancelled_while_the_api_is_down(
    make_provisioner: MakeProvisioner, api: ApiServer
) -> None:
    api.fail("list", "pods", status=503, times=100)
    prov = make_provisioner()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await prov.start(Changes())
    calls = len(api.calls)
    await asyncio.sleep(0.5)
    assert len(api.calls) == calls  # nothing runs on


async def test_delete_failures_say_why(
    provisioner: KubernetesProvisioner, api: ApiServer, kubelet: Kubelet
) -> None:
    created = await provisioner.create(spec())
    await kubelet.run(created.name)
    api.fail("delete", "pods", status=500, message="apiserver overloaded")
    with pytest.raises(ProvisionerError) as caught:
        await provisioner.delete(created)
    assert caught.value.status == 500 and "apiserver overloaded" in str(caught.value)
    assert not by_name(provisioner)[created.name].deleting
