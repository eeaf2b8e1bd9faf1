"""The emulator answers as the Kubernetes API does, for what the provisioner uses.

Through kubernetes-asyncio (typed calls) and raw HTTP (to see watch lines as sent).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from kubernetes_asyncio.client import (
    ApiClient,
    ApiException,
    CoreV1Api,
    V1Container,
    V1DeleteOptions,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
    V1Preconditions,
    V1Secret,
)

from tests.k8s.emulator import ApiServer
from tests.k8s.helpers import NAMESPACE, Served
from tests.k8s.kubelet import Kubelet


@pytest.fixture
def core(client: ApiClient) -> CoreV1Api:
    return CoreV1Api(client)


@pytest_asyncio.fixture
async def http(served: Served) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(served.url) as session:
        yield session


def a_pod(name: str = "", labels: dict[str, str] | None = None, **meta: Any) -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(name=name or None, labels=labels, **meta),
        spec=V1PodSpec(containers=[V1Container(name="c", image="busybox")]),
    )


async def status_of(call: Any) -> tuple[int, str]:
    with pytest.raises(ApiException) as caught:
        await call
    body = json.loads(caught.value.body or b"{}")
    assert body["kind"] == "Status" and body["code"] == caught.value.status
    return caught.value.status, body["reason"]


async def watch_lines(
    http: aiohttp.ClientSession, query: str, *, count: int | None = None
) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    async with http.get(f"/api/v1/namespaces/{NAMESPACE}/pods?watch=1&{query}") as response:
        assert response.status == 200
        while count is None or len(lines) < count:
            line = await asyncio.wait_for(response.content.readline(), 5)
            if not line:
                break
            lines.append(json.loads(line))
    return lines


async def test_objects_get_uid_timestamp_and_one_counter_of_versions(
    core: CoreV1Api, api: ApiServer
) -> None:
    first = await core.create_namespaced_pod(NAMESPACE, a_pod(generate_name="x" * 70 + "-"))
    secret = await core.create_namespaced_secret(
        NAMESPACE, V1Secret(metadata=V1ObjectMeta(name="s"), string_data={"k": "v"})
    )
    second = await core.create_namespaced_pod(NAMESPACE, a_pod(generate_name="web-"))
    assert first.metadata.name.startswith("x" * 58) and len(first.metadata.name) == 63
    assert second.metadata.name.startswith("web-") and len(second.metadata.name) == 9
    versions = [int(o.metadata.resource_version) for o in (first, secret, second)]
    assert versions == [api.rv - 2, api.rv - 1, api.rv]
    assert first.metadata.uid != second.metadata.uid
    assert first.metadata.creation_timestamp.tzinfo is not None
    assert secret.data == {"k": base64.b64encode(b"v").decode()} and secret.string_data is None


async def test_list_filters_by_label_selector(core: CoreV1Api, api: ApiServer) -> None:
    for name, labels in [
        ("a", {"app": "heat", "tier": "x"}),
        ("b", {"app": "heat"}),
        ("c", {"app": "other", "tier": "x"}),
        ("d", None),
    ]:
        await core.create_namespaced_pod(NAMESPACE, a_pod(name, labels))
    await core.create_namespaced_pod("elsewhere", a_pod("e", {"app": "heat"}))
    cases = {
        "": {"a", "b", "c", "d"},
        "app=heat": {"a", "b"},
        "app==heat,tier=x": {"a"},
        "app!=heat": {"c", "d"},
        "tier": {"a", "c"},
        "!tier": {"b", "d"},
    }
    for selector, expected in cases.items():
        listed = await core.list_namespaced_pod(NAMESPACE, label_selector=selector)
        assert {p.metadata.name for p in listed.items} == expected, selector
        assert listed.metadata.resource_version == str(api.rv)
    assert await status_of(core.list_namespaced_pod(NAMESPACE, label_selector="a in (b")) == (
        400,
        "BadRequest",
    )


async def test_errors_are_statuses(core: CoreV1Api) -> None:
    await core.create_namespaced_pod(NAMESPACE, a_pod("p"))
    assert await status_of(core.create_namespaced_pod(NAMESPACE, a_pod("p"))) == (
        409,
        "AlreadyExists",
    )
    assert await status_of(core.read_namespaced_pod("nope", NAMESPACE)) == (404, "NotFound")
    assert await status_of(core.delete_namespaced_pod("nope", NAMESPACE)) == (404, "NotFound")
    bad_label = a_pod("q", {"heat.io/runner": "not a label value"})
    assert await status_of(core.create_namespaced_pod(NAMESPACE, bad_label)) == (422, "Invalid")
    no_image = V1Pod(
        metadata=V1ObjectMeta(name="r"),
        spec=V1PodSpec(containers=[V1Container(name="c", image="")]),
    )
    assert await status_of(core.create_namespaced_pod(NAMESPACE, no_image)) == (422, "Invalid")


async def test_delete_checks_the_uid_and_is_graceful_for_running_pods(
    core: CoreV1Api, api: ApiServer, kubelet: Kubelet
) -> None:
    pod = await core.create_namespaced_pod(NAMESPACE, a_pod("p"))
    await kubelet.run("p")
    wrong = V1DeleteOptions(preconditions=V1Preconditions(uid="someone-else"))
    assert await status_of(core.delete_namespaced_pod("p", NAMESPACE, body=wrong)) == (
        409,
        "Conflict",
    )
    right = V1DeleteOptions(preconditions=V1Preconditions(uid=pod.metadata.uid))
    await core.delete_namespaced_pod("p", NAMESPACE, grace_period_seconds=30, body=right)
    assert api.read("pods", NAMESPACE, "p")["metadata"]["deletionGracePeriodSeconds"] == 30
    assert await kubelet.finish_deletions() == ["p"]
    assert await kubelet.names() == []


@pytest.mark.parametrize(
    ("step", "grace", "gone_at_once"),
    [
        ("none", 30, True),  # not scheduled: nothing runs it
        ("run", 30, False),
        ("run", 0, True),
        ("succeed", 30, True),  # ended already
    ],
)
async def test_when_a_deleted_pod_goes_at_once(
    core: CoreV1Api, kubelet: Kubelet, step: str, grace: int, gone_at_once: bool
) -> None:
    await core.create_namespaced_pod(NAMESPACE, a_pod("p"))
    if step != "none":
        await getattr(kubelet, step)("p")
    await core.delete_namespaced_pod("p", NAMESPACE, grace_period_seconds=grace)
    assert (await kubelet.names() == []) is gone_at_once


async def test_replace_honours_the_resource_version(core: CoreV1Api) -> None:
    created = await core.create_namespaced_secret(
        NAMESPACE, V1Secret(metadata=V1ObjectMeta(name="s"), string_data={"k": "1"})
    )
    body = V1Secret(metadata=V1ObjectMeta(name="s"), string_data={"k": "2"})
    replaced = await core.replace_namespaced_secret("s", NAMESPACE, body)  # unconditional
    assert replaced.metadata.uid == created.metadata.uid
    assert base64.b64decode(replaced.data["k"]) == b"2"
    stale = V1Secret(
        metadata=V1ObjectMeta(name="s", resource_version=created.metadata.resource_version)
    )
    assert await status_of(core.replace_namespaced_secret("s", NAMESPACE, stale)) == (
        409,
        "Conflict",
    )


async def test_watch_streams_what_came_after_the_version(
    core: CoreV1Api, http: aiohttp.ClientSession, kubelet: Kubelet
) -> None:
    await core.create_namespaced_pod(NAMESPACE, a_pod("before", {"app": "heat"}))
    listed = await core.list_namespaced_pod(NAMESPACE)
    await core.create_namespaced_pod(NAMESPACE, a_pod("after", {"app": "heat"}))
    await core.create_namespaced_pod(NAMESPACE, a_pod("theirs", {"app": "other"}))
    await kubelet.run("after")
    await core.delete_namespaced_pod("after", NAMESPACE, grace_period_seconds=0)
    events = await watch_lines(
        http, f"labelSelector=app%3Dheat&resourceVersion={listed.metadata.resource_version}",
        count=4,
    )  # fmt: skip
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "after"),
        ("MODIFIED", "after"),  # bound to the node
        ("MODIFIED", "after"),  # running
        ("DELETED", "after"),
    ]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)


async def test_watch_without_a_version_starts_with_everything(
    core: CoreV1Api, http: aiohttp.ClientSession
) -> None:
    await core.create_namespaced_pod(NAMESPACE, a_pod("one"))
    events = await watch_lines(http, "timeoutSeconds=5", count=1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "one")]


async def test_watch_of_labels_that_change(
    core: CoreV1Api, api: ApiServer, http: aiohttp.ClientSession
) -> None:
    await core.create_namespaced_pod(NAMESPACE, a_pod("p", {"app": "x"}))
    since = api.rv

    def relabel(value: str) -> None:
        api.modify("pods", NAMESPACE, "p", lambda p: p["metadata"]["labels"].update(app=value))

    relabel("heat")
    relabel("other")
    events = await watch_lines(http, f"labelSelector=app%3Dheat&resourceVersion={since}", count=2)
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]


async def test_watch_from_a_compacted_version_is_gone(
    core: CoreV1Api, api: ApiServer, http: aiohttp.ClientSession
) -> None:
    await core.create_namespaced_pod(NAMESPACE, a_pod("p"))
    old = api.rv
    await core.create_namespaced_pod(NAMESPACE, a_pod("q"))
    api.compact()
    events = await watch_lines(http, f"resourceVersion={old - 1}")
    assert [e["type"] for e in events] == ["ERROR"]
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"
    # From the current version it works.
    assert await watch_lines(http, f"resourceVersion={api.rv}&timeoutSeconds=0") == []


async def test_watch_times_out_with_a_bookmark(
    core: CoreV1Api, api: ApiServer, http: aiohttp.ClientSession
) -> None:
    since = api.rv
    await core.create_namespaced_pod(NAMESPACE, a_pod("unrelated", {"app": "other"}))
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = await watch_lines(
        http, f"labelSelector=app%3Dheat&resourceVersion={since}&timeoutSeconds=1"
        "&allowWatchBookmarks=true",
    )  # fmt: skip
    assert 0.9 < loop.time() - started < 3
    assert events == [
        {"type": "BOOKMARK", "object": {
            "kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(api.rv)}}}
    ]  # fmt: skip


async def test_faults_hit_the_next_matching_requests(core: CoreV1Api, api: ApiServer) -> None:
    fault = api.fail("list", "pods", status=503, times=2)
    for _ in range(2):
        assert await status_of(core.list_namespaced_pod(NAMESPACE)) == (
            503,
            "ServiceUnavailable",
        )
    await core.list_namespaced_pod(NAMESPACE)
    await core.list_namespaced_secret(NAMESPACE)
    assert fault.hits == 2
    assert [c.verb for c in api.calls] == ["list", "list", "list", "list"]
    assert len(list(api)) == 4  # kmock records them too


async def test_discovery_names_pods_and_secrets(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1") as response:
        resources = (await response.json())["resources"]
    assert {(r["name"], r["kind"], r["namespaced"]) for r in resources} >= {
        ("pods", "Pod", True),
        ("secrets", "Secret", True),
    }
