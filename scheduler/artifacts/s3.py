"""Artefact content in an S3-compatible bucket, over a small client of our own.

Why not aiobotocore: it pins botocore to a narrow range, brings its ~100 service models and a
second HTTP stack's worth of dependencies, and still leaves a streamed upload of unknown size
to the caller (``put_object`` wants the length; multipart is assembled by hand either way).
What the artefact store needs is six calls on one bucket. This client makes them with aiohttp
(already in the tree through kubernetes-asyncio) and AWS Signature Version 4, path-style
(``<endpoint>/<bucket>/<key>``, which AWS, MinIO, versitygw, Ceph and Garage all serve):

- a file up to ``part_bytes`` (8 MiB) is one PUT; a larger one a multipart upload of 8 MiB
  parts, so at most one part per upload is in memory;
- each part's SHA-256 is signed (``x-amz-content-sha256``), so the server refuses a part
  damaged on the way; hashing runs in a worker thread;
- a read is one streamed GET, handed on in chunks as they arrive;
- CompleteMultipartUpload may answer 200 with an error in its body (S3 does this when it
  fails late): the body is checked;
- retries: a part, a GET before its first byte and a DELETE are tried up to three times on a
  connection error or a 500/502/503/504; nothing else is retried.

Credentials are static (an access key id and secret, and optionally a session token); the
instance-role and web-identity chains of the AWS SDKs are not implemented.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from scheduler.domain.errors import NotFound, PermissionDenied, Unavailable

PART_BYTES: Final = 8 * 1024 * 1024  # S3 wants parts of at least 5 MiB, the last excepted
_EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
_RETRIED_STATUSES: Final = frozenset({500, 502, 503, 504})
_TRIES: Final = 3
_KEY: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True, slots=True)
class S3Config:
    endpoint: str  # http(s)://host[:port]
    bucket: str
    prefix: str = ""  # keys are prefix + key
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str = ""
    part_bytes: int = PART_BYTES


class S3Error(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"S3 answered {status} {code}: {message}")
        self.status = status
        self.code = code


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _encode(text: str, safe: str) -> str:
    return quote(text, safe=safe)


class S3Client:
    """Signed requests to one S3 endpoint; bucket and key per call."""

    def __init__(self, config: S3Config, session: aiohttp.ClientSession) -> None:
        parts = urlsplit(config.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{config.endpoint!r} is not an http(s)://host[:port] endpoint")
        self._config = config
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.netloc
        self._session = session

    @classmethod
    def create(cls, config: S3Config) -> S3Client:
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)
        return cls(config, aiohttp.ClientSession(timeout=timeout, auto_decompress=False))

    async def close(self) -> None:
        await self._session.close()

    # --- signing ------------------------------------------------------------------------------

    def _signed(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        payload_sha256: str,
        now: dt.datetime,
    ) -> tuple[str, dict[str, str]]:
        config = self._config
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        canonical_query = "&".join(
            f"{_encode(k, '-_.~')}={_encode(v, '-_.~')}" for k, v in sorted(query.items())
        )
        headers = {
            "host": self._host,
            "x-amz-content-sha256": payload_sha256,
            "x-amz-date": stamp,
        }
        if config.session_token:
            headers["x-amz-security-token"] = config.session_token
        signed = ";".join(sorted(headers))
        canonical = "\n".join(
            [
                method,
                path,
                canonical_query,
                "".join(f"{k}:{headers[k].strip()}\n" for k in sorted(headers)),
                signed,
                payload_sha256,
            ]
        )
        scope = f"{day}/{config.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = _hmac(("AWS4" + config.secret_access_key).encode(), day)
        for part in (config.region, "s3", "aws4_request"):
            key = _hmac(key, part)
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={config.access_key_id}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        url = self._base + path + (f"?{canonical_query}" if canonical_query else "")
        return url, headers

    async def _request(
        self,
        method: str,
        bucket: str,
        key: str,
        *,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
        tries: int = 1,
    ) -> aiohttp.ClientResponse:
        """The response of a signed request, status 2xx (the caller reads and releases it)."""
        path = "/" + _encode(bucket, "-_.~") + ("/" + _encode(key, "-_.~/") if key else "")
        digest = _EMPTY_SHA256 if not body else await asyncio.to_thread(_sha256_hex, body)
        for attempt in range(1, tries + 1):
            url, headers = self._signed(method, path, query or {}, digest, dt.datetime.now(dt.UTC))
            try:
                response = await self._session.request(
                    method, URL(url, encoded=True), headers=headers, data=body or None
                )
            except (aiohttp.ClientError, TimeoutError) as error:
                if attempt < tries:
                    await asyncio.sleep(0.2 * attempt)
                    continue
                reason = str(error) or type(error).__name__
                raise Unavailable(
                    f"the S3 endpoint {self._base} cannot be reached: {reason}"
                ) from error
            if response.status < 300:
                return response
            text = await response.text(errors="replace")
            response.release()
            if response.status in _RETRIED_STATUSES and attempt < tries:
                await asyncio.sleep(0.2 * attempt)
                continue
            raise _error(response.status, text)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- the calls ----------------------------------------------------------------------------

    async def put_object(self, bucket: str, key: str, body: bytes) -> None:
        response = await self._request("PUT", bucket, key, body=body, tries=_TRIES)
        response.release()

    async def create_multipart(self, bucket: str, key: str) -> str:
        response = await self._request("POST", bucket, key, query={"uploads": ""})
        text = await response.text()
        upload_id = _find(text, "UploadId")
        if not upload_id:
            raise Unavailable(
                f"S3 answered CreateMultipartUpload without an UploadId: {text[:200]}"
            )
        return upload_id

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, body: bytes
    ) -> str:
        query = {"partNumber": str(number), "uploadId": upload_id}
        response = await self._request("PUT", bucket, key, query=query, body=body, tries=_TRIES)
        etag = response.headers.get("ETag", "")
        response.release()
        return etag

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, etags: list[str]
    ) -> None:
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_escape(etag)}</ETag></Part>"
            for n, etag in enumerate(etags, 1)
        )
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        response = await self._request(
            "POST", bucket, key, query={"uploadId": upload_id}, body=body
        )
        text = await response.text(errors="replace")
        if "<Error>" in text:  # a late failure, answered with 200
            raise _error(500, text)

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        response = await self._request(
            "DELETE", bucket, key, query={"uploadId": upload_id}, tries=_TRIES
        )
        response.release()

    async def get_object(self, bucket: str, key: str, chunk_bytes: int) -> AsyncIterator[bytes]:
        response = await self._request("GET", bucket, key, tries=_TRIES)
        try:
            async for chunk in response.content.iter_chunked(chunk_bytes):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Unavailable(
                f"reading from the S3 endpoint {self._base} failed: {error}"
            ) from error
        finally:
            response.release()

    async def delete_object(self, bucket: str, key: str) -> None:
        response = await self._request("DELETE", bucket, key, tries=_TRIES)
        response.release()

    async def head_bucket(self, bucket: str) -> None:
        response = await self._request("HEAD", bucket, "")
        response.release()


def _sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _find(text: str, tag: str) -> str:
    try:
        root = ET.fromstring(text)  # noqa: S314 (the configured endpoint's answer)
    except ET.ParseError:
        return ""
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == tag:
            return element.text or ""
    return ""


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _error(status: int, text: str) -> Exception:
    code, message = _find(text, "Code"), _find(text, "Message")
    if status == 404 or code in ("NoSuchKey", "NoSuchBucket"):
        return NotFound("S3 object", message or code or "not found")
    if status == 403:
        return PermissionDenied(
            f"the S3 endpoint refused the request ({code or status}: {message}); check the"
            " artefact store's credentials and the bucket's policy"
        )
    return Unavailable(f"S3 answered {status} {code}: {message or text[:200]}")


# --- the artefact store ------------------------------------------------------------------------


class S3BlobWriter:
    """Buffers up to one part; a file larger than a part becomes a multipart upload."""

    def __init__(self, client: S3Client, bucket: str, key: str, part_bytes: int) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._part_bytes = part_bytes
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._etags: list[str] = []

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        while len(self._buffer) >= self._part_bytes:
            part = bytes(self._buffer[: self._part_bytes])
            del self._buffer[: self._part_bytes]
            await self._upload(part)

    async def _upload(self, part: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = await self._client.create_multipart(self._bucket, self._key)
        number = len(self._etags) + 1
        etag = await self._client.upload_part(
            self._bucket, self._key, self._upload_id, number, part
        )
        self._etags.append(etag)

    async def commit(self) -> None:
        try:
            if self._upload_id is None:
                await self._client.put_object(self._bucket, self._key, bytes(self._buffer))
            else:
                if self._buffer:
                    await self._upload(bytes(self._buffer))
                await self._client.complete_multipart(
                    self._bucket, self._key, self._upload_id, self._etags
                )
        except BaseException:
            await self.abort()
            raise
        self._buffer = bytearray()

    async def abort(self) -> None:
        self._buffer = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            # If this fails, the bucket's lifecycle rule for incomplete uploads removes the rest.
            with contextlib.suppress(Unavailable, NotFound, PermissionDenied):
                await self._client.abort_multipart(self._bucket, self._key, upload_id)


class S3BlobStore:
    """Content under ``<prefix><key>`` in one bucket."""

    def __init__(self, client: S3Client, config: S3Config) -> None:
        self.client = client
        self._config = config
        self.description = f"s3://{config.bucket}/{config.prefix} at {config.endpoint}"

    @classmethod
    async def open(cls, config: S3Config) -> S3BlobStore:
        """The store, once the bucket answers (Unavailable or PermissionDenied saying why not)."""
        client = S3Client.create(config)
        try:
            await client.head_bucket(config.bucket)
        except NotFound:
            await client.close()
            raise Unavailable(
                f"the artefact bucket {config.bucket!r} does not exist at {config.endpoint}"
            ) from None
        except BaseException:
            await client.close()
            raise
        return cls(client, config)

    def _key(self, key: str) -> str:
        if not _KEY.fullmatch(key):
            raise ValueError(f"{key!r} is not an artefact store key")
        return self._config.prefix + key

    async def writer(self, key: str) -> S3BlobWriter:
        return S3BlobWriter(
            self.client, self._config.bucket, self._key(key), self._config.part_bytes
        )

    async def read(self, key: str, chunk_bytes: int) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in self.client.get_object(
                self._config.bucket, self._key(key), chunk_bytes
            ):
                yield chunk
        except NotFound:
            raise NotFound("artefact content", key) from None

    async def delete(self, key: str) -> None:
        await self.client.delete_object(self._config.bucket, self._key(key))

    async def close(self) -> None:
        await self.client.close()
