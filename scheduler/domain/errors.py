"""The one exception tree of the scheduling domain.

    SchedulerError
     ├── InvalidArgument      a request field is bad; carries FieldViolations
     ├── NotFound             the named thing does not exist
     ├── AlreadyExists        the name (or id) is taken
     ├── FailedPrecondition   the request is fine but the state forbids it
     ├── Aborted              a concurrent change won; retrying may succeed
     ├── Unauthenticated      no (valid) credential
     ├── PermissionDenied     a valid credential that may not do this
     ├── ResourceExhausted    a size bound was exceeded
     ├── Unavailable          a dependency (PostgreSQL) is down; retrying later may succeed
     ├── DataLoss             stored or sent content is not what it should be (a digest differs)
     └── Internal             a fault of ours (a database statement failed for no reason a
                              caller gave); logged, and shown to callers only as INTERNAL

The transport maps each class to one gRPC status code (scheduler.transport.errors);
nothing below the transport knows about gRPC. The store raises Aborted, Unavailable and
Internal for what its database driver raises, so nothing above it knows the driver either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: a dotted path in request terms (``runner.memory_limit``) and why."""

    field: str
    description: str

    def under(self, prefix: str) -> FieldViolation:
        """The same violation, its path placed below ``prefix``."""
        return FieldViolation(f"{prefix}.{self.field}" if self.field else prefix, self.description)


class SchedulerError(Exception):
    """Base of every error the domain raises on purpose."""

    reason: str = "SCHEDULER_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(SchedulerError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation], message: str | None = None) -> None:
        self.violations = list(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message or f"invalid request: {summary}")


class NotFound(SchedulerError):
    reason = "NOT_FOUND"

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} {name!r} not found")


class AlreadyExists(SchedulerError):
    reason = "ALREADY_EXISTS"

    def __init__(self, kind: str, name: str, message: str | None = None) -> None:
        self.kind = kind
        self.name = name
        super().__init__(message or f"{kind} {name!r} already exists")


class FailedPrecondition(SchedulerError):
    reason = "FAILED_PRECONDITION"


class InUse(FailedPrecondition):
    """Deleting something that others still name."""

    reason = "IN_USE"

    def __init__(self, kind: str, name: str, user_kind: str, users: Iterable[str]) -> None:
        self.users = sorted(users)
        shown = ", ".join(self.users[:20]) + (" …" if len(self.users) > 20 else "")
        super().__init__(f"{kind} {name!r} is still used by {user_kind}: {shown}")


class Aborted(SchedulerError):
    reason = "ABORTED"


class Unauthenticated(SchedulerError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(SchedulerError):
    reason = "PERMISSION_DENIED"


class ResourceExhausted(SchedulerError):
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(SchedulerError):
    reason = "UNAVAILABLE"


class DataLoss(SchedulerError):
    reason = "DATA_LOSS"


class Internal(SchedulerError):
    reason = "INTERNAL"


def raise_if(violations: Sequence[FieldViolation]) -> None:
    """Raise InvalidArgument when any violation was collected."""
    if violations:
        raise InvalidArgument(violations)
