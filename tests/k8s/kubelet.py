"""The tests' kubelet: moves pods through their lives on the emulator, as a node would.

Each step is one status change (one MODIFIED event, one new resourceVersion), written the
way the kubelet writes it: phase, conditions, and container statuses with waiting reasons,
terminated reasons and exit codes.
"""

from __future__ import annotations

from typing import Any

from tests.k8s.emulator import ApiServer, JsonObj, now_rfc3339


class Kubelet:
    def __init__(self, api: ApiServer, namespace: str, node: str = "node-1") -> None:
        self.api = api
        self.namespace = namespace
        self.node = node

    def pod(self, name: str) -> JsonObj:
        return self.api.read("pods", self.namespace, name)

    def names(self) -> list[str]:
        return [p["metadata"]["name"] for p in self.api.select("pods", self.namespace)]

    def _set(self, name: str, phase: str, *, ready: bool = False, **status: Any) -> JsonObj:
        def change(pod: JsonObj) -> None:
            pod["spec"].setdefault("nodeName", self.node)
            containers = [c["name"] for c in pod["spec"]["containers"]]
            state = status.pop("state", None)
            conditions = [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": str(ready)},
                {"type": "Ready", "status": str(ready)},
            ]
            pod["status"] = {
                "phase": phase,
                "hostIP": "10.0.0.1",
                "startTime": pod["status"].get("startTime") or now_rfc3339(),
                "conditions": conditions,
                "qosClass": pod["status"].get("qosClass", "Guaranteed"),
                **status,
            }
            if state is not None:
                pod["status"]["containerStatuses"] = [
                    {
                        "name": c,
                        "image": pod["spec"]["containers"][i]["image"],
                        "imageID": "",
                        "ready": ready,
                        "restartCount": 0,
                        "started": "running" in state,
                        "state": state,
                    }
                    for i, c in enumerate(containers)
                ]

        return self.api.modify("pods", self.namespace, name, change)

    def schedule(self, name: str) -> JsonObj:
        """Bound to this node, still pulling its image."""
        return self._set(name, "Pending", state={"waiting": {"reason": "ContainerCreating"}})

    def unschedulable(self, name: str, message: str = "0/3 nodes are available") -> JsonObj:
        def change(pod: JsonObj) -> None:
            pod["status"]["conditions"] = [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": message}
            ]  # fmt: skip

        return self.api.modify("pods", self.namespace, name, change)

    def run(self, name: str, *, ready: bool = True) -> JsonObj:
        state = {"running": {"startedAt": now_rfc3339()}}
        return self._set(name, "Running", ready=ready, state=state)

    def wait(self, name: str, reason: str, message: str = "", *, phase: str = "Pending") -> JsonObj:
        """The container cannot start: ImagePullBackOff, CreateContainerConfigError, …"""
        waiting = {"reason": reason, **({"message": message} if message else {})}
        return self._set(name, phase, state={"waiting": waiting})

    def succeed(self, name: str) -> JsonObj:
        state = {"terminated": {"exitCode": 0, "reason": "Completed"}}
        return self._set(name, "Succeeded", state=state)

    def fail(self, name: str, *, reason: str = "Error", exit_code: int = 1) -> JsonObj:
        state = {"terminated": {"exitCode": exit_code, "reason": reason}}
        return self._set(name, "Failed", state=state)

    def evict(self, name: str, message: str = "The node was low on resource: memory.") -> JsonObj:
        return self._set(name, "Failed", reason="Evicted", message=message)

    def lose(self, name: str) -> JsonObj:
        """The node stopped reporting."""
        return self._set(name, "Unknown")

    def finish_deletions(self) -> list[str]:
        """Stop every pod that is being deleted; they disappear from the API."""
        done = []
        for pod in self.api.select("pods", self.namespace):
            if pod["metadata"].get("deletionTimestamp"):
                self.api.remove("pods", self.namespace, pod["metadata"]["name"])
                done.append(pod["metadata"]["name"])
        return done
