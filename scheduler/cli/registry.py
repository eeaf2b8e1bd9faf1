"""Registry commands: apply a manifest, runners, runner credentials."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from google.protobuf import json_format
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import registry_service_pb2_grpc as rpb_grpc

from scheduler.cli import render
from scheduler.cli.calls import add_command, open_channel, width


def _issue(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
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
    with open_channel(args) as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)
        found = stub.ListRunnerCredentials(
            rpb.ListRunnerCredentialsRequest(runner=args.runner, show_revoked=args.revoked),
            timeout=args.timeout,
        ).credentials
    for line in render.credentials_table(found):
        print(line)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)
        revoked = stub.RevokeRunnerCredential(
            rpb.RevokeRunnerCredentialRequest(id=args.id), timeout=args.timeout
        ).credential
    print(f"revoked {revoked.id} of runner {revoked.runner} at {render.when(revoked.revoke_time)}")
    return 0


def _runners(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)
        found = stub.ListRunners(rpb.ListRunnersRequest(page_size=1000), timeout=args.timeout)
    for line in render.runners_table(found.runners, width()):
        print(line)
    return 0


def _apply(args: argparse.Namespace) -> int:
    try:
        document = json.loads(Path(args.manifest).read_text(encoding="utf-8"))
        manifest = json_format.ParseDict(document, rpb.Manifest())
    except (OSError, ValueError, json_format.ParseError) as exc:
        print(f"error: cannot read manifest {args.manifest}: {exc}", file=sys.stderr)
        return 2
    with open_channel(args) as channel:
        stub = rpb_grpc.RegistryServiceStub(channel)
        response = stub.ApplyManifest(
            rpb.ApplyManifestRequest(manifest=manifest, validate_only=args.validate_only),
            timeout=args.timeout,
        )
    verb = "would be" if args.validate_only else "was"
    for result in response.results:
        action = rpb.ApplyAction.Name(result.action).removeprefix("APPLY_ACTION_").lower()
        print(f"{result.kind:<16} {result.name:<40} {verb} {action}")
    return 0


def add_apply(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apply = add_command(
        commands, "apply", _apply, "create or update the runners and templates of a HEAT manifest"
    )
    apply.add_argument("manifest", help="JSON file: {runners, nodeTemplates, sessionTemplates}")
    apply.add_argument("--validate-only", action="store_true", help="report, change nothing")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add runners and credentials to ``heat-scheduler``."""
    add_command(commands, "runners", _runners, "Runners with their instances, work and last error")

    credentials = commands.add_parser("credentials", help="runner credentials")
    actions = credentials.add_subparsers(dest="credentials_command", required=True)
    issue = add_command(actions, "issue", _issue, "issue a credential; prints its secret once")
    issue.add_argument("runner")
    issue.add_argument("--description", default="", metavar="TEXT")
    listed = add_command(actions, "list", _list_credentials, "a Runner's credentials, newest first")
    listed.add_argument("runner")
    listed.add_argument("--revoked", action="store_true", help="include revoked ones")
    revoke = add_command(actions, "revoke", _revoke, "revoke a credential")
    revoke.add_argument("id")
