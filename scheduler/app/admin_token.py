"""The first admin identity: a token from a file the deployment gives, or one made at the first
start and written to the data folder."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from scheduler.domain import access as access_rules
from scheduler.service.access import Access
from scheduler.settings import Settings, SettingsError

log = logging.getLogger("scheduler")


async def bootstrap_admin(access: Access, settings: Settings) -> None:
    """The first admin identity, without a window where anyone may call as admin.

    - ``admin_token_file`` given (e.g. a mounted Kubernetes Secret): its content is the
      bootstrap admin token; a changed file replaces it (the old one stops working).
    - Otherwise ``data_dir/admin-token``: at the first start on a database (no bootstrap token
      stored yet) a new token is written there, 0600, and the CLI on this machine finds it by
      default. Such a file only ever fills an empty place: a replica starting later on the same
      database (or losing a race to be first) keeps the token that is stored.
    """
    path = settings.admin_token_path()
    given = bool(settings.admin_token_file)
    if path.exists():
        secret = await asyncio.to_thread(_read_token, path)
    elif given:
        raise SettingsError(
            f"setting admin_token_file (--admin-token-file / HEAT_ADMIN_TOKEN_FILE): {path} "
            "does not exist; point it at the file holding the first admin token, or leave it "
            "empty to have one made in the data folder"
        )
    elif await access.bootstrap_exists():
        log.info(
            "the first admin token was made at an earlier start; it is not in %s (issue more "
            "with: heat-scheduler tokens issue --role admin)",
            path,
        )
        return
    else:
        secret = access_rules.new_token_secret()
        await asyncio.to_thread(_write_token, path, secret)
        log.info("wrote the first admin token", extra={"file": str(path)})
    outcome = await access.bootstrap(secret, source=str(path), replace=given)
    if outcome.changed:
        log.info("the first admin token is set", extra={"file": str(path)})
    elif not given and not await access.is_bootstrap(secret):
        log.warning(
            "%s holds no token of this database (its first admin token was made elsewhere); "
            "remove the file, or issue a token with: heat-scheduler tokens issue --role admin",
            path,
        )


def _read_token(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & 0o077 and not path.is_symlink():
        # Kubernetes mounts Secrets through symlinks, with modes of its own choosing.
        log.warning("the admin token file %s may be read by others (mode %o)", path, mode & 0o777)
    secret = path.read_text(encoding="utf-8").strip()
    problem = access_rules.check_given_secret(secret)
    if problem:
        raise SettingsError(
            f"setting admin_token_file (--admin-token-file / HEAT_ADMIN_TOKEN_FILE): the token "
            f"in {path} {problem}"
        )
    return secret


def _write_token(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never over another token; 0600 from the start, never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")
