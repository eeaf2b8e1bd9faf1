"""What can go wrong with the embedded server."""

from __future__ import annotations


class EmbeddedPostgresError(Exception):
    """The embedded PostgreSQL server could not be set up, started or stopped."""


class PostgresNotInstalled(EmbeddedPostgresError):
    """No PostgreSQL server binaries were found."""
