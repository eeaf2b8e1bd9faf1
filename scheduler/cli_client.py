"""heat-scheduler's operator commands: submit, watch, show, sessions, cancel, credentials.

Each command is one call (or one stream) of the sync gRPC client; what it prints comes from
``scheduler.cli_render``. A server error prints ``error: CODE: details`` and its field
violations and exits 1; a bad file or argument exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import registry_service_pb2_grpc as rpb_grpc
from heat.scheduler.v1 import session_service_pb2 as sspb
from heat.scheduler.v1 import session_service_pb2_grpc as sspb_grpc

from scheduler import cli_render as render

DEFAULT_ADDRESS: Final = "127.0.0.1:50051"
# A stream that breaks (the scheduler restarting) is resumed after these backoffs.
RETRYABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
BACKOFF_FIRST: Final = 0.2
BACKOFF_MAX: Final = 5.0
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


def _width() -> int:
    return shutil.get_terminal_size((120, 24)).columns


def _channel(args: argparse.Namespace) -> grpc.Channel:
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


def _guard(command: Command) -> Command:
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


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}") from None


def _parameters(args: argparse.Namespace) -> struct_pb2.Struct:
    values: dict[str, Any] = {}
    if args.params_file:
        document = _read_json(args.params_file, "parameters file")
        if not isinstance(document, dict):
            raise InputError(f"parameters file {args.params_file} must hold a JSON object")
        values.update(document)
    values.update({k: _json_or_text(v) for k, v in args.param})
    struct = struct_pb2.Struct()
    try:
        json_format.ParseDict(values, struct)
    except json_format.ParseError as exc:
        raise InputError(f"bad parameters: {exc}") from None
    return struct


def _dag(path: str) -> sspb.Dag:
    document = _read_json(path, "DAG file")
    try:
        return json_format.ParseDict(document, sspb.Dag())
    except json_format.ParseError as exc:
        raise InputError(f"cannot read DAG file {path}: {exc}") from None


# -- sessions ---------------------------------------------------------------------------------


def _submit(args: argparse.Namespace) -> int:
    request = sspb.CreateSessionRequest(
        parameters=_parameters(args), labels=dict(args.label), request_id=args.request_id
    )
    if args.template:
        request.session_template = args.template
    else:
        request.dag.CopyFrom(_dag(args.dag))
    with _channel(args) as channel:
        stub = sspb_grpc.SessionServiceStub(channel)
        session = stub.CreateSession(request, timeout=args.timeout).session
        print(session.name, flush=True)
        if args.watch:
            return watch(channel, session.name, "", args.timeout)
    return 0


def _watch(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        return watch(channel, args.name, args.cursor, args.timeout)


class _Display:
    """A watch's output: an updating status line on a terminal, else one log line a change."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()

    def show(self, view: render.WatchView, response: sspb.WatchSessionResponse) -> None:
        self.write(view, view.apply(response, verbose=not self.tty), render.event_time(response))

    def write(self, view: render.WatchView, lines: list[str], at: datetime | None = None) -> None:
        if self.tty:
            text = "".join(f"\r\x1b[2K{line}\n" for line in lines)
            self.out.write(text + "\r\x1b[2K" + view.status_line(_width() - 1))
        else:
            at = at or datetime.now(UTC)
            self.out.write("".join(render.log_line(line, at) + "\n" for line in lines))
        self.out.flush()

    def note(self, view: render.WatchView, text: str) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K")
        print(text, file=sys.stderr, flush=True)
        if self.tty:
            self.out.write(view.status_line(_width() - 1))
            self.out.flush()

    def close(self, view: render.WatchView) -> None:
        if self.tty and view.state:
            self.out.write("\r\x1b[2K" + view.status_line(_width() - 1) + "\n")
            self.out.flush()


def watch(channel: grpc.Channel, name: str, cursor: str, timeout: float) -> int:
    """Follow a Session until it ends: 0 when it succeeded, 1 when it failed or was cancelled.

    A broken stream is reopened after the last cursor once the scheduler answers again;
    ``timeout`` is how long it may stay unreachable.
    """
    stub = sspb_grpc.SessionServiceStub(channel)
    view = render.WatchView(name)
    display = _Display(sys.stdout)
    try:
        if cursor:
            # Counts need every node's state, and a stream after the last change of an
            # ended Session would wait for ever: look at the current state first.
            first = _snapshot(stub, name, timeout)
            if first.snapshot.state in render.FINAL_SESSION and _at_or_after(cursor, first.cursor):
                view.apply(first)
                display.write(view, [view.end_line()])
                return 0 if view.succeeded else 1
            view.seed(first.snapshot)
            display.write(view, [view.summary_line(f"resuming after cursor {cursor}")])
        view.cursor = cursor
        _follow(stub, channel, view, display, timeout)
    except KeyboardInterrupt:
        display.close(view)
        if view.cursor:
            print(
                f"interrupted at cursor {view.cursor}; resume with: "
                f"heat-scheduler watch {name} --cursor {view.cursor}",
                file=sys.stderr,
            )
        return 130
    except (grpc.RpcError, Unreachable):
        display.close(view)  # end the status line before the error
        raise
    display.close(view)
    return 0 if view.succeeded else 1


def _at_or_after(cursor: str, last: str) -> bool:
    """Whether ``cursor`` is at or past ``last``, the cursor of a snapshot.

    Cursors are opaque; this scheduler's are sequence numbers, so compare them as such when
    both are, rather than open a stream that would wait for a change that never comes.
    """
    if cursor.isdigit() and last.isdigit():
        return int(cursor) >= int(last)
    return cursor == last


def _snapshot(
    stub: sspb_grpc.SessionServiceStub, name: str, timeout: float
) -> sspb.WatchSessionResponse:
    call = stub.WatchSession(sspb.WatchSessionRequest(name=name), timeout=timeout)
    try:
        return next(call)
    finally:
        call.cancel()


def _follow(
    stub: sspb_grpc.SessionServiceStub,
    channel: grpc.Channel,
    view: render.WatchView,
    display: _Display,
    timeout: float,
) -> None:
    delay = BACKOFF_FIRST
    while True:
        call = stub.WatchSession(sspb.WatchSessionRequest(name=view.name, cursor=view.cursor))
        try:
            for response in call:
                delay = BACKOFF_FIRST
                display.show(view, response)
                if view.ended:
                    call.cancel()
                    return
            why = "the stream ended early"
        except grpc.RpcError as exc:
            if not isinstance(exc, grpc.Call) or exc.code() not in RETRYABLE:
                raise
            why = exc.code().name
        finally:
            call.cancel()
        display.note(view, f"watch: {why}; reconnecting after cursor {view.cursor or '(none)'}")
        time.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not secrets
        delay = min(delay * 2, BACKOFF_MAX)
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Unreachable(
                f"the scheduler stayed unreachable for {timeout:g}s; resume with: "
                f"heat-scheduler watch {view.name} --cursor {view.cursor}"
            ) from None


def _show(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        stub = sspb_grpc.SessionServiceStub(channel)
        session = stub.GetSession(sspb.GetSessionRequest(name=args.name), timeout=args.timeout)
    if args.json:
        print(json_format.MessageToJson(session.session))
        return 0
    for line in render.session_lines(session.session, datetime.now(UTC), _width()):
        print(line)
    return 0


def _sessions(args: argparse.Namespace) -> int:
    found: list[Any] = []
    token = ""
    with _channel(args) as channel:
        stub = sspb_grpc.SessionServiceStub(channel)
        while len(found) < args.limit:
            page = stub.ListSessions(
                sspb.ListSessionsRequest(
                    page_size=min(args.limit - len(found), 1000),
                    page_token=token,
                    states=args.state,
                    session_template=args.template,
                ),
                timeout=args.timeout,
            )
            found += page.sessions
            token = page.next_page_token
            if not token:
                break
    for line in render.sessions_table(found[: args.limit], _width()):
        print(line)
    if token:
        print(f"(more than {args.limit}; raise --limit to see them)", file=sys.stderr)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        stub = sspb_grpc.SessionServiceStub(channel)
        if args.node:
            node = stub.CancelNode(
                sspb.CancelNodeRequest(session=args.name, key=args.node, reason=args.reason),
                timeout=args.timeout,
            ).node
            print(f"{args.name} node {node.key} {render.node_state(node.state)}")
            return 0
        session = stub.CancelSession(
            sspb.CancelSessionRequest(name=args.name, reason=args.reason), timeout=args.timeout
        ).session
    state = render.session_state(session.state)
    print(f"{session.name} {state}: {render.counts_text(render.counts_of(session))}")
    return 0


# -- runner credentials -----------------------------------------------------------------------


def _issue(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)
        issued = stub.IssueRunnerCredential(
            rpb.IssueRunnerCredentialRequest(runner=args.runner, description=args.description),
            timeout=args.timeout,
        ).credential
    print(issued.secret, flush=True)
    print(
        f"Issued credential {issued.id} for runner {issued.runner}. The secret above is shown "
        "only once: the scheduler keeps only its digest.\n"
        f"Give it to the runner's instances as HEAT_RUNNER_CREDENTIAL (with "
        f"HEAT_RUNNER={issued.runner}); revoke it with: "
        f"heat-scheduler credentials revoke {issued.id}",
        file=sys.stderr,
    )
    return 0


def _list_credentials(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)
        found = stub.ListRunnerCredentials(
            rpb.ListRunnerCredentialsRequest(runner=args.runner, show_revoked=args.revoked),
            timeout=args.timeout,
        ).credentials
    for line in render.credentials_table(found):
        print(line)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)
        revoked = stub.RevokeRunnerCredential(
            rpb.RevokeRunnerCredentialRequest(id=args.id), timeout=args.timeout
        ).credential
    print(f"revoked {revoked.id} of runner {revoked.runner} at {render.when(revoked.revoke_time)}")
    return 0


def _runners(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)
        found = stub.ListRunners(rpb.ListRunnersRequest(page_size=1000), timeout=args.timeout)
    for line in render.runners_table(found.runners, _width()):
        print(line)
    return 0


# -- the command line -------------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _state(text: str) -> int:
    try:
        return render.parse_session_state(text)
    except ValueError:
        names = "pending, running, succeeded, failed, cancelled"
        raise argparse.ArgumentTypeError(f"{text!r} is not one of: {names}") from None


def _connection() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address",
        default=os.environ.get("HEAT_ADDRESS", DEFAULT_ADDRESS),
        help=f"scheduler address [env HEAT_ADDRESS, default {DEFAULT_ADDRESS}]",
    )
    common.add_argument(
        "--timeout",
        type=_positive,
        default=30.0,
        help="seconds a call may take; for a watch, how long the scheduler may stay "
        "unreachable (default 30)",
    )
    return common


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add submit, watch, show, sessions, cancel and credentials to ``heat-scheduler``."""
    common = [_connection()]

    def add(parent: Any, name: str, run: Command, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(
            name, parents=common, help=help_text, description=help_text
        )
        sub.set_defaults(run=_guard(run))
        return sub

    submit = add(commands, "submit", _submit, "create a Session; prints its name")
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("--template", help="the Session Template to run")
    source.add_argument("--dag", metavar="FILE.json", help='inline DAG: {"nodes": [...]}')
    submit.add_argument(
        "--param", action="append", type=_pair, default=[], metavar="K=V",
        help="a Session parameter; V is read as JSON when it parses, else as text",
    )  # fmt: skip
    submit.add_argument("--params-file", metavar="FILE.json", help="parameters as a JSON object")
    submit.add_argument("--label", action="append", type=_pair, default=[], metavar="K=V")
    submit.add_argument("--request-id", default="", help="idempotency key")
    submit.add_argument("--watch", action="store_true", help="then follow it, as `watch`")

    watcher = add(commands, "watch", _watch, "follow a Session's progress until it ends")
    watcher.add_argument("name")
    watcher.add_argument("--cursor", default="", help="resume after this cursor")

    show = add(commands, "show", _show, "a Session's nodes, states, errors and outputs")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="the whole Session as proto JSON")

    listing = add(commands, "sessions", _sessions, "list Sessions, newest first")
    listing.add_argument("--state", action="append", type=_state, default=[])
    listing.add_argument("--template", default="", help="only from this Session Template")
    listing.add_argument("--limit", type=_count, default=50, help="at most N (default 50)")

    cancel = add(commands, "cancel", _cancel, "cancel a Session, or one node of it")
    cancel.add_argument("name")
    cancel.add_argument("--node", metavar="KEY", help="cancel only this node")
    cancel.add_argument("--reason", default="", metavar="TEXT")

    add(commands, "runners", _runners, "Runners with their instances, work and last error")

    credentials = commands.add_parser("credentials", help="runner credentials")
    actions = credentials.add_subparsers(dest="credentials_command", required=True)
    issue = add(actions, "issue", _issue, "issue a credential; prints its secret once")
    issue.add_argument("runner")
    issue.add_argument("--description", default="", metavar="TEXT")
    listed = add(actions, "list", _list_credentials, "a Runner's credentials, newest first")
    listed.add_argument("runner")
    listed.add_argument("--revoked", action="store_true", help="include revoked ones")
    revoke = add(actions, "revoke", _revoke, "revoke a credential")
    revoke.add_argument("id")
