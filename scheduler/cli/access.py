"""Access commands: whoami, tokens (issue, list, revoke) and the audit trail."""

from __future__ import annotations

import argparse
import re
import sys

from google.protobuf import duration_pb2
from heat.scheduler.v1 import access_pb2
from heat.scheduler.v1 import access_service_pb2 as apb
from heat.scheduler.v1 import access_service_pb2_grpc as apb_grpc

from scheduler.cli import render
from scheduler.cli.calls import add_command, count, open_channel

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def ttl(text: str) -> int:
    """``90s``, ``30m``, ``12h``, ``30d`` (or plain seconds) into seconds."""
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 12h or 30d")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def _whoami(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
        caller = (
            apb_grpc.AccessServiceStub(channel)
            .GetCaller(apb.GetCallerRequest(), timeout=args.timeout)
            .caller
        )
    kind = access_pb2.CallerKind.Name(caller.kind).removeprefix("CALLER_KIND_").lower()
    print(f"{caller.subject} ({kind.replace('_', ' ')}), role {render.role(caller.role)}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    request = apb.IssueAccessTokenRequest(
        role=access_pb2.Role.Value("ROLE_" + args.role.upper()), description=args.description
    )
    if args.ttl:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=args.ttl))
    with open_channel(args) as channel:
        token = (
            apb_grpc.AccessServiceStub(channel)
            .IssueAccessToken(request, timeout=args.timeout)
            .token
        )
    print(token.secret, flush=True)
    expires = render.when(token.expire_time) if token.HasField("expire_time") else "never"
    print(
        f"Issued access token {token.id} (role {render.role(token.role)}, expires {expires}). "
        "The secret above is shown only once: the scheduler keeps only its digest.\n"
        "Call with it as 'authorization: Bearer <secret>' (HEAT_TOKEN for this CLI); revoke "
        f"it with: heat-scheduler tokens revoke {token.id}",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
        found = (
            apb_grpc.AccessServiceStub(channel)
            .ListAccessTokens(
                apb.ListAccessTokensRequest(show_revoked=args.revoked), timeout=args.timeout
            )
            .tokens
        )
    for line in render.tokens_table(found):
        print(line)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
        token = (
            apb_grpc.AccessServiceStub(channel)
            .RevokeAccessToken(apb.RevokeAccessTokenRequest(id=args.id), timeout=args.timeout)
            .token
        )
    print(f"revoked {token.id} at {render.when(token.revoke_time)}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    request = apb.ListAuditEventsRequest(
        page_size=min(args.limit, 1000),
        subject=args.subject,
        resource=args.resource,
        name=args.name,
    )
    events: list[access_pb2.AuditEvent] = []
    with open_channel(args) as channel:
        stub = apb_grpc.AccessServiceStub(channel)
        while len(events) < args.limit:
            page = stub.ListAuditEvents(request, timeout=args.timeout)
            events += page.events
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
    for line in render.audit_table(events[: args.limit]):
        print(line)
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add whoami, tokens and audit to ``heat-scheduler``."""
    add_command(commands, "whoami", _whoami, "the identity and role the scheduler sees for you")

    tokens = commands.add_parser("tokens", help="access tokens of operators and services")
    actions = tokens.add_subparsers(dest="tokens_command", required=True)
    issue = add_command(actions, "issue", _issue, "issue an access token; prints its secret once")
    issue.add_argument("--role", required=True, choices=("admin", "operator", "viewer"))
    issue.add_argument("--description", default="", metavar="TEXT")
    issue.add_argument(
        "--ttl", type=ttl, default=0, metavar="DURATION", help="e.g. 12h or 30d; default never"
    )
    listed = add_command(actions, "list", _list, "access tokens, newest first")
    listed.add_argument("--revoked", action="store_true", help="include revoked ones")
    revoke = add_command(actions, "revoke", _revoke, "revoke an access token")
    revoke.add_argument("id")

    audit = add_command(commands, "audit", _audit, "who changed what, newest first")
    audit.add_argument("--subject", default="", help="only this caller (a token id, a subject)")
    audit.add_argument("--resource", default="", help="only this kind, e.g. runner, session")
    audit.add_argument("--name", default="", help="only the resource of this name")
    audit.add_argument("--limit", type=count, default=50, help="most events shown (default 50)")
