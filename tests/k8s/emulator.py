"""A Kubernetes API server for namespaced pods and Secrets, over real HTTP, built on kmock.

kmock 0.8's ``KubernetesEmulator`` keeps objects, but not the way the API does: it ignores
label selectors, has no uid or resourceVersion, streams every object on every watch (and
reads kubernetes-asyncio's ``watch=True`` as a LIST, since it only knows ``watch=true``),
and has no PUT, no DELETE preconditions and no graceful deletion. So this keeps kmock's
``KubernetesScaffold`` (the HTTP server via ``kmock.Server``, request parsing and recording,
API discovery, the 404 of unknown endpoints) and serves pods and Secrets itself:

- every object gets ``uid``, ``creationTimestamp`` and ``resourceVersion`` (one counter for
  the whole server, bumped on every change); ``generateName`` gets 5 random characters;
- LIST with ``labelSelector`` (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``; comma-separated)
  answers a ``…List`` with ``metadata.resourceVersion``;
- GET / POST / PUT / DELETE answer 404 NotFound, 409 AlreadyExists (create), 409 Conflict
  (a DELETE precondition or a PUT's resourceVersion that does not match), 422 Invalid
  (bad names, labels, quantities, a pod without containers or images);
- DELETE of a pod is graceful: it gets ``deletionTimestamp`` and stays until the kubelet
  finishes it (:class:`tests.k8s.kubelet.Kubelet`), unless the grace is 0, the pod is not
  scheduled to a node, or it has already ended — then it goes at once, as in the API;
- WATCH (``watch=true|True|1``, ``resourceVersion``, ``timeoutSeconds``, ``labelSelector``,
  ``allowWatchBookmarks``) streams ``{"type", "object"}`` lines for changes after the
  version (or ADDED for every object first, without one), a BOOKMARK before it times out,
  and ends after the timeout. Objects that start or stop matching the selector arrive as
  ADDED / DELETED. A version older than the retained history (see :meth:`compact`) gets an
  ERROR event carrying a 410 Status.

Tests steer it: :meth:`fail` / :meth:`hang` / :meth:`drop` the next N matching requests,
:meth:`stall` live watches (they fall behind), :meth:`compact` the history, and
:meth:`end_watches` (normally, or with an ERROR). :attr:`calls` records what was asked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiohttp.web
import kmock

JsonObj = dict[str, Any]

PLURALS: Final = {"pods": "Pod", "secrets": "Secret"}
REASONS: Final = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
_NAME_CHARS: Final = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generateName alphabet
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_QUANTITY = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_SELECTOR_TERM = re.compile(r"\s*(!?)\s*([A-Za-z0-9./_-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*))?\s*")


def now_rfc3339(offset: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiStatus(Exception):
    """An answer other than success, as the API gives it: a Status object."""

    def __init__(self, code: int, message: str, *, reason: str | None = None, **details: Any):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.reason = reason or REASONS.get(code, "Unknown")
        self.message = message
        self.details = details

    def body(self) -> JsonObj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }

    def response(self) -> aiohttp.web.Response:
        return aiohttp.web.json_response(self.body(), status=self.code)


# --- label selectors ----------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        match self.op:
            case "=":
                return labels.get(self.key) == self.value
            case "!=":
                return labels.get(self.key) != self.value
            case "exists":
                return self.key in labels
            case _:
                return self.key not in labels


def parse_selector(text: str) -> list[Requirement]:
    """Equality-based label selectors (and existence); ApiStatus 400 when unparseable."""
    requirements: list[Requirement] = []
    for term in text.split(","):
        if not term.strip():
            continue
        m = _SELECTOR_TERM.fullmatch(term)
        if m is None or (m.group(1) and m.group(3)):
            raise ApiStatus(400, f"unable to parse requirement: {term!r}")
        negated, key, op, value = m.groups()
        if op is None:
            requirements.append(Requirement(key, "!exists" if negated else "exists"))
        else:
            requirements.append(Requirement(key, "!=" if op == "!=" else "=", value))
    return requirements


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels = obj.get("metadata", {}).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def selected(obj: Mapping[str, Any], requirements: list[Requirement]) -> bool:
    labels = labels_of(obj)
    return all(r.matches(labels) for r in requirements)


# --- validation ---------------------------------------------------------------------------


def _invalid(kind: str, name: str, problem: str) -> ApiStatus:
    return ApiStatus(
        422, f'{kind} "{name}" is invalid: {problem}', kind=kind.lower() + "s", name=name
    )


def _validate_meta(kind: str, meta: Mapping[str, Any]) -> None:
    name = meta.get("name", "")
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise _invalid(kind, name, f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123")
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, local = key.rpartition("/")
        if (prefix and not _DNS_SUBDOMAIN.fullmatch(prefix)) or not (
            len(local) <= 63 and _QUALIFIED_NAME.fullmatch(local)
        ):
            raise _invalid(kind, name, f"metadata.labels: Invalid value: {key!r}: bad label key")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            raise _invalid(
                kind, name, f"metadata.labels: Invalid value: {value!r}: a valid label must be "
                "an empty string or consist of alphanumeric characters, '-', '_' or '.'",
            )  # fmt: skip
    for key, value in (meta.get("annotations") or {}).items():
        if not isinstance(value, str):
            raise _invalid(kind, name, f"metadata.annotations: Invalid value: {key!r}")


def _validate_pod(pod: Mapping[str, Any]) -> None:
    name = pod["metadata"]["name"]
    containers = (pod.get("spec") or {}).get("containers") or []
    if not containers:
        raise _invalid("Pod", name, "spec.containers: Required value")
    for i, container in enumerate(containers):
        where = f"spec.containers[{i}]"
        if not _DNS_LABEL.fullmatch(container.get("name") or ""):
            raise _invalid("Pod", name, f"{where}.name: Invalid value")
        if not container.get("image"):
            raise _invalid("Pod", name, f"{where}.image: Required value")
        for env in container.get("env") or []:
            if not _ENV_NAME.fullmatch(env.get("name") or ""):
                raise _invalid("Pod", name, f"{where}.env.name: Invalid value")
        for section in ("requests", "limits"):
            quantities = (container.get("resources") or {}).get(section) or {}
            for resource, quantity in quantities.items():
                if not isinstance(quantity, str) or not _QUANTITY.fullmatch(quantity):
                    raise _invalid(
                        "Pod", name,
                        f"{where}.resources.{section}[{resource}]: Invalid value: {quantity!r}: "
                        "quantities must match the regular expression",
                    )  # fmt: skip


# --- the server ---------------------------------------------------------------------------


@dataclass
class Event:
    rv: int
    plural: str
    namespace: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: JsonObj
    old: JsonObj | None


@dataclass
class Call:
    """One request as the server understood it."""

    verb: str  # list, watch, get, create, update, patch, delete, deletecollection
    plural: str | None
    namespace: str | None
    name: str | None
    params: Mapping[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)


@dataclass
class Fault:
    verb: str | None
    plural: str | None
    name: str | None
    times: int
    status: int = 500
    message: str = "injected failure"
    action: str = "fail"  # fail, hang, drop
    hang_seconds: float = 3600.0
    hits: int = 0

    def matches(self, call: Call) -> bool:
        return (
            self.times > 0
            and self.verb in (None, call.verb)
            and self.plural in (None, call.plural)
            and self.name in (None, call.name)
        )


@dataclass(eq=False)
class _Watcher:
    kick: asyncio.Event = field(default_factory=asyncio.Event)
    error: ApiStatus | None = None


def _is_true(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


class ApiServer(kmock.KubernetesScaffold):
    """Serve with ``async with ApiServer() as api, kmock.Server(api) as server`` and call
    :meth:`close` before leaving (it ends live watches and hanging requests)."""

    def __init__(self, *, history_limit: int = 10_000, watch_timeout: float = 1800.0) -> None:
        super().__init__()
        self.rv = 1000
        self.floor = self.rv  # a watch may start from any version >= this
        self.objects: dict[tuple[str, str, str], JsonObj] = {}
        self.history: list[Event] = []
        self.history_limit = history_limit
        self.watch_timeout = watch_timeout
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._watchers: set[_Watcher] = set()
        for plural, kind in PLURALS.items():
            info = self.resources[f"v1/{plural}"]
            info.kind = kind
            info.namespaced = True
            info.verbs = {"create", "delete", "get", "list", "update", "watch"}

    # --- controls for tests -----------------------------------------------------------------

    def fail(
        self,
        verb: str | None = None,
        plural: str | None = None,
        *,
        status: int = 500,
        times: int = 1,
        message: str = "injected failure",
        name: str | None = None,
    ) -> Fault:
        """The next ``times`` matching requests answer ``status`` with a Status body."""
        fault = Fault(verb, plural, name, times, status=status, message=message)
        self.faults.append(fault)
        return fault

    def hang(
        self, verb: str | None = None, plural: str | None = None, *, times: int = 1,
        seconds: float = 3600.0,
    ) -> Fault:  # fmt: skip
        """The next ``times`` matching requests get no answer (for ``seconds``, or until close)."""
        fault = Fault(verb, plural, None, times, action="hang", hang_seconds=seconds)
        self.faults.append(fault)
        return fault

    def drop(self, verb: str | None = None, plural: str | None = None, *, times: int = 1) -> Fault:
        """The next ``times`` matching requests have their connection closed, unanswered."""
        fault = Fault(verb, plural, None, times, action="drop")
        self.faults.append(fault)
        return fault

    @contextlib.contextmanager
    def stall(self) -> Iterator[None]:
        """Live watches send nothing inside the block (as if the link were slow)."""
        self._flowing.clear()
        try:
            yield
        finally:
            self._flowing.set()

    def compact(self) -> None:
        """Forget the history: watches from any version before now get 410 Gone."""
        self.floor = self.rv
        self.history.clear()
        self._wake()

    def end_watches(self, error: int | None = None) -> None:
        """End every live watch now: normally, or after an ERROR event with this code."""
        for watcher in self._watchers:
            if error is not None:
                watcher.error = ApiStatus(error, "injected watch error")
            watcher.kick.set()

    def close(self) -> None:
        """End live watches and hanging requests (before the HTTP server shuts down)."""
        self._closing.set()
        self._wake()

    @property
    def watch_count(self) -> int:
        return len(self._watchers)

    def called(self, verb: str, plural: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.verb == verb and plural in (None, c.plural)]

    # --- direct access (the tests' side of the server) -------------------------------------

    def read(self, plural: str, namespace: str, name: str) -> JsonObj:
        return copy.deepcopy(self._get(plural, namespace, name))

    def select(self, plural: str, namespace: str | None = None, labels: str = "") -> list[JsonObj]:
        requirements = parse_selector(labels)
        return [
            copy.deepcopy(obj)
            for (p, ns, _), obj in sorted(self.objects.items())
            if p == plural and namespace in (None, ns) and selected(obj, requirements)
        ]

    def add(self, plural: str, namespace: str, obj: JsonObj) -> JsonObj:
        """Create as a POST would (another client doing it)."""
        return copy.deepcopy(self._create(plural, namespace, copy.deepcopy(obj)))

    def modify(
        self, plural: str, namespace: str, name: str, change: Callable[[JsonObj], None]
    ) -> JsonObj:
        """Change an object in place, as a controller (or the kubelet) would."""
        old = self._get(plural, namespace, name)
        new = copy.deepcopy(old)
        change(new)
        new["metadata"]["uid"] = old["metadata"]["uid"]
        self._store(plural, namespace, new, "MODIFIED", old)
        return copy.deepcopy(new)

    def remove(self, plural: str, namespace: str, name: str) -> JsonObj:
        """Make an object disappear now (the end of a graceful deletion, or a force delete)."""
        old = self._get(plural, namespace, name)
        gone = copy.deepcopy(old)
        self._bump(gone)
        del self.objects[(plural, namespace, name)]
        self._record(Event(self.rv, plural, namespace, "DELETED", gone, old))
        return copy.deepcopy(gone)

    # --- state ------------------------------------------------------------------------------

    def _get(self, plural: str, namespace: str, name: str) -> JsonObj:
        obj = self.objects.get((plural, namespace, name))
        if obj is None:
            raise ApiStatus(404, f'{plural} "{name}" not found', name=name, kind=plural)
        return obj

    def _bump(self, obj: JsonObj) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def _store(
        self, plural: str, namespace: str, obj: JsonObj, kind: str, old: JsonObj | None
    ) -> None:
        self._bump(obj)
        self.objects[(plural, namespace, obj["metadata"]["name"])] = obj
        self._record(Event(self.rv, plural, namespace, kind, copy.deepcopy(obj), old))

    def _record(self, event: Event) -> None:
        self.history.append(event)
        if len(self.history) > self.history_limit:
            dropped = self.history[: len(self.history) - self.history_limit]
            del self.history[: len(dropped)]
            self.floor = dropped[-1].rv
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _create(self, plural: str, namespace: str, obj: Any) -> JsonObj:
        kind = PLURALS[plural]
        if not isinstance(obj, dict):
            raise ApiStatus(400, "the body of the request is not a JSON object")
        if obj.get("kind") not in (None, kind):
            raise ApiStatus(400, f"the kind {obj.get('kind')!r} does not match {kind!r}")
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace") not in (None, "", namespace):
            raise ApiStatus(
                400, "the namespace of the provided object does not match the namespace sent "
                "on the request",
            )  # fmt: skip
        for server_side in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"):
            meta.pop(server_side, None)
        meta.pop("deletionGracePeriodSeconds", None)
        meta["namespace"] = namespace
        if not meta.get("name"):
            base = meta.get("generateName")
            if not base:
                raise _invalid(kind, "", "metadata.name: Required value: name or generateName")
            while True:
                meta["name"] = base[:58] + "".join(random.choices(_NAME_CHARS, k=5))  # noqa: S311
                if (plural, namespace, meta["name"]) not in self.objects:
                    break
        obj["apiVersion"], obj["kind"] = "v1", kind
        _validate_meta(kind, meta)
        if (plural, namespace, meta["name"]) in self.objects:
            raise ApiStatus(
                409, f'{plural} "{meta["name"]}" already exists', reason="AlreadyExists",
                name=meta["name"], kind=plural,
            )  # fmt: skip
        if plural == "pods":
            _validate_pod(obj)
            spec = obj["spec"]
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("terminationGracePeriodSeconds", 30)
            spec.setdefault("schedulerName", "default-scheduler")
            spec.setdefault("dnsPolicy", "ClusterFirst")
            obj["status"] = {"phase": "Pending", "qosClass": "Guaranteed"}
        else:
            self._secret_data(obj)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        self._store(plural, namespace, obj, "ADDED", None)
        return obj

    @staticmethod
    def _secret_data(obj: JsonObj) -> None:
        data = dict(obj.get("data") or {})
        for key, value in (obj.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data
        obj.setdefault("type", "Opaque")

    def _update(self, plural: str, namespace: str, name: str, body: Any) -> JsonObj:
        old = self._get(plural, namespace, name)
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise ApiStatus(400, "the body of the request is not an object with metadata")
        meta = body["metadata"]
        if meta.get("name") != name:
            raise ApiStatus(400, "the name of the object does not match the name on the URL")
        if meta.get("namespace") not in (None, "", namespace):
            raise ApiStatus(400, "the namespace of the object does not match the request's")
        if meta.get("resourceVersion") not in (None, "", old["metadata"]["resourceVersion"]):
            raise ApiStatus(
                409, f'Operation cannot be fulfilled on {plural} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                name=name, kind=plural,
            )  # fmt: skip
        for kept in ("uid", "creationTimestamp", "deletionTimestamp", "generateName"):
            if kept in old["metadata"]:
                meta[kept] = old["metadata"][kept]
        meta["namespace"] = namespace
        body["apiVersion"], body["kind"] = "v1", PLURALS[plural]
        _validate_meta(PLURALS[plural], meta)
        if plural == "pods":
            _validate_pod(body)
            body["status"] = old.get("status", {})  # status has its own subresource
        else:
            self._secret_data(body)
        self._store(plural, namespace, body, "MODIFIED", old)
        return body

    def _update_status(self, namespace: str, name: str, body: Any) -> JsonObj:
        """PUT of pods/status: only the status changes (its resourceVersion must match)."""
        old = self._get("pods", namespace, name)
        meta = (body.get("metadata") or {}) if isinstance(body, dict) else {}
        wanted = meta.get("resourceVersion")
        if wanted not in (None, "", old["metadata"]["resourceVersion"]):
            raise ApiStatus(
                409, f'Operation cannot be fulfilled on pods "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                name=name, kind="pods",
            )  # fmt: skip
        status = body.get("status") if isinstance(body, dict) else None
        return self.modify("pods", namespace, name, lambda pod: pod.update(status=status or {}))

    def _bind(self, namespace: str, name: str, body: Any) -> JsonObj:
        """POST of pods/binding: the pod gets its node, once."""
        node = ((body or {}).get("target") or {}).get("name") if isinstance(body, dict) else None
        if not node:
            raise ApiStatus(400, "a Binding needs target.name")
        if self._get("pods", namespace, name)["spec"].get("nodeName"):
            raise ApiStatus(409, f"pod {name} is already assigned to a node", name=name)

        def bind(pod: JsonObj) -> None:
            pod["spec"]["nodeName"] = node
            conditions = pod["status"].setdefault("conditions", [])
            conditions.append({"type": "PodScheduled", "status": "True"})

        self.modify("pods", namespace, name, bind)
        return {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}

    def _delete(
        self, plural: str, namespace: str, name: str, options: Any, params: Mapping[str, str]
    ) -> JsonObj:
        obj = self._get(plural, namespace, name)
        options = options if isinstance(options, dict) else {}
        meta = obj["metadata"]
        preconditions = options.get("preconditions") or {}
        for field_name, key in (("UID", "uid"), ("ResourceVersion", "resourceVersion")):
            wanted = preconditions.get(key)
            if wanted and wanted != meta[key]:
                raise ApiStatus(
                    409, f"Precondition failed: {field_name} in precondition: {wanted}, "
                    f"{field_name} in object meta: {meta[key]}", name=name, kind=plural,
                )  # fmt: skip
        if plural != "pods":
            return self.remove(plural, namespace, name)
        grace = options.get("gracePeriodSeconds")
        if grace is None and params.get("gracePeriodSeconds") is not None:
            grace = int(params["gracePeriodSeconds"])
        if grace is None:
            grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
        if not obj["spec"].get("nodeName") or obj["status"].get("phase") in (
            "Succeeded",
            "Failed",
        ):
            grace = 0  # nothing runs it: the API deletes it at once
        if grace <= 0:
            return self.remove(plural, namespace, name)
        if meta.get("deletionTimestamp"):
            return copy.deepcopy(obj)

        def mark(pod: JsonObj) -> None:
            pod["metadata"]["deletionTimestamp"] = now_rfc3339(grace)
            pod["metadata"]["deletionGracePeriodSeconds"] = grace

        return self.modify(plural, namespace, name, mark)

    # --- HTTP -------------------------------------------------------------------------------

    @staticmethod
    def _verb(request: kmock.Request) -> str:
        method = str(request.method.value).upper()
        if method == "GET":
            if _is_true(request.params.get("watch")):
                return "watch"
            return "get" if request.name else "list"
        if method == "DELETE":
            return "delete" if request.name else "deletecollection"
        return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        sub = request.subresource
        ours = (
            resource is not None
            and resource.group == ""
            and resource.version == "v1"
            and resource.plural in PLURALS
            and (sub is None or (resource.plural == "pods" and sub in ("status", "binding")))
        )
        if not ours:
            return await super()._handle(request)
        verb = self._verb(request)
        if verb == "watch" and request.action != kmock.action.WATCH:
            # kmock reads only watch=true as a watch; make its request views agree with us.
            object.__setattr__(request, "action", kmock.action.WATCH)
        assert resource is not None and resource.plural is not None
        plural = resource.plural if sub is None else f"{resource.plural}/{sub}"
        call = Call(verb, plural, request.namespace, request.name, request.params, request.data)
        self.calls.append(call)
        try:
            for fault in self.faults:
                if fault.matches(call):
                    fault.times -= 1
                    fault.hits += 1
                    return await self._inject(fault, request)
            return await self._serve(call, request)
        except ApiStatus as status:
            return status.response()

    async def _inject(self, fault: Fault, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if fault.action == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.hang_seconds)
            raise ApiStatus(503, "the server was shut down")
        if fault.action == "drop":
            raw = request._raw_request
            if raw is not None and raw.transport is not None:
                raw.transport.close()
            return aiohttp.web.Response(status=500)
        raise ApiStatus(fault.status, fault.message)

    async def _serve(self, call: Call, request: kmock.Request) -> aiohttp.web.StreamResponse:
        plural, namespace, name = call.plural, call.namespace, call.name
        assert plural is not None
        if call.verb == "watch":
            return await self._watch(plural, namespace, name, request)
        if call.verb == "list":
            return self._json(self._list_body(plural, namespace, call.params))
        if namespace is None:
            raise ApiStatus(404, "the server could not find the requested resource")
        if call.verb == "create" and name is None:
            return self._json(self._create(plural, namespace, copy.deepcopy(call.body)), 201)
        if name is None:
            raise ApiStatus(405, f"{call.verb} is not supported on a collection")
        if plural == "pods/status" and call.verb == "update":
            return self._json(self._update_status(namespace, name, copy.deepcopy(call.body)))
        if plural == "pods/binding" and call.verb == "create":
            return self._json(self._bind(namespace, name, call.body), 201)
        if call.verb == "get":
            return self._json(self._get(plural, namespace, name))
        if call.verb == "update":
            return self._json(self._update(plural, namespace, name, copy.deepcopy(call.body)))
        if call.verb == "delete":
            return self._json(self._delete(plural, namespace, name, call.body, call.params))
        raise ApiStatus(405, f"{call.verb} is not supported by this emulator")

    @staticmethod
    def _json(obj: Any, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.json_response(obj, status=status)

    def _list_body(self, plural: str, namespace: str | None, params: Mapping[str, str]) -> JsonObj:
        items = self.select(plural, namespace, params.get("labelSelector", ""))
        for item in items:  # items of a list carry no kind of their own
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {
            "kind": PLURALS[plural] + "List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self.rv)},
            "items": items,
        }

    async def _watch(
        self, plural: str, namespace: str | None, name: str | None, request: kmock.Request
    ) -> aiohttp.web.StreamResponse:
        params = request.params
        requirements = parse_selector(params.get("labelSelector", ""))
        bookmarks = _is_true(params.get("allowWatchBookmarks"))
        timeout = float(params.get("timeoutSeconds") or self.watch_timeout)
        since = params.get("resourceVersion") or ""
        if since not in ("", "0") and not since.isdigit():
            raise ApiStatus(400, f"invalid resource version: {since!r}")
        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(status=200)
        response.content_type = "application/json"
        await response.prepare(raw)

        def wanted(obj: Mapping[str, Any]) -> bool:
            return (name is None or obj["metadata"]["name"] == name) and selected(obj, requirements)

        async def send(kind: str, obj: Mapping[str, Any]) -> None:
            await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        watcher = _Watcher()
        self._watchers.add(watcher)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            if since in ("", "0"):
                last = self.rv
                for obj in self.select(plural, namespace):
                    if wanted(obj):
                        await send("ADDED", obj)
            else:
                last = int(since)
            while True:
                if last < self.floor:
                    await send("ERROR", self._too_old(last).body())
                    break
                if watcher.kick.is_set():  # ended where it was, whatever it had yet to send
                    if watcher.error is not None:
                        await send("ERROR", watcher.error.body())
                    break
                if self._flowing.is_set():
                    for event in [e for e in self.history if e.rv > last]:
                        last = event.rv
                        if event.plural != plural or namespace not in (None, event.namespace):
                            continue
                        kind = self._translate(event, wanted)
                        if kind is not None:
                            await send(kind, event.obj)
                    if self.history and self.history[-1].rv > last:
                        continue  # more came while we were writing
                    if last >= self.floor:
                        last = max(last, self.rv)  # it has looked at every change so far
                remaining = deadline - asyncio.get_running_loop().time()
                if self._closing.is_set() or remaining <= 0:
                    if bookmarks and remaining <= 0:
                        await send("BOOKMARK", self._bookmark(plural, last))
                    break
                resume = self._changed if self._flowing.is_set() else self._flowing
                tasks = [
                    asyncio.ensure_future(e.wait()) for e in (resume, watcher.kick, self._closing)
                ]
                try:
                    await asyncio.wait(tasks, timeout=remaining, return_when="FIRST_COMPLETED")
                finally:
                    for task in tasks:
                        task.cancel()
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self._watchers.discard(watcher)
        return response

    @staticmethod
    def _translate(event: Event, wanted: Callable[[Mapping[str, Any]], bool]) -> str | None:
        """What a watcher with this filter sees of an event, if anything."""
        now = wanted(event.obj)
        before = event.old is not None and wanted(event.old)
        if event.type == "DELETED":
            return "DELETED" if before or now else None
        if now and before:
            return "MODIFIED"
        if now:
            return "ADDED"
        if before:
            return "DELETED"
        return None

    def _too_old(self, since: int) -> ApiStatus:
        return ApiStatus(410, f"too old resource version: {since} ({self.floor})", reason="Expired")

    @staticmethod
    def _bookmark(plural: str, rv: int) -> JsonObj:
        return {
            "kind": PLURALS[plural],
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(rv)},
        }
