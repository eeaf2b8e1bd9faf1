"""Session commands: submit, watch, show, sessions, cancel, priority."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import grpc
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from heat.scheduler.v1 import session_pb2 as spb
from heat.scheduler.v1 import session_service_pb2 as sspb
from heat.scheduler.v1 import session_service_pb2_grpc as sspb_grpc

from scheduler.cli import render
from scheduler.cli.artifacts import file_binding, file_inputs
from scheduler.cli.calls import (
    RECONNECT,
    RETRYABLE,
    InputError,
    Unreachable,
    add_command,
    count,
    json_or_text,
    open_channel,
    pair,
    read_json,
    width,
)
from scheduler.domain.backoff import Retries


def _parameters(args: argparse.Namespace) -> struct_pb2.Struct:
    values: dict[str, Any] = {}
    if args.params_file:
        document = read_json(args.params_file, "parameters file")
        if not isinstance(document, dict):
            raise InputError(f"parameters file {args.params_file} must hold a JSON object")
        values.update(document)
    values.update({k: json_or_text(v) for k, v in args.param})
    struct = struct_pb2.Struct()
    try:
        json_format.ParseDict(values, struct)
    except json_format.ParseError as exc:
        raise InputError(f"bad parameters: {exc}") from None
    return struct


def _dag(path: str) -> sspb.Dag:
    document = read_json(path, "DAG file")
    try:
        return json_format.ParseDict(document, sspb.Dag())
    except json_format.ParseError as exc:
        raise InputError(f"cannot read DAG file {path}: {exc}") from None


def _submit(args: argparse.Namespace) -> int:
    request = sspb.CreateSessionRequest(
        parameters=_parameters(args),
        labels=dict(args.label),
        request_id=args.request_id,
        priority=args.priority,
    )
    if args.template:
        request.session_template = args.template
    else:
        request.dag.CopyFrom(_dag(args.dag))
    with open_channel(args) as channel:
        request.files.extend(file_inputs(channel, args.file, args.timeout))
        stub = sspb_grpc.SessionServiceStub(channel)
        session = stub.CreateSession(request, timeout=args.timeout).session
        print(session.name, flush=True)
        if args.watch:
            return watch(channel, session.name, "", args.timeout)
    return 0


def _watch(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
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
            self.out.write(text + "\r\x1b[2K" + view.status_line(width() - 1))
        else:
            at = at or datetime.now(UTC)
            self.out.write("".join(render.log_line(line, at) + "\n" for line in lines))
        self.out.flush()

    def note(self, view: render.WatchView, text: str) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K")
        print(text, file=sys.stderr, flush=True)
        if self.tty:
            self.out.write(view.status_line(width() - 1))
            self.out.flush()

    def close(self, view: render.WatchView) -> None:
        if self.tty and view.state:
            self.out.write("\r\x1b[2K" + view.status_line(width() - 1) + "\n")
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
    retries = Retries(RECONNECT)
    while True:
        call = stub.WatchSession(sspb.WatchSessionRequest(name=view.name, cursor=view.cursor))
        try:
            for response in call:
                retries.reset()
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
        time.sleep(retries.wait())
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Unreachable(
                f"the scheduler stayed unreachable for {timeout:g}s; resume with: "
                f"heat-scheduler watch {view.name} --cursor {view.cursor}"
            ) from None


def _show(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
        stub = sspb_grpc.SessionServiceStub(channel)
        session = stub.GetSession(sspb.GetSessionRequest(name=args.name), timeout=args.timeout)
    if args.json:
        print(json_format.MessageToJson(session.session))
        return 0
    for line in render.session_lines(session.session, datetime.now(UTC), width()):
        print(line)
    return 0


def _sessions(args: argparse.Namespace) -> int:
    found: list[Any] = []
    token = ""
    with open_channel(args) as channel:
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
    for line in render.sessions_table(found[: args.limit], width()):
        print(line)
    if token:
        print(f"(more than {args.limit}; raise --limit to see them)", file=sys.stderr)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
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


def _priority(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
        stub = sspb_grpc.SessionServiceStub(channel)
        session = stub.UpdateSession(
            sspb.UpdateSessionRequest(
                session=spb.Session(name=args.name, priority=args.level),
                update_mask=field_mask_pb2.FieldMask(paths=["priority"]),
            ),
            timeout=args.timeout,
        ).session
    print(f"{session.name} priority {render.priority_text(session)}")
    return 0


def _level(text: str) -> int:
    try:
        level = int(text)
    except ValueError:
        level = 0
    if not 1 <= level <= 9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a priority level from 1 to 9")
    return level


def _state(text: str) -> int:
    try:
        return render.parse_session_state(text)
    except ValueError:
        names = "pending, running, succeeded, failed, cancelled"
        raise argparse.ArgumentTypeError(f"{text!r} is not one of: {names}") from None


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add submit, watch, show, sessions, cancel and priority to ``heat-scheduler``."""
    submit = add_command(commands, "submit", _submit, "create a Session; prints its name")
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("--template", help="the Session Template to run")
    source.add_argument("--dag", metavar="FILE.json", help='inline DAG: {"nodes": [...]}')
    submit.add_argument(
        "--param", action="append", type=pair, default=[], metavar="K=V",
        help="a Session parameter; V is read as JSON when it parses, else as text",
    )  # fmt: skip
    submit.add_argument("--params-file", metavar="FILE.json", help="parameters as a JSON object")
    submit.add_argument("--label", action="append", type=pair, default=[], metavar="K=V")
    submit.add_argument("--request-id", default="", help="idempotency key")
    submit.add_argument(
        "--file", action="append", type=file_binding, default=[], metavar="[NODE:]INPUT=PATH",
        help="give a file as the input INPUT of the node NODE (default: of every node without"
        " upstream nodes); PATH is uploaded, a file:// or s3:// URI read by the scheduler,"
        " artifacts/<id> an earlier upload",
    )  # fmt: skip
    submit.add_argument(
        "--priority", type=_level, default=0, metavar="1-9",
        help="priority level, higher first (default: the template's, else 5)",
    )  # fmt: skip
    submit.add_argument("--watch", action="store_true", help="then follow it, as `watch`")

    watcher = add_command(commands, "watch", _watch, "follow a Session's progress until it ends")
    watcher.add_argument("name")
    watcher.add_argument("--cursor", default="", help="resume after this cursor")

    show = add_command(commands, "show", _show, "a Session's nodes, states, errors and outputs")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="the whole Session as proto JSON")

    listing = add_command(commands, "sessions", _sessions, "list Sessions, newest first")
    listing.add_argument("--state", action="append", type=_state, default=[])
    listing.add_argument("--template", default="", help="only from this Session Template")
    listing.add_argument("--limit", type=count, default=50, help="at most N (default 50)")

    cancel = add_command(commands, "cancel", _cancel, "cancel a Session, or one node of it")
    cancel.add_argument("name")
    cancel.add_argument("--node", metavar="KEY", help="cancel only this node")
    cancel.add_argument("--reason", default="", metavar="TEXT")

    priority = add_command(
        commands, "priority", _priority, "move a Session to another priority level (1-9)"
    )
    priority.add_argument("name")
    priority.add_argument("level", type=_level, help="1 (lowest) to 9 (highest)")
