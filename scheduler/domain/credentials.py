"""Runner credentials: random bearer secrets, stored only as digests."""

from __future__ import annotations

import hashlib
import secrets


def new_credential_id() -> str:
    return "rc-" + secrets.token_hex(8)


def new_secret() -> str:
    # The prefix lets secret scanners and operators recognise a leaked credential.
    return "heatrc_" + secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()
