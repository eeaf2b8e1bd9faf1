"""The tests' node: binds pods and moves them through their lives through the API, as a kubelet
(and, for binding, the kube-scheduler) would.

:class:`Kubelet` writes one step at a time: each is a write of the pod's ``status`` subresource
(one MODIFIED event, one new resourceVersion) the way the kubelet writes it: phase, conditions,
container statuses with waiting reasons, terminated reasons and exit codes. A graceful deletion
is finished the kubelet's way too: DELETE with grace 0 and the pod's uid as a precondition.

:class:`ProcessKubelet` watches the namespace and runs each new pod as a local process, with
the environment Kubernetes would give its container (Secret keys, fields of the pod).

Both speak HTTP through :class:`tests.k8s.kube.Kube`: to the real kube-apiserver, or to the
emulator for the tests that need faults.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import signal
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.k8s.kube import JsonObj, Kube, KubeError, path, pods

HOST_IP = "127.0.0.1"


def now_rfc3339(offset: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    def __init__(self, kube: Kube, namespace: str, node: str = "node-1") -> None:
        self.kube = kube
        self.namespace = namespace
        self.node = node

    async def pod(self, name: str) -> JsonObj:
        return await self.kube.get(pods(self.namespace, name))

    async def names(self) -> list[str]:
        return [p["metadata"]["name"] for p in await self.kube.items(pods(self.namespace))]

    async def bind(self, name: str) -> None:
        """Assign the pod to this node, as the kube-scheduler does."""
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        }
        await self.kube.post(pods(self.namespace, name, "binding"), binding)

    async def _write_status(self, name: str, change: Callable[[JsonObj], None]) -> JsonObj:
        """GET, change the status, PUT it back; again when someone else wrote in between."""
        while True:
            pod = await self.pod(name)
            change(pod)
            try:
                return await self.kube.put(pods(self.namespace, name, "status"), pod)
            except KubeError as exc:
                if exc.status != 409:
                    raise

    async def _set(self, name: str, phase: str, *, ready: bool = False, **status: Any) -> JsonObj:
        if not (await self.pod(name))["spec"].get("nodeName"):
            await self.bind(name)
        state = status.pop("state", None)

        def change(pod: JsonObj) -> None:
            old = pod.get("status") or {}
            conditions = [
                {"type": kind, "status": str(value)}
                for kind, value in (
                    ("PodScheduled", True),
                    ("Initialized", True),
                    ("ContainersReady", ready),
                    ("Ready", ready),
                )
            ]
            pod["status"] = {
                "phase": phase,
                "hostIP": HOST_IP,
                "hostIPs": [{"ip": HOST_IP}],
                "startTime": old.get("startTime") or now_rfc3339(),
                "conditions": conditions,
                "qosClass": old.get("qosClass", "Guaranteed"),
                **status,
            }
            if state is not None:
                pod["status"]["containerStatuses"] = [
                    {
                        "name": c["name"],
                        "image": c["image"],
                        "imageID": "",
                        "ready": ready,
                        "restartCount": 0,
                        "started": "running" in state,
                        "state": state,
                    }
                    for c in pod["spec"]["containers"]
                ]

        return await self._write_status(name, change)

    async def schedule(self, name: str) -> JsonObj:
        """Bound to this node, still pulling its image."""
        return await self._set(name, "Pending", state={"waiting": {"reason": "ContainerCreating"}})

    async def unschedulable(self, name: str, message: str = "0/3 nodes are available") -> JsonObj:
        def change(pod: JsonObj) -> None:
            pod["status"]["conditions"] = [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": message}
            ]  # fmt: skip

        return await self._write_status(name, change)

    async def run(self, name: str, *, ready: bool = True) -> JsonObj:
        state = {"running": {"startedAt": now_rfc3339()}}
        return await self._set(name, "Running", ready=ready, state=state)

    async def wait(
        self, name: str, reason: str, message: str = "", *, phase: str = "Pending"
    ) -> JsonObj:
        """The container cannot start: ImagePullBackOff, CreateContainerConfigError, …"""
        waiting = {"reason": reason, **({"message": message} if message else {})}
        return await self._set(name, phase, state={"waiting": waiting})

    async def succeed(self, name: str) -> JsonObj:
        state = {"terminated": {"exitCode": 0, "reason": "Completed"}}
        return await self._set(name, "Succeeded", state=state)

    async def fail(self, name: str, *, reason: str = "Error", exit_code: int = 1) -> JsonObj:
        state = {"terminated": {"exitCode": exit_code, "reason": reason}}
        return await self._set(name, "Failed", state=state)

    async def evict(
        self, name: str, message: str = "The node was low on resource: memory."
    ) -> JsonObj:
        return await self._set(name, "Failed", reason="Evicted", message=message)

    async def lose(self, name: str) -> JsonObj:
        """The node stopped reporting."""
        return await self._set(name, "Unknown")

    async def finish_deletion(self, pod: JsonObj) -> None:
        """The containers stopped: the pod goes (grace 0, this very pod only)."""
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": pod["metadata"]["uid"]},
        }
        await self.kube.delete(pods(self.namespace, pod["metadata"]["name"]), options)

    async def finish_deletions(self) -> list[str]:
        """Stop every pod that is being deleted; they disappear from the API."""
        done = []
        for pod in await self.kube.items(pods(self.namespace)):
            if pod["metadata"].get("deletionTimestamp"):
                await self.finish_deletion(pod)
                done.append(pod["metadata"]["name"])
        return done


# --- a node that runs pods as processes ----------------------------------------------------


@dataclass(eq=False)
class Container:
    """A pod's (only) container: a local process, once it could start."""

    pod: str
    uid: str
    process: asyncio.subprocess.Process | None = None
    terminating: bool = False  # the pod was deleted before its process ended (SIGTERM sent)
    exit_code: int | None = None
    env: Mapping[str, str] | None = None


async def container_env(kube: Kube, pod: JsonObj) -> dict[str, str]:
    """The env of the pod's container, resolved as the kubelet does: plain values, Secret keys
    (KubeError 404 or LookupError when missing) and fields of the pod."""
    env: dict[str, str] = {}
    namespace = pod["metadata"]["namespace"]
    for var in pod["spec"]["containers"][0].get("env") or []:
        source = var.get("valueFrom") or {}
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = await kube.get(path("secrets", namespace, ref["name"]))
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        elif "fieldRef" in source:
            keys = source["fieldRef"]["fieldPath"].split(".")
            env[var["name"]] = str(functools.reduce(lambda obj, key: obj[key], keys, pod))
        else:
            env[var["name"]] = var.get("value", "")
    return env


def argv_of(container: JsonObj, entrypoint: Sequence[str]) -> list[str]:
    """What a container runs, by Kubernetes' rule: its ``command`` in place of the image's
    entrypoint, then its ``args``."""
    return [*(container.get("command") or entrypoint), *(container.get("args") or [])]


class ProcessKubelet:
    """Watches a namespace's pods and runs each new one as a process.

    The image names the entrypoint (``commands``), which the container's ``command`` replaces
    and its ``args`` follow; an image it does not know cannot be pulled (ImagePullBackOff). A
    started process makes the pod Running and Ready; its exit makes it Succeeded (0) or Failed
    (reason Error, with the exit code). A graceful deletion SIGTERMs the process, and its exit
    completes the deletion; a pod removed outright is killed.

    No cluster DNS or Service proxy runs here: ``services`` maps a Service's address
    (``name.namespace.svc:port``) to the local address behind it, replaced in the arguments and
    the environment a process gets.
    """

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        commands: Mapping[str, Sequence[str]],
        env: Mapping[str, str],
        services: Mapping[str, str] | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.kubelet = Kubelet(kube, namespace)
        self.commands = commands
        self.env = dict(env)
        self.services = dict(services or {})
        self.containers: dict[str, Container] = {}
        self.seen: list[JsonObj] = []  # every pod as it was first seen (its spec, as admitted)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._watching = asyncio.Event()

    async def start(self) -> None:
        self._watch = asyncio.create_task(self._run(), name="process-kubelet")
        waiting = asyncio.create_task(self._watching.wait())
        await asyncio.wait({waiting, self._watch}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if self._watch.done():
            self._watch.result()

    def running(self) -> list[str]:
        return [
            c.pod
            for c in self.containers.values()
            if c.process is not None and c.process.returncode is None
        ]

    async def _run(self) -> None:
        listed = await self.kube.get(pods(self.namespace))
        version = listed["metadata"]["resourceVersion"]
        for pod in listed.get("items") or []:
            pod["metadata"]["namespace"] = self.namespace
            self._spawn(self._on("ADDED", pod))
        self._watching.set()
        while True:  # the server ends a watch now and then: go on from where it was
            async for kind, pod in self.kube.watch(
                pods(self.namespace), resourceVersion=version, allowWatchBookmarks="true"
            ):
                version = pod["metadata"].get("resourceVersion") or version
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    await self._on(kind, pod)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on(self, kind: str, pod: JsonObj) -> None:
        name = pod["metadata"]["name"]
        container = self.containers.get(name)
        if container is None or container.uid != pod["metadata"]["uid"]:
            if kind != "DELETED" and not pod["metadata"].get("deletionTimestamp"):
                self.containers[name] = Container(name, pod["metadata"]["uid"])
                self.seen.append(pod)
                self._spawn(self._start(pod))
        elif kind == "DELETED":  # removed outright (grace 0): nothing waits for the process
            if container.process is not None and container.process.returncode is None:
                container.process.kill()
        elif pod["metadata"].get("deletionTimestamp") and not container.terminating:
            if container.process is not None and container.process.returncode is None:
                container.terminating = True  # stopped by the deletion: SIGTERM, then it goes
                container.process.send_signal(signal.SIGTERM)
            else:  # it never started (and now never will), or it has ended already
                container.terminating = container.process is None
                await self._write(self.kubelet.finish_deletion(pod))

    async def _start(self, pod: JsonObj) -> None:
        name = pod["metadata"]["name"]
        container = self.containers[name]
        if not await self._write(self.kubelet.schedule(name)):
            return
        spec = pod["spec"]["containers"][0]
        image = spec["image"]
        entrypoint = self.commands.get(image)
        if entrypoint is None:
            await self._write(
                self.kubelet.wait(name, "ImagePullBackOff", f'pulling "{image}" failed')
            )
            return
        try:
            env = await container_env(self.kube, pod)
        except (KubeError, LookupError) as exc:
            await self._write(self.kubelet.wait(name, "CreateContainerConfigError", str(exc)))
            return
        if container.terminating:
            return
        container.env = env
        container.process = await asyncio.create_subprocess_exec(
            *map(self._routed, argv_of(spec, entrypoint)),
            env={**self.env, **{k: self._routed(v) for k, v in env.items()}},
            stdin=asyncio.subprocess.DEVNULL,
        )
        await self._write(self.kubelet.run(name))
        self._spawn(self._wait(container, pod))

    async def _wait(self, container: Container, pod: JsonObj) -> None:
        assert container.process is not None
        code = await container.process.wait()
        container.exit_code = code if code >= 0 else 128 - code  # killed by a signal
        if container.terminating:
            await self._write(self.kubelet.finish_deletion(pod))
        elif code == 0:
            await self._write(self.kubelet.succeed(container.pod))
        else:
            await self._write(self.kubelet.fail(container.pod, exit_code=container.exit_code))

    def _routed(self, text: str) -> str:
        for service, local in self.services.items():
            text = text.replace(service, local)
        return text

    @staticmethod
    async def _write(change: Coroutine[Any, Any, object]) -> bool:
        """Apply a change through the API; False when the pod is gone already (or is another
        pod by now: its uid precondition failed)."""
        try:
            await change
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise
            return False
        return True

    async def close(self) -> None:
        """Stop watching; SIGTERM every process still running, and kill what lingers. A watch
        that broke is raised then (it fails the test)."""
        broken = None
        if self._watch is not None:
            if self._watch.done():
                broken = self._watch.exception()
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        processes = [c.process for c in self.containers.values() if c.process is not None]
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        waiting = [asyncio.ensure_future(p.wait()) for p in processes if p.returncode is None]
        if waiting:
            await asyncio.wait(waiting, timeout=5)
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if broken is not None:
            raise broken
