"""A small JSON client of the Kubernetes API for the tests' side: the kubelet, helpers, checks.

Raw HTTP (aiohttp), so a test sees and sends exactly what the API does, for any kind of object,
against the real kube-apiserver (HTTPS, a bearer token) or the emulator (plain HTTP).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

JsonObj = dict[str, Any]


class KubeError(Exception):
    """A non-2xx answer: the Status the API sent."""

    def __init__(self, status: int, body: JsonObj) -> None:
        self.status = status
        self.body = body
        self.reason = str(body.get("reason") or "")
        self.message = str(body.get("message") or "")
        super().__init__(f"{status} {self.reason}: {self.message}")


def pods(namespace: str, name: str = "", sub: str = "") -> str:
    return path("pods", namespace, name, sub)


def path(plural: str, namespace: str, name: str = "", sub: str = "") -> str:
    url = f"/api/v1/namespaces/{namespace}/{plural}"
    return url + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


class Kube:
    """``async with Kube(url, token, ca_file) as kube``; every call returns the JSON object."""

    def __init__(self, url: str, token: str | None = None, ca_file: Path | None = None) -> None:
        self.url = url
        context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(
            url,
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=context) if context else None,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> JsonObj:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self._session.request(
            method, url, data=data, params=params, headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:  # fmt: skip
            raw = await response.read()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"message": raw[:500].decode(errors="replace")}
        if not 200 <= response.status < 300:
            raise KubeError(response.status, parsed if isinstance(parsed, dict) else {})
        return parsed if isinstance(parsed, dict) else {"items": parsed}

    async def get(self, url: str, **params: str) -> JsonObj:
        return await self.request("GET", url, params=params)

    async def post(self, url: str, body: Any, **params: str) -> JsonObj:
        return await self.request("POST", url, body, params=params)

    async def put(self, url: str, body: Any) -> JsonObj:
        return await self.request("PUT", url, body)

    async def merge_patch(self, url: str, body: Any) -> JsonObj:
        return await self.request("PATCH", url, body, content_type="application/merge-patch+json")

    async def delete(self, url: str, body: Any = None, **params: str) -> JsonObj:
        return await self.request("DELETE", url, body, params=params)

    async def items(self, url: str, **params: str) -> list[JsonObj]:
        listed = await self.get(url, **params)
        return list(listed.get("items") or [])

    async def watch(self, url: str, **params: str) -> AsyncIterator[tuple[str, JsonObj]]:
        """(type, object) for each event until the server ends the watch."""
        query = {"watch": "true", "timeoutSeconds": "3600", **params}
        async with self._session.get(url, params=query) as response:
            if response.status != 200:
                raise KubeError(response.status, json.loads(await response.read() or b"{}"))
            async for line in response.content:
                if line.strip():
                    event = json.loads(line)
                    yield str(event["type"]), event["object"]
