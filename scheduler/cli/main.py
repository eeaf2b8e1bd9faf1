"""heat-scheduler: serve the scheduler, migrate its database, and call it: manifests, Sessions,
runners, credentials, access tokens, the audit trail."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from scheduler import logs, settings
from scheduler.cli import access, artifacts, registry, sessions
from scheduler.embedded import EmbeddedPostgresError


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

    registry.add_apply(commands)
    sessions.add_commands(commands)
    artifacts.add_commands(commands)
    registry.add_commands(commands)
    access.add_commands(commands)
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
