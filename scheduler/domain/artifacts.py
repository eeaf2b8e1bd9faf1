"""Artefacts: files of Sessions, and the references that stand for them in JSON.

A file never travels inside a task or a result. Task inputs and node outputs hold the
reference ``{"$artifact": "artifacts/<id>"}``; the content lives in the artefact store (a
``BlobStore``: a folder or an S3 bucket) under the id, and moves in chunks on streams of its
own. An artefact row is ``writing`` until its content is complete, then ``ready``; only ready
ones may be read or referred to.

Where files come from: uploads (kept for ``unused_upload_ttl`` unless a Session takes them),
URIs the scheduler reads at CreateSession (only under the locations an operator allows), and
outputs of attempts (written under the attempt's lease). A Session's artefacts are deleted
``retention`` after the Session ended; ``None`` keeps them.

Everything here is pure.
"""

from __future__ import annotations

import enum
import hashlib
import posixpath
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from scheduler.domain.errors import DataLoss, FieldViolation, InvalidArgument, ResourceExhausted

# The key of the one-key JSON object that refers to an artefact.
REFERENCE_KEY: Final = "$artifact"
NAME_PREFIX: Final = "artifacts/"
_ID: Final = re.compile(r"[0-9a-f]{32}")
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
# Input names: what process() finds the file under (inputs["file"]).
INPUT_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,62}")


class ArtifactState(enum.StrEnum):
    WRITING = "writing"
    READY = "ready"


@dataclass(frozen=True, slots=True)
class Artifact:
    id: str
    state: ArtifactState
    source: str  # "upload", "output", or the URI read
    create_time: datetime
    session: str = ""  # empty: an upload no Session uses yet
    session_id: int | None = None
    node_key: str = ""  # the node whose attempt wrote it; empty for a file given to a Session
    attempt: int = 0
    filename: str = ""
    size_bytes: int = 0
    sha256: str = ""
    expire_time: datetime | None = None
    session_end_time: datetime | None = None

    @property
    def name(self) -> str:
        return artifact_name(self.id)

    def expires(self, retention: timedelta | None) -> datetime | None:
        """When it will be deleted: its stamped time, else (a Session that ended, not yet
        stamped by the janitor) the end plus the retention; None while the Session runs."""
        if self.expire_time is not None:
            return self.expire_time
        if self.session_end_time is not None and retention is not None:
            return self.session_end_time + retention
        return None


@dataclass(frozen=True, slots=True)
class NewArtifact:
    """A row to insert before the content is written (state ``writing``)."""

    id: str
    source: str
    filename: str
    create_time: datetime
    expire_time: datetime | None  # an upload's, or an abandoned write's, deadline
    session_id: int | None = None
    idx: int | None = None
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class Upload:
    """What a caller (or a runner) says about the content it is about to send."""

    filename: str = ""
    size_bytes: int = 0  # 0: unknown
    sha256: str = ""  # "": unknown


@dataclass(frozen=True, slots=True)
class AttemptHolder:
    """The node an attempt id names, for authorising artefact reads and writes."""

    session_id: int
    idx: int
    attempt: int
    attempt_id: str
    runner: str
    running: bool  # the node is running and this is its current attempt


@dataclass(frozen=True, slots=True)
class FileInput:
    """A file given to a Session: ``input`` of node ``node_key`` (empty: of every node with
    no upstream nodes), from an upload (``artifact``) or a ``uri``."""

    input: str
    node_key: str = ""
    artifact: str = ""
    uri: str = ""


def new_artifact_id() -> str:
    return secrets.token_hex(16)


def artifact_name(artifact_id: str) -> str:
    return NAME_PREFIX + artifact_id


def parse_name(name: str, field: str) -> str:
    """The id of ``artifacts/<id>``; InvalidArgument naming ``field`` otherwise."""
    artifact_id = name.removeprefix(NAME_PREFIX)
    if not name.startswith(NAME_PREFIX) or not _ID.fullmatch(artifact_id):
        raise InvalidArgument(
            [FieldViolation(field, f"{name[:80]!r} is not an artefact name (artifacts/<32 hex>)")]
        )
    return artifact_id


def reference(name: str) -> dict[str, str]:
    """The JSON that stands for an artefact in inputs and outputs."""
    return {REFERENCE_KEY: name}


def references_in(value: Any) -> tuple[list[str], list[str]]:
    """The artefact ids a JSON value refers to, and what is wrong with it: an object holding
    the reserved key that is not a well-formed reference (``{"$artifact": "artifacts/<id>"}``
    and nothing else)."""
    ids: list[str] = []
    problems: list[str] = []
    for path, item in _objects(value, "outputs"):
        if REFERENCE_KEY not in item:
            continue
        name = item[REFERENCE_KEY]
        text = name if isinstance(name, str) else ""
        artifact_id = text.removeprefix(NAME_PREFIX)
        if len(item) != 1 or not text.startswith(NAME_PREFIX) or not _ID.fullmatch(artifact_id):
            problems.append(
                f"{path} holds the key {REFERENCE_KEY!r} but is not a reference to an artefact"
                f" ({{{REFERENCE_KEY!r}: 'artifacts/<id>'}} and nothing else)"
            )
            continue
        ids.append(artifact_id)
    return ids, problems


def _objects(value: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, Mapping):
            yield where, item
            stack.extend((f"{where}[{k!r}]", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))


def task_inputs(
    upstream: Mapping[str, Any] | None, files: Mapping[str, str] | None
) -> dict[str, Any]:
    """A task's inputs: the upstream nodes' outputs by node key, and the node's files by input
    name, as references."""
    inputs = dict(upstream or {})
    for input_name, name in (files or {}).items():
        inputs[input_name] = reference(name)
    return inputs


def check_upload(upload: Upload, field: str, *, max_bytes: int) -> list[FieldViolation]:
    out = []
    if len(upload.filename) > FILENAME_MAX_LENGTH or "\x00" in upload.filename:
        out.append(
            FieldViolation(f"{field}.filename", f"at most {FILENAME_MAX_LENGTH} characters, no NUL")
        )
    if not 0 <= upload.size_bytes <= max_bytes:
        out.append(
            FieldViolation(
                f"{field}.size_bytes",
                f"must be 0 (unknown) to {max_bytes} (setting max_artifact_bytes)",
            )
        )
    if upload.sha256 and not _SHA256.fullmatch(upload.sha256):
        out.append(FieldViolation(f"{field}.sha256", "is not 64 lower-case hex digits"))
    return out


FILENAME_MAX_LENGTH: Final = 255
URI_MAX_LENGTH: Final = 2048
MAX_FILE_INPUTS: Final = 100  # of one Session


class Content:
    """Counts and hashes content as it streams by, within a size bound, and checks it against
    what the sender announced."""

    def __init__(self, upload: Upload, max_bytes: int) -> None:
        self._upload = upload
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._max:
            raise ResourceExhausted(
                f"the file is larger than {self._max} bytes (setting max_artifact_bytes)"
            )
        if self._upload.size_bytes and self.size > self._upload.size_bytes:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "size_bytes",
                        f"more than the announced {self._upload.size_bytes} bytes were sent",
                    )
                ]
            )
        self._hash.update(chunk)

    def finish(self) -> str:
        """The hex digest, once the sender has sent everything."""
        if self._upload.size_bytes and self.size != self._upload.size_bytes:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "size_bytes",
                        f"{self.size} bytes were sent, not the announced {self._upload.size_bytes}",
                    )
                ]
            )
        digest = self._hash.hexdigest()
        if self._upload.sha256 and digest != self._upload.sha256:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "sha256",
                        f"the content sent has the SHA-256 {digest}, not the announced"
                        f" {self._upload.sha256}: it changed on the way, or the digest is wrong",
                    )
                ]
            )
        return digest


@dataclass(slots=True)
class Verifier:
    """Hashes content read back from the store and says whether it is what was stored."""

    artifact: Artifact
    _hash: Any = field(default_factory=hashlib.sha256)
    size: int = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._hash.update(chunk)

    def check(self) -> None:
        digest = self._hash.hexdigest()
        if self.size != self.artifact.size_bytes or digest != self.artifact.sha256:
            raise DataLoss(
                f"artefact {self.artifact.name}: the store returned {self.size} bytes with"
                f" SHA-256 {digest}, not the {self.artifact.size_bytes} bytes with SHA-256"
                f" {self.artifact.sha256} stored"
            )


# --- file inputs of a new Session ------------------------------------------------------------


def check_file_sources(files: Sequence[FileInput]) -> list[FieldViolation]:
    """What can be told of file inputs without the Session's nodes: how many, their input
    names, one source each."""
    if len(files) > MAX_FILE_INPUTS:
        return [FieldViolation("files", f"at most {MAX_FILE_INPUTS} files")]
    out: list[FieldViolation] = []
    for i, given in enumerate(files):
        where = f"files[{i}]"
        if not INPUT_NAME.fullmatch(given.input):
            out.append(
                FieldViolation(
                    f"{where}.input",
                    f"{given.input[:80]!r} is not an input name: a letter or '_', then letters,"
                    " digits, '_', '-' or '.', at most 63",
                )
            )
        if bool(given.artifact) == bool(given.uri):
            out.append(FieldViolation(f"{where}.source", "give exactly one of artifact and uri"))
        if len(given.uri) > URI_MAX_LENGTH:
            out.append(FieldViolation(f"{where}.uri", f"at most {URI_MAX_LENGTH} characters"))
    return out


def check_file_inputs(
    files: Sequence[FileInput],
    keys: Sequence[str],
    upstream: Mapping[str, Sequence[str]],
) -> list[FieldViolation]:
    """File inputs against the Session's nodes: a known node (or none: the nodes without
    upstream nodes, of which there is one at least), an input name that is not the key of one
    of the node's upstream nodes, and one file per node and input name."""
    out: list[FieldViolation] = []
    known = set(keys)
    taken: set[tuple[str, str]] = set()
    for i, given in enumerate(files):
        where = f"files[{i}]"
        if given.node_key and given.node_key not in known:
            out.append(
                FieldViolation(f"{where}.node_key", f"{given.node_key[:80]!r} is no node's key")
            )
            continue
        for key in receivers(given, keys, upstream):
            if given.input in upstream.get(key, ()):
                out.append(
                    FieldViolation(
                        f"{where}.input",
                        f"{given.input!r} is the key of an upstream node of {key!r}, whose"
                        " outputs its inputs hold under that name; choose another",
                    )
                )
            elif (key, given.input) in taken:
                out.append(
                    FieldViolation(
                        f"{where}.input", f"node {key!r} already has a file named {given.input!r}"
                    )
                )
            taken.add((key, given.input))
    return out


def receivers(
    given: FileInput, keys: Sequence[str], upstream: Mapping[str, Sequence[str]]
) -> list[str]:
    """The nodes a file goes to: the one named, else every node without upstream nodes."""
    if given.node_key:
        return [given.node_key]
    return [key for key in keys if not upstream.get(key)]


# --- URIs an operator allows -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceUri:
    scheme: str  # "file" or "s3"
    location: str  # file: an absolute, normalised path; s3: "bucket/key"


def parse_source(uri: str) -> SourceUri:
    """A URI the scheduler knows how to read; ValueError saying why not."""
    parts = urlsplit(uri)
    if parts.query or parts.fragment:
        raise ValueError("has a query or a fragment")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError("names another host; file URIs are file:///absolute/path")
        path = unquote(parts.path)
        if not path.startswith("/") or "\x00" in path:
            raise ValueError("is not file:///absolute/path")
        if ".." in path.split("/"):
            raise ValueError("has a '..' segment")
        return SourceUri("file", posixpath.normpath(path))
    if parts.scheme == "s3":
        key = unquote(parts.path).lstrip("/")
        if not parts.netloc or "\x00" in key:
            raise ValueError("is not s3://bucket/key")
        if ".." in key.split("/"):
            raise ValueError("has a '..' segment")
        return SourceUri("s3", f"{parts.netloc}/{key}")
    raise ValueError("has a scheme the scheduler does not read; use file:// or s3://")


def parse_allowed(prefixes: str) -> tuple[SourceUri, ...]:
    """The setting artifact_sources: comma-separated URI prefixes (file:///srv/in/,
    s3://bucket/inputs/); ValueError naming a bad one."""
    out = []
    for raw in (p.strip() for p in prefixes.split(",")):
        if not raw:
            continue
        try:
            out.append(parse_source(raw))
        except ValueError as error:
            raise ValueError(f"{raw!r} {error}") from None
    return tuple(out)


def allowed(uri: SourceUri, prefixes: Sequence[SourceUri]) -> bool:
    """Whether ``uri`` lies under one of the allowed prefixes, each taken as a folder (a key
    prefix up to a '/', in a bucket) whether it ends with '/' or not: ``file:///srv/in``
    allows ``/srv/in/a.csv``, never ``/srv/input/a.csv``."""
    for prefix in prefixes:
        root = prefix.location.rstrip("/")
        if prefix.scheme == uri.scheme and (
            uri.location == root or uri.location.startswith(root + "/")
        ):
            return True
    return False


def uri_filename(uri: SourceUri) -> str:
    return posixpath.basename(uri.location)[:FILENAME_MAX_LENGTH]


def file_problems(outputs: Any, owners: Mapping[str, int | None], session_id: int) -> str:
    """What is wrong with the artefacts ``outputs`` refer to, given the Session each ready one
    belongs to (``owners``); empty when every one is a ready artefact of ``session_id``."""
    ids, problems = references_in(outputs)
    for artifact_id in ids:
        if artifact_id not in owners:
            problems.append(f"{artifact_name(artifact_id)} is no stored artefact")
        elif owners[artifact_id] != session_id:
            problems.append(f"{artifact_name(artifact_id)} is not a file of this Session")
    return "; ".join(problems[:5])
