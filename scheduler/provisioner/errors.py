"""Errors a provisioner backend raises; the reconciler shows them on the Runner's status."""

from __future__ import annotations


class ProvisionerError(Exception):
    """Creating or deleting an instance (or its credential) failed; ``status`` is the
    backend's code when it has one (an HTTP status for Kubernetes)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
