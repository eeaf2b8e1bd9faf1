"""What every client command shares: the channel, argument types, reading files, and how
errors are printed (a server error: ``error: CODE: details`` and its field violations, exit 1;
a bad file or argument: exit 2).
"""

from __future__ import annotations

import argparse
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


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    return grpc.insecure_channel(args.address, options=CHANNEL_OPTIONS)


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
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNAVAILABLE:
                print(f"  (is heat-scheduler serving on {args.address}?)", file=sys.stderr)
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
    return common


def add_command(parent: Any, name: str, run: Command, help_text: str) -> argparse.ArgumentParser:
    """A subcommand with --address and --timeout whose errors are printed as above."""
    sub: argparse.ArgumentParser = parent.add_parser(
        name, parents=[connection_options()], help=help_text, description=help_text
    )
    sub.set_defaults(run=guard(run))
    return sub
