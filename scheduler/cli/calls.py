"""What every client command shares: the channel, argument types, reading files, and how
errors are printed (a server error: ``error: CODE: details`` and its field violations, exit 1;
a bad file or argument: exit 2).

Who the CLI calls as: ``--token`` (HEAT_TOKEN), else the file ``--token-file``
(HEAT_TOKEN_FILE), else the scheduler's own first admin token when it is on this machine
(HEAT_ADMIN_TOKEN_FILE, else ``admin-token`` in HEAT_DATA_DIR, default ``heat-data``), so
``heat-scheduler serve`` and these commands work together in one folder with no step between.
TLS: ``--tls-ca``/``--tls-cert``/``--tls-key`` (HEAT_TLS_CA, HEAT_TLS_CERT, HEAT_TLS_KEY, as the
runtime reads them); any of them turns TLS on.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from scheduler.cli import render
from scheduler.domain.backoff import Backoff
from scheduler.settings import ADMIN_TOKEN_FILE

DEFAULT_ADDRESS: Final = "127.0.0.1:50051"
# A stream that breaks (the scheduler restarting) is resumed after these backoffs.
RETRYABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
RECONNECT: Final = Backoff(timedelta(seconds=0.2), timedelta(seconds=5), spread=0.5)
CHANNEL_OPTIONS: Final = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

Command = Callable[[argparse.Namespace], int]


class InputError(Exception):
    """A file or argument the command cannot use: exit 2."""


class Unreachable(Exception):
    """The scheduler stayed away longer than a watch may wait: exit 1."""


def width() -> int:
    return shutil.get_terminal_size((120, 24)).columns


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Sends ``authorization: Bearer <token>`` with every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, d: Any) -> _Details:
        metadata = [*(d.metadata or ()), self._header]
        compression = getattr(d, "compression", None)
        return _Details(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready, compression)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def token_of(args: argparse.Namespace) -> str:
    """The bearer token to call with; empty when there is none."""
    if args.token:
        return str(args.token).strip()
    if args.token_file:
        return _read(args.token_file, "token file").decode(errors="replace").strip()
    admin = os.environ.get("HEAT_ADMIN_TOKEN_FILE") or str(
        Path(os.environ.get("HEAT_DATA_DIR") or "heat-data") / ADMIN_TOKEN_FILE
    )
    try:
        return Path(admin).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from --tls-ca/--tls-cert/--tls-key; None for plaintext."""
    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InputError("--tls-cert and --tls-key (HEAT_TLS_CERT, HEAT_TLS_KEY) go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(args.tls_ca, "CA file") if args.tls_ca else None,
        private_key=_read(args.tls_key, "key file") if args.tls_key else None,
        certificate_chain=_read(args.tls_cert, "certificate file") if args.tls_cert else None,
    )


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    credentials = channel_credentials(args)
    options = list(CHANNEL_OPTIONS)
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    channel = (
        grpc.secure_channel(args.address, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(args.address, options=options)
    )
    token = token_of(args)
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel


def rpc_error_lines(exc: grpc.RpcError) -> list[str]:
    """``error: CODE: details`` and each google.rpc.BadRequest field violation."""
    if not isinstance(exc, grpc.Call):
        return [f"error: {exc}"]
    violations: list[tuple[str, str]] = []
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
    return render.error_lines(exc.code().name, exc.details() or "", violations)


def guard(command: Command) -> Command:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Unreachable as exc:
            print(f"error: UNAVAILABLE: {exc}", file=sys.stderr)
            return 1
        except grpc.RpcError as exc:
            for line in rpc_error_lines(exc):
                print(line, file=sys.stderr)
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code == grpc.StatusCode.UNAVAILABLE:
                print(f"  (is heat-scheduler serving on {args.address}?)", file=sys.stderr)
            elif code == grpc.StatusCode.UNAUTHENTICATED:
                print(
                    "  (give a token: --token / HEAT_TOKEN, --token-file / HEAT_TOKEN_FILE; "
                    "the first admin token is heat-data/admin-token where the scheduler runs)",
                    file=sys.stderr,
                )
            return 1

    return run


# -- reading arguments and files --------------------------------------------------------------


def pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}") from None


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address",
        default=os.environ.get("HEAT_ADDRESS", DEFAULT_ADDRESS),
        help=f"scheduler address [env HEAT_ADDRESS, default {DEFAULT_ADDRESS}]",
    )
    common.add_argument(
        "--timeout",
        type=positive,
        default=30.0,
        help="seconds a call may take; for a watch, how long the scheduler may stay "
        "unreachable (default 30)",
    )
    env = os.environ.get
    common.add_argument(
        "--token",
        default=env("HEAT_TOKEN", ""),
        help="access token to call with [env HEAT_TOKEN]; default: --token-file, else the "
        "first admin token in the data folder (HEAT_DATA_DIR/admin-token)",
    )
    common.add_argument(
        "--token-file", default=env("HEAT_TOKEN_FILE", ""), help="file holding the token"
    )
    common.add_argument(
        "--tls-ca", default=env("HEAT_TLS_CA", ""), help="CA bundle (PEM) to trust; turns TLS on"
    )
    common.add_argument(
        "--tls-cert", default=env("HEAT_TLS_CERT", ""), help="client certificate (PEM) for mTLS"
    )
    common.add_argument("--tls-key", default=env("HEAT_TLS_KEY", ""), help="its key (PEM)")
    common.add_argument(
        "--tls-server-name",
        default=env("HEAT_TLS_SERVER_NAME", ""),
        help="name to expect in the server's certificate, if not the address's host",
    )
    return common


def add_command(parent: Any, name: str, run: Command, help_text: str) -> argparse.ArgumentParser:
    """A subcommand with --address and --timeout whose errors are printed as above."""
    sub: argparse.ArgumentParser = parent.add_parser(
        name, parents=[connection_options()], help=help_text, description=help_text
    )
    sub.set_defaults(run=guard(run))
    return sub
