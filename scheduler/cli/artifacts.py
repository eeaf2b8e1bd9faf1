"""Files of Sessions: ``submit --file``'s uploads, and ``artifacts upload | list | get``."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

import grpc
from heat.scheduler.v1 import artifact_pb2 as apb
from heat.scheduler.v1 import artifact_service_pb2 as aspb
from heat.scheduler.v1 import artifact_service_pb2_grpc as aspb_grpc

from scheduler.cli import render
from scheduler.cli.calls import InputError, add_command, count, open_channel, width

CHUNK: Final = 1024 * 1024
_ARTIFACT: Final = re.compile(r"artifacts/[0-9a-f]{32}")
_BINDING: Final = re.compile(r"(?:(?P<node>[a-z0-9][-a-z0-9]*):)?(?P<input>[^=:]+)=(?P<source>.+)")


def file_binding(text: str) -> tuple[str, str, str]:
    """``[NODE:]INPUT=SOURCE`` as (node key, input name, source)."""
    match = _BINDING.fullmatch(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not [NODE:]INPUT=PATH: e.g. file=data.csv, or sum:file=data.csv for"
            " the node sum"
        )
    return match["node"] or "", match["input"], match["source"]


def file_inputs(
    channel: grpc.Channel, bindings: list[tuple[str, str, str]], timeout: float
) -> list[apb.FileInput]:
    """Each binding as a FileInput: a local file is uploaded first; a file:// or s3:// URI is
    for the scheduler to read; artifacts/<id> names an earlier upload."""
    inputs = []
    for node_key, input_name, source in bindings:
        given = apb.FileInput(input=input_name, node_key=node_key)
        if source.startswith(("file://", "s3://")):
            given.uri = source
        elif _ARTIFACT.fullmatch(source):
            given.artifact = source
        else:
            given.artifact = upload(channel, Path(source), timeout).name
        inputs.append(given)
    return inputs


def upload(channel: grpc.Channel, path: Path, timeout: float) -> apb.Artifact:
    """Upload a file in chunks, its size and SHA-256 announced (the scheduler checks both)."""
    try:
        size = path.stat().st_size
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None

    def parts() -> Iterator[aspb.UploadArtifactRequest]:
        header = aspb.ArtifactUpload(
            filename=path.name[:255], size_bytes=size, sha256=digest.hexdigest()
        )
        yield aspb.UploadArtifactRequest(upload=header)
        with path.open("rb") as file:
            while chunk := file.read(CHUNK):
                yield aspb.UploadArtifactRequest(data=chunk)

    stub = aspb_grpc.ArtifactServiceStub(channel)
    # An upload takes as long as the file needs: the timeout is per MiB, at least the default.
    allowed = max(timeout, timeout * size / (16 * CHUNK))
    artifact: apb.Artifact = stub.UploadArtifact(parts(), timeout=allowed).artifact
    return artifact


def _upload(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
        for path in args.paths:
            artifact = upload(channel, Path(path), args.timeout)
            print(artifact.name, flush=True)
    return 0


def _list(args: argparse.Namespace) -> int:
    found: list[apb.Artifact] = []
    token = ""
    with open_channel(args) as channel:
        stub = aspb_grpc.ArtifactServiceStub(channel)
        while len(found) < args.limit:
            page = stub.ListArtifacts(
                aspb.ListArtifactsRequest(
                    session=args.session,
                    page_size=min(1000, args.limit - len(found)),
                    page_token=token,
                ),
                timeout=args.timeout,
            )
            found += page.artifacts
            token = page.next_page_token
            if not token:
                break
    for line in render.artifacts_table(found[: args.limit], width()):
        print(line)
    if token:
        print(f"(more than {args.limit}; raise --limit to see them)", file=sys.stderr)
    return 0


def _get(args: argparse.Namespace) -> int:
    with open_channel(args) as channel, _output(args.output) as out:
        stub = aspb_grpc.ArtifactServiceStub(channel)
        stream = stub.DownloadArtifact(
            aspb.DownloadArtifactRequest(name=args.name), timeout=args.timeout
        )
        artifact: apb.Artifact | None = None
        digest = hashlib.sha256()
        size = 0
        for message in stream:
            if message.WhichOneof("part") == "artifact":
                artifact = message.artifact
                continue
            digest.update(message.data)
            size += len(message.data)
            out.write(message.data)
        if artifact is None or size != artifact.size_bytes or digest.hexdigest() != artifact.sha256:
            raise InputError(
                f"{args.name} arrived damaged (its size or SHA-256 differs); try again"
            )
    if args.output and args.output != "-":
        print(f"{args.name}: {size} bytes to {args.output} (sha256 {artifact.sha256})")
    return 0


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[bytes]]:
    """Standard output, or a file written whole or not at all (renamed into place)."""
    if not path or path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    folder = target.parent if str(target.parent) else Path()
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
    except OSError as exc:
        raise InputError(f"cannot write into {folder}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
        Path(temporary).replace(target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``artifacts upload | list | get`` to ``heat-scheduler``."""
    group = commands.add_parser("artifacts", help="files of Sessions: upload, list, get")
    verbs = group.add_subparsers(dest="verb", required=True)

    up = add_command(verbs, "upload", _upload, "upload files; prints each artefact's name")
    up.add_argument("paths", nargs="+", metavar="PATH")

    listing = add_command(verbs, "list", _list, "a Session's files: given to it, and returned")
    listing.add_argument("session")
    listing.add_argument("--limit", type=count, default=100, help="at most N (default 100)")

    get = add_command(verbs, "get", _get, "download a file (its digest checked)")
    get.add_argument("name", help="artifacts/<id>, as outputs and `artifacts list` show it")
    get.add_argument("-o", "--output", metavar="PATH", help="write here (default: stdout)")
