"""heat-scheduler: serve the scheduler, migrate its database, apply a manifest."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import json_format
from heat.scheduler.v1 import registry_service_pb2 as pb
from heat.scheduler.v1 import registry_service_pb2_grpc as pb_grpc

from scheduler import logs, settings
from scheduler.store.embedded import EmbeddedPostgresError

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _serve(args: argparse.Namespace) -> int:
    from scheduler import app

    config = settings.load(args)
    logs.configure(config.log_level, config.log_format)
    asyncio.run(app.serve(config))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from scheduler import app

    config = settings.load(args)
    logs.configure(config.log_level, config.log_format)

    async def run() -> None:
        async with app.database(config) as dsn:
            applied = await app.migrate_database(dsn)
        print("applied: " + (", ".join(applied) or "nothing, the schema is current"))

    asyncio.run(run())
    return 0


def _apply(args: argparse.Namespace) -> int:
    try:
        document = json.loads(Path(args.manifest).read_text(encoding="utf-8"))
        manifest = json_format.ParseDict(document, pb.Manifest())
    except (OSError, ValueError, json_format.ParseError) as exc:
        print(f"error: cannot read manifest {args.manifest}: {exc}", file=sys.stderr)
        return 2
    with grpc.insecure_channel(args.address) as channel:
        stub = pb_grpc.RegistryServiceStub(channel)
        try:
            response = stub.ApplyManifest(
                pb.ApplyManifestRequest(manifest=manifest, validate_only=args.validate_only),
                timeout=args.timeout,
            )
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    verb = "would be" if args.validate_only else "was"
    for result in response.results:
        action = pb.ApplyAction.Name(result.action).removeprefix("APPLY_ACTION_").lower()
        print(f"{result.kind:<16} {result.name:<40} {verb} {action}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="heat-scheduler", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the scheduler (embedded PostgreSQL unless a database URL is set)",
        description="Settings: a flag wins over its HEAT_* environment variable, "
        "which wins over the default.",
    )
    settings.add_arguments(serve)
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="apply pending database migrations and exit")
    settings.add_arguments(migrate)
    migrate.set_defaults(run=_migrate)

    apply = commands.add_parser(
        "apply", help="create or update the runners and templates of a HEAT manifest"
    )
    apply.add_argument("manifest", help="JSON file: {runners, nodeTemplates, sessionTemplates}")
    apply.add_argument(
        "--address",
        default=os.environ.get("HEAT_ADDRESS", DEFAULT_ADDRESS),
        help=f"scheduler address [env HEAT_ADDRESS, default {DEFAULT_ADDRESS}]",
    )
    apply.add_argument("--validate-only", action="store_true", help="report, change nothing")
    apply.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    apply.set_defaults(run=_apply)

    from scheduler.cli_client import add_client_commands

    add_client_commands(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except settings.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EmbeddedPostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
