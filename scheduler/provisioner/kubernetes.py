"""Runner instances as Kubernetes pods (kubernetes-asyncio).

One background task keeps a cache of this scheduler's pods: it LISTs them (by label
selector), then WATCHes from the list's resourceVersion, re-watching from the last seen
version when a watch ends and re-listing when the server says that version is gone (410).
Other failures back off (exponential, with jitter) and re-list. Nothing polls: ``observed()``
reads the cache, and ``changed`` is called whenever the watch changes it.

Pods are created with ``generateName``; each carries labels naming the Runner and the
scheduler (so a restarted scheduler adopts them, and another scheduler ignores them), the
scheduler's address, and the Runner's credential from a Secret. Deletion names the pod's
uid as a precondition, so a pod that replaced it under the same name is never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, cast

import aiohttp
from kubernetes_asyncio.client import (
    ApiClient,
    Configuration,
    CoreV1Api,
    V1DeleteOptions,
    V1Preconditions,
)
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_HOST_ENV_NAME,
    InClusterConfigLoader,
)
from kubernetes_asyncio.config.kube_config import load_kube_config

from scheduler.domain.backoff import Backoff, Retries
from scheduler.domain.clock import Clock, SystemClock
from scheduler.domain.provisioning import InstanceSpec, Observed
from scheduler.provisioner._k8s_pods import (
    CREDENTIAL_KEY,
    dns_label,
    label_safe,
    observe_pod,
    pod_manifest,
    secret_manifest,
    secret_name,
    selector,
)
from scheduler.provisioner._k8s_template import TemplateError, check_pod_template
from scheduler.provisioner.errors import ProvisionerError

__all__ = [
    "KubernetesProvisioner",
    "ProvisionerError",
    "dns_label",
    "label_safe",
    "observe_pod",
    "secret_name",
    "selector",
]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR: Final = str(Path(SERVICE_CERT_FILENAME).parent)
_TOMBSTONES: Final = 1024  # uids of pods seen deleted, so a late create() does not revive one


class _ApiError(Exception):
    """A non-2xx answer, with the API's Status message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


class _Gone(Exception):
    """The resourceVersion to watch from is no longer available: list again."""


@dataclass(frozen=True, slots=True)
class _Pod:
    observed: Observed
    rv: str

    def newer_than(self, other: _Pod) -> bool:
        return self.rv != other.rv and not _rv_newer(other.rv, self.rv)


def _rv_newer(a: str, b: str) -> bool:
    """Whether resourceVersion ``a`` is later than ``b``. They are opaque; when either is
    not the usual integer, nothing is assumed newer (the server's word wins)."""
    try:
        return int(a) > int(b)
    except ValueError:
        return False


def _status_of(body: bytes, status: int, reason: str) -> _ApiError:
    message = ""
    with contextlib.suppress(ValueError, AttributeError):
        data = json.loads(body)
        message = str(data.get("message") or "")
        reason = str(data.get("reason") or reason)
    return _ApiError(status, reason or "Error", message or body[:200].decode(errors="replace"))


class KubernetesProvisioner:
    """Pods in one namespace, for one scheduler (``scheduler_name``)."""

    name = "kubernetes"

    def __init__(
        self,
        api: ApiClient,
        *,
        namespace: str,
        scheduler_name: str,
        termination_grace_seconds: int = 60,
        image_pull_policy: str | None = None,
        pod_template: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        request_timeout: float = 30.0,
        watch_timeout_seconds: int = 300,
        backoff: tuple[float, float] = (0.2, 30.0),
        owns_api: bool = False,
    ) -> None:
        self._api = api
        self._core = CoreV1Api(api)
        self._namespace = namespace
        self._scheduler_name = scheduler_name
        self._selector = selector(scheduler_name)
        self._grace = termination_grace_seconds
        self._image_pull_policy = image_pull_policy
        self._template = dict(pod_template or {})
        self._clock = clock or SystemClock()
        self._request_timeout = request_timeout
        self._watch_timeout = watch_timeout_seconds
        first, cap = (timedelta(seconds=s) for s in backoff)
        self._backoff = Retries(Backoff(first, cap, spread=0.5))
        self._owns_api = owns_api
        self._pods: dict[str, _Pod] = {}
        self._deleting: set[str] = set()  # uids we asked to delete, until they are gone
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._snapshot: list[Observed] | None = None
        self._changed: Callable[[], None] = lambda: None
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._heard = False  # whether the current watch has said anything yet

    @classmethod
    async def connect(
        cls,
        *,
        kubeconfig: str | None,
        context: str | None,
        namespace: str | None,
        scheduler_name: str,
        termination_grace_seconds: int = 60,
        image_pull_policy: str | None = None,
        pod_template: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        request_timeout: float = 30.0,
        service_account_dir: str = SERVICE_ACCOUNT_DIR,
        environ: Mapping[str, str] | None = None,
    ) -> KubernetesProvisioner:
        """In-cluster configuration when ``KUBERNETES_SERVICE_HOST`` is set and no kubeconfig
        is given (the namespace defaults to the pod's own); else the kubeconfig (default
        ``$KUBECONFIG``, then ``~/.kube/config``; the namespace defaults to its context's, then
        ``default``). ProvisionerError when neither gives a configuration."""
        env = os.environ if environ is None else environ
        config = Configuration()
        try:
            if kubeconfig is None and env.get(SERVICE_HOST_ENV_NAME):
                namespace = _in_cluster(config, Path(service_account_dir), env, namespace)
            else:
                loader = await load_kube_config(
                    config_file=_kubeconfig_paths(kubeconfig, env), context=context,
                    client_configuration=config, persist_config=False,
                )  # fmt: skip
                if namespace is None:
                    current = loader.current_context or {}
                    namespace = str(current.get("context", {}).get("namespace") or "default")
        except ConfigException as exc:
            raise ProvisionerError(f"cannot configure the Kubernetes client: {exc}") from exc
        return cls(
            ApiClient(configuration=config),
            namespace=namespace,
            scheduler_name=scheduler_name,
            termination_grace_seconds=termination_grace_seconds,
            image_pull_policy=image_pull_policy,
            pod_template=pod_template,
            clock=clock,
            request_timeout=request_timeout,
            owns_api=True,
        )

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def api(self) -> ApiClient:
        return self._api

    # --- the watch ----------------------------------------------------------------------

    async def start(self, changed: Callable[[], None]) -> None:
        """List this scheduler's pods and keep watching them; returns once they are listed
        (retrying, with backoff, while the API fails)."""
        if self._task is not None:
            raise RuntimeError("the kubernetes provisioner is already started")
        self._changed = changed
        self._synced = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"k8s-watch-{self._namespace}")
        synced = asyncio.create_task(self._synced.wait())
        try:
            await asyncio.wait({synced, self._task}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await self.stop()
            raise
        finally:
            synced.cancel()
        if self._task.done():  # it cannot end by itself; only if it broke
            task, self._task = self._task, None
            task.result()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Stop, and close the API client if :meth:`connect` made it."""
        await self.stop()
        if self._owns_api:
            await self._api.close()

    async def _run(self) -> None:
        version: str | None = None
        while True:
            listed = False
            try:
                if version is None:
                    version = await self._list()
                    listed = True
                    self._synced.set()
                version = await self._watch(version)
                self._backoff.reset()
            except _Gone:
                version = None
                log.info("pod watch expired; listing again", extra={"namespace": self._namespace})
                if listed and not self._heard:  # gone straight after a list: do not spin
                    await asyncio.sleep(self._backoff.wait())
            except Exception as exc:
                version = None
                delay = self._backoff.wait()
                expected = isinstance(exc, _ApiError | aiohttp.ClientError | OSError | TimeoutError)
                log.warning(
                    "pod list/watch failed (%s); retrying in %.1fs",
                    exc if str(exc) else type(exc).__name__,
                    delay,
                    exc_info=not expected,
                    extra={"namespace": self._namespace},
                )
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        response = await self._send(
            self._core.list_namespaced_pod(
                self._namespace, label_selector=self._selector,
                _preload_content=False, _request_timeout=self._request_timeout,
            )
        )  # fmt: skip
        version = str(response["metadata"]["resourceVersion"])
        pods = [self._entry(item) for item in response.get("items") or []]
        self._replace(pods, version)
        return version

    async def _watch(self, version: str) -> str:
        """Apply events from ``version`` on until the server ends the watch; the version to
        go on from."""
        self._heard = False
        async with asyncio.timeout(self._request_timeout):  # until the headers come
            response = cast(
                aiohttp.ClientResponse,
                await self._core.list_namespaced_pod(
                    self._namespace,
                    label_selector=self._selector,
                    watch=True,
                    resource_version=version,
                    timeout_seconds=self._watch_timeout,
                    allow_watch_bookmarks=True,
                    _preload_content=False,
                    _request_timeout=aiohttp.ClientTimeout(
                        total=self._watch_timeout + self._request_timeout,
                        sock_connect=self._request_timeout,
                    ),
                ),
            )
        try:
            if response.status == 410:
                raise _Gone
            if not 200 <= response.status < 300:
                raise _status_of(await response.read(), response.status, response.reason or "")
            while line := await response.content.readline():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise _ApiError(
                        int(obj.get("code") or 500),
                        str(obj.get("reason") or "Error"),
                        str(obj.get("message") or ""),
                    )
                version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                self._heard = True
                self._backoff.reset()  # the watch works
                if kind == "BOOKMARK":
                    continue
                if self._apply(str(kind), self._entry(obj)):
                    self._notify()
            return version
        finally:
            response.close()

    # --- the cache ----------------------------------------------------------------------

    def _entry(self, raw: Mapping[str, Any]) -> _Pod:
        meta = raw.get("metadata") or {}
        observed = observe_pod(raw)
        if observed.created is None:
            observed = replace(observed, created=self._clock.now())
        return _Pod(observed, str(meta.get("resourceVersion") or ""))

    def _replace(self, pods: list[_Pod], version: str) -> None:
        """The cache becomes the list, except for pods created after it was taken."""
        fresh = {p.observed.name: p for p in pods}
        for name, cached in self._pods.items():
            listed = fresh.get(name)
            if (listed is None and _rv_newer(cached.rv, version)) or (
                listed is not None
                and listed.observed.uid == cached.observed.uid
                and _rv_newer(cached.rv, listed.rv)
            ):
                fresh[name] = cached
        before = {n: (p.observed.uid, p.rv) for n, p in self._pods.items()}
        self._pods = fresh
        self._deleting &= {p.observed.uid for p in fresh.values()}
        self._snapshot = None
        if before != {n: (p.observed.uid, p.rv) for n, p in fresh.items()}:
            self._notify()

    def _apply(self, kind: str, pod: _Pod) -> bool:
        """Apply one watch event; whether the cache changed."""
        name, uid = pod.observed.name, pod.observed.uid
        current = self._pods.get(name)
        if kind == "DELETED":
            self._bury(uid)
            if current is None or current.observed.uid != uid:
                return False
            del self._pods[name]
        elif kind in ("ADDED", "MODIFIED"):
            if uid in self._tombstones:
                return False
            if current is not None and current.observed.uid == uid and not pod.newer_than(current):
                return False
            self._pods[name] = pod
        else:
            log.debug("ignoring a %s watch event", kind)
            return False
        self._snapshot = None
        return True

    def _bury(self, uid: str) -> None:
        self._deleting.discard(uid)
        self._tombstones[uid] = None
        while len(self._tombstones) > _TOMBSTONES:
            self._tombstones.popitem(last=False)

    def _notify(self) -> None:
        try:
            self._changed()
        except Exception:
            log.exception("the provisioner's change callback failed")

    def observed(self) -> list[Observed]:
        if self._snapshot is None:
            self._snapshot = [
                replace(p.observed, deleting=True)
                if p.observed.uid in self._deleting and not p.observed.deleting
                else p.observed
                for p in self._pods.values()
            ]
        return list(self._snapshot)

    # --- changes ------------------------------------------------------------------------

    def manifest(self, spec: InstanceSpec) -> Any:  # a dict: the client sends it as it is
        """The pod this provisioner would create for ``spec``."""
        return pod_manifest(
            spec,
            namespace=self._namespace,
            scheduler_name=self._scheduler_name,
            termination_grace_seconds=self._grace,
            image_pull_policy=self._image_pull_policy,
            template=self._template,
        )

    async def create(self, spec: InstanceSpec) -> Observed:
        runner = spec.runner.name
        if spec.runner.pod_template:
            try:
                check_pod_template(spec.runner.pod_template, "pod_template")
            except TemplateError as exc:
                raise ProvisionerError(f"runner {runner}'s {exc}") from None
        try:
            raw = await self._send(
                self._core.create_namespaced_pod(
                    self._namespace, self.manifest(spec),
                    _preload_content=False, _request_timeout=self._request_timeout,
                )
            )  # fmt: skip
        except Exception as exc:
            raise _failure(f"creating a pod for runner {runner}", exc) from exc
        pod = self._entry(raw)
        self._apply("ADDED", pod)  # seen at once: a quick second pass does not make another
        return pod.observed

    async def delete(self, instance: Observed) -> None:
        try:
            await self._send(
                self._core.delete_namespaced_pod(
                    instance.name,
                    self._namespace,
                    grace_period_seconds=self._grace,
                    body=V1DeleteOptions(
                        grace_period_seconds=self._grace,
                        preconditions=V1Preconditions(uid=instance.uid),
                    ),
                    _preload_content=False,
                    _request_timeout=self._request_timeout,
                )
            )
        except _ApiError as exc:
            if exc.status == 409:
                log.info(
                    "pod %s is not the instance to delete (%s); leaving it",
                    instance.name,
                    exc.message,
                    extra={"uid": instance.uid},
                )
            elif exc.status != 404:
                raise _failure(f"deleting pod {instance.name}", exc) from exc
        except Exception as exc:
            raise _failure(f"deleting pod {instance.name}", exc) from exc
        if any(p.observed.uid == instance.uid for p in self._pods.values()):
            self._deleting.add(instance.uid)
            self._snapshot = None

    async def check_template(self, spec: InstanceSpec) -> None:
        """Ask the API to admit (dry run: nothing is made) the pod of ``spec`` as this
        provisioner would build it: the template's defaults, types and values, the namespace's
        Pod Security admission, and our permission to create pods. ProvisionerError (with the
        API's status) naming the field at fault when it is refused."""
        try:
            await self._send(
                self._core.create_namespaced_pod(
                    self._namespace, self.manifest(spec), dry_run="All",
                    _preload_content=False, _request_timeout=self._request_timeout,
                )
            )  # fmt: skip
        except Exception as exc:
            raise _failure("checking the runner pod template (server-side dry run)", exc) from exc

    async def has_credential(self, runner: str) -> bool:
        name = secret_name(self._scheduler_name, runner)
        try:
            secret = await self._send(
                self._core.read_namespaced_secret(
                    name, self._namespace,
                    _preload_content=False, _request_timeout=self._request_timeout,
                )
            )  # fmt: skip
        except _ApiError as exc:
            if exc.status == 404:
                return False
            raise _failure(f"reading secret {name}", exc) from exc
        except Exception as exc:
            raise _failure(f"reading secret {name}", exc) from exc
        return bool((secret.get("data") or {}).get(CREDENTIAL_KEY))

    async def store_credential(self, runner: str, secret: str) -> None:
        body = secret_manifest(
            runner, secret, namespace=self._namespace, scheduler_name=self._scheduler_name
        )
        name = secret_name(self._scheduler_name, runner)
        try:
            try:
                await self._send(
                    self._core.create_namespaced_secret(
                        self._namespace, body,
                        _preload_content=False, _request_timeout=self._request_timeout,
                    )
                )  # fmt: skip
            except _ApiError as exc:
                if exc.status != 409:
                    raise
                await self._send(
                    self._core.replace_namespaced_secret(
                        name, self._namespace, body,
                        _preload_content=False, _request_timeout=self._request_timeout,
                    )
                )  # fmt: skip
        except Exception as exc:
            raise _failure(f"storing secret {name}", exc) from exc

    async def _send(self, call: Awaitable[object]) -> dict[str, Any]:
        """One request's JSON answer; _ApiError unless it is a 2xx."""
        async with asyncio.timeout(self._request_timeout):
            response = cast(aiohttp.ClientResponse, await call)
            try:
                body = await response.read()
            finally:
                response.release()
        if not 200 <= response.status < 300:
            raise _status_of(body, response.status, response.reason or "")
        data = json.loads(body) if body else {}
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object from the API, got {type(data).__name__}")
        return data


def _in_cluster(
    config: Configuration, folder: Path, env: Mapping[str, str], namespace: str | None
) -> str:
    """Configure from the pod's service account; the namespace (the pod's own by default)."""
    InClusterConfigLoader(
        token_filename=str(folder / "token"),
        cert_filename=str(folder / "ca.crt"),
        environ=dict(env),
    ).load_and_set(config)
    if namespace is not None:
        return namespace
    namespace_file = folder / "namespace"
    return namespace_file.read_text().strip() if namespace_file.exists() else "default"


def _kubeconfig_paths(kubeconfig: str | None, env: Mapping[str, str]) -> str:
    """The kubeconfig file(s) to load (``$KUBECONFIG`` may list several); one must exist."""
    paths = kubeconfig or env.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not any(Path(p).expanduser().exists() for p in paths.split(os.pathsep) if p):
        where = "" if kubeconfig else f" and {SERVICE_HOST_ENV_NAME} is not set"
        raise ProvisionerError(f"no Kubernetes configuration: no kubeconfig {paths}{where}")
    return paths


def _failure(action: str, exc: Exception) -> ProvisionerError:
    if isinstance(exc, _ApiError):
        return ProvisionerError(f"{action}: {exc}", status=exc.status)
    if isinstance(exc, TimeoutError):
        return ProvisionerError(f"{action}: the Kubernetes API did not answer in time")
    return ProvisionerError(f"{action}: {exc or type(exc).__name__}")
