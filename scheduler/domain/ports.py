"""What the services need from the outside world, as protocols the store and provisioners keep.

- ``Store``: units of work (one transaction each) over six repositories, one per aggregate:
  ``registry`` (Runners, templates, credentials), ``sessions`` (Sessions and their change
  logs), ``tasks`` (nodes as the runner protocol sees them: claims, attempts, leases, retries),
  ``provisioning`` (what each Runner has and wants), ``access`` (access tokens) and ``audit``
  (who changed what). Everything crossing them is a named
  domain value. What a unit of work changed is announced at its commit, to this replica's
  ``ChangeFeed`` and (through the database) to every other replica's.
- ``Leadership``: one replica at a time holds a duty, for a term. The writes only the duty's
  holder may make (expiring leases, promoting retries, provisioning) exist only on a
  ``LeaderUnitOfWork``, which ``Store.fenced(term)`` opens: a transaction that commits only
  while the term is the duty's current one (``scheduler.domain.leadership``).
- ``Provisioner``: starts and stops runner instances.
- ``BlobStore``: where artefact content lives (a folder, an S3 bucket), and ``SourceReader``:
  files the scheduler may read by URI. Their rows are the ``artifacts`` repository's.

The services depend on these protocols only; the app's wiring module hands them PostgreSQL
and a provisioner (or, in unit tests, fakes that keep the promises).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence, Set
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from scheduler.domain.access import AccessToken
from scheduler.domain.artifacts import Artifact, AttemptHolder, NewArtifact, SourceUri
from scheduler.domain.audit import AuditEvent, AuditFilter
from scheduler.domain.dag import Settlement
from scheduler.domain.dispatch_order import Durations
from scheduler.domain.leadership import Duty, Term
from scheduler.domain.provisioning import InstanceSpec, Observed, RunnerStatus, RunnerWork
from scheduler.domain.registry import NodeTemplate, Runner, RunnerCredential, SessionTemplate
from scheduler.domain.runner_protocol import AttemptState, ClaimedTask, ClaimRequest
from scheduler.domain.sessions import (
    NewSession,
    NodeRef,
    SessionCursor,
    SessionFilter,
    SessionState,
    StoredEvent,
    StoredSession,
)
from scheduler.domain.verdicts import EarlierVerdict, ExpiredAttempt, HeldNode

# Given the Runners a settlement made work ready for, the claims to make along with it.
ClaimPlanner = Callable[[Set[str]], Sequence[ClaimRequest]]


@dataclass(frozen=True, slots=True)
class RunnerFilter:
    enabled: bool | None = None
    feature_internal_name: str = ""


class RegistryRepository(Protocol):
    """Runners, Node Templates, Session Templates and runner credentials. Reads may lock the
    rows for the change at hand."""

    async def runners_by_name(
        self, names: Sequence[str], *, lock: bool = False
    ) -> dict[str, Runner]: ...
    async def all_runners(self) -> list[Runner]: ...
    async def runner_ids_taken(self, ids: Sequence[int]) -> dict[int, str]: ...
    async def insert_runners(self, runners: Sequence[Runner]) -> list[Runner]: ...
    async def update_runners(self, runners: Sequence[Runner]) -> list[Runner]: ...
    async def delete_runner(self, name: str) -> bool: ...
    async def list_runners(self, after: str, limit: int, where: RunnerFilter) -> list[Runner]: ...

    async def node_templates_by_name(
        self, names: Sequence[str], *, lock: bool = False
    ) -> dict[str, NodeTemplate]: ...
    async def node_templates_of_runner(self, runner: str) -> list[str]: ...
    async def insert_node_templates(
        self, templates: Sequence[NodeTemplate]
    ) -> list[NodeTemplate]: ...
    async def update_node_templates(
        self, templates: Sequence[NodeTemplate]
    ) -> list[NodeTemplate]: ...
    async def delete_node_template(self, name: str) -> bool: ...
    async def list_node_templates(
        self, after: str, limit: int, runner: str
    ) -> list[NodeTemplate]: ...
    async def durations(self, names: Sequence[str]) -> dict[str, Durations]:
        """The measured durations of the given Node Templates (those with any)."""
        ...

    async def session_templates_by_name(
        self, names: Sequence[str], *, lock: bool = False
    ) -> dict[str, SessionTemplate]: ...
    async def session_templates_using(
        self, node_templates: Sequence[str]
    ) -> list[SessionTemplate]: ...
    async def insert_session_templates(
        self, templates: Sequence[SessionTemplate]
    ) -> list[SessionTemplate]: ...
    async def update_session_templates(
        self, templates: Sequence[SessionTemplate]
    ) -> list[SessionTemplate]: ...
    async def delete_session_template(self, name: str) -> bool: ...
    async def list_session_templates(
        self, after: str, limit: int, node_template: str
    ) -> list[SessionTemplate]: ...

    async def insert_credential(
        self, credential: RunnerCredential, secret_hash: bytes
    ) -> RunnerCredential: ...
    async def list_credentials(
        self, runner: str, *, show_revoked: bool
    ) -> list[RunnerCredential]: ...
    async def revoke_credential(self, credential_id: str) -> RunnerCredential | None: ...
    async def runner_of_credential(self, secret_hash: bytes) -> str | None:
        """The Runner a credential (not revoked) belongs to."""
        ...


class SessionRepository(Protocol):
    """Sessions: created whole, read with their nodes and change logs, cancelled."""

    async def by_request_id(self, request_id: str) -> str | None: ...
    async def insert(self, new: NewSession, now: datetime) -> int: ...
    async def get(
        self, name: str, *, with_nodes: bool, max_nodes: int = 1_000_000
    ) -> StoredSession | None: ...
    async def page(
        self, where: SessionFilter, after: SessionCursor | None, limit: int
    ) -> list[StoredSession]: ...
    async def events_after(self, session_id: int, seq: int, limit: int) -> list[StoredEvent]: ...
    async def node(self, session_id: int, key: str) -> NodeRef | None: ...
    async def count_by_state(self) -> dict[SessionState, int]: ...
    async def cancel(
        self, session_id: int, idxs: Sequence[int] | None, now: datetime, reason: str
    ) -> None:
        """Cancel a whole Session (``idxs`` None) or some of its nodes and what depends on them."""
        ...

    async def set_priority(self, session_id: int, priority: int) -> None:
        """Move a Session and its queues to another priority level (locks the Session)."""
        ...


class TaskRepository(Protocol):
    """Nodes as the runner protocol sees them: claims, attempts, leases, results."""

    async def claim(self, request: ClaimRequest) -> list[ClaimedTask]: ...
    async def claim_along(
        self, requests: Sequence[ClaimRequest], now: datetime
    ) -> list[list[ClaimedTask]]:
        """Claims made along with another change of the same transaction (a new Session's
        roots): what each claimed, in order. A Runner whose queue they emptied is not
        announced as having work."""
        ...

    async def held(self, attempt_ids: Sequence[str]) -> dict[str, HeldNode]:
        """The nodes these attempts name (by their current attempt or not), locked."""
        ...

    async def earlier_verdicts(self, attempt_ids: Sequence[str]) -> dict[str, EarlierVerdict]:
        """The verdicts already recorded for these attempts (read after ``held`` locked their
        nodes, so a verdict committed meanwhile by another replica is seen)."""
        ...

    async def settle(
        self, settlement: Settlement, now: datetime, claims: ClaimPlanner | None = None
    ) -> list[list[ClaimedTask]]:
        """Apply a settlement: the held nodes' states, released children, doomed descendants,
        the Sessions' bookkeeping, the verdicts to remember. With ``claims``: asked, once the
        Runners that got work ready are known, which claims to make in the same transaction;
        returns what each claimed, in order."""
        ...

    async def extend_leases(
        self, runner: str, attempt_ids: Sequence[str], deadline: datetime, now: datetime
    ) -> set[str]:
        """Move the leases of the Runner's running attempts to ``deadline``; a lease (or an
        attempt's time) already past ``now`` is never extended."""
        ...

    async def attempt_states(self, attempt_ids: Sequence[str]) -> dict[str, AttemptState]: ...
    async def next_deadline(self) -> datetime | None: ...


class LeaderTaskRepository(TaskRepository, Protocol):
    """What only the timekeeper's and the reconciler's leader does to tasks."""

    async def expire_leases_of(self, instance_ids: Sequence[str], now: datetime) -> int:
        """End the leases that instances (which died) hold, for the timekeeper to requeue."""
        ...

    async def expired(self, now: datetime, limit: int) -> list[ExpiredAttempt]: ...
    async def promote_due_retries(self, now: datetime, limit: int) -> int: ...


class ProvisioningRepository(Protocol):
    """What each Runner has and wants, and which of its instances drain."""

    async def work_by_runner(self) -> dict[str, RunnerWork]: ...
    async def runner_status(self, names: Sequence[str]) -> dict[str, RunnerStatus]: ...
    async def claim_drain(
        self, instance_id: str, runner: str, reason: str, now: datetime
    ) -> bool: ...


class LeaderProvisioningRepository(ProvisioningRepository, Protocol):
    """What only the reconciler's leader records."""

    async def save_runner_status(self, statuses: Sequence[RunnerStatus], now: datetime) -> None: ...
    async def forget_drains(self, instance_ids: Sequence[str]) -> None: ...


class AccessRepository(Protocol):
    """Access tokens, by id and by their secret's digest."""

    async def insert_token(self, token: AccessToken, secret_hash: bytes) -> AccessToken: ...
    async def list_tokens(self, *, show_revoked: bool) -> list[AccessToken]: ...
    async def revoke_token(self, token_id: str) -> AccessToken | None: ...
    async def token_by_digest(self, secret_hash: bytes) -> AccessToken | None: ...
    async def token_digest(self, token_id: str) -> bytes | None: ...
    async def replace_token(
        self, token: AccessToken, secret_hash: bytes, *, replace: bool = True
    ) -> AccessToken | None:
        """Insert the token, or give the one with its id this digest (unrevoked, no expiry);
        None when it had this digest already (a revoked one stays revoked). With ``replace``
        false, a token with its id is left as it is (None)."""
        ...


class AuditRepository(Protocol):
    """The audit trail: events recorded with the change they describe."""

    async def record(self, events: Sequence[AuditEvent]) -> None: ...
    async def page(self, where: AuditFilter, before: int, limit: int) -> list[AuditEvent]:
        """Newest first, ids below ``before`` (0: from the newest)."""
        ...


class ArtifactRepository(Protocol):
    """Artefact rows: ``writing`` until their content is in the ``BlobStore``, then ``ready``."""

    async def insert(self, new: NewArtifact) -> None: ...
    async def ready(
        self, artifact_id: str, size_bytes: int, sha256: str, expire_time: datetime | None
    ) -> Artifact: ...
    async def get(self, artifact_id: str) -> Artifact | None: ...
    async def page(
        self, session_id: int, after: tuple[datetime, str] | None, limit: int
    ) -> list[Artifact]: ...
    async def owners(self, artifact_ids: Sequence[str]) -> dict[str, int | None]:
        """The Session of each ready artefact (None: an upload no Session uses yet)."""
        ...

    async def attach(self, artifact_ids: Sequence[str], session_id: int) -> list[str]:
        """Give ready uploads that no Session uses to a Session; the ids it took."""
        ...

    async def holder(self, attempt_id: str) -> AttemptHolder | None:
        """The node an attempt id names (its current attempt or not), not locked."""
        ...

    async def stamp_ended(self, retention: timedelta, limit: int) -> int:
        """Set the deletion time of artefacts of Sessions that ended: the end plus retention."""
        ...

    async def due(self, now: datetime, limit: int) -> list[str]:
        """Artefacts past their deletion time, locked (others skip them)."""
        ...

    async def delete(self, artifact_ids: Sequence[str]) -> None: ...
    async def next_expiry(self) -> datetime | None: ...


class UnitOfWork(Protocol):
    """One transaction over every repository."""

    @property
    def registry(self) -> RegistryRepository: ...
    @property
    def sessions(self) -> SessionRepository: ...
    @property
    def tasks(self) -> TaskRepository: ...
    @property
    def provisioning(self) -> ProvisioningRepository: ...
    @property
    def access(self) -> AccessRepository: ...
    @property
    def audit(self) -> AuditRepository: ...
    @property
    def artifacts(self) -> ArtifactRepository: ...


class LeaderUnitOfWork(UnitOfWork, Protocol):
    """A unit of work of a duty's leader: it commits only while the term is current."""

    @property
    def tasks(self) -> LeaderTaskRepository: ...
    @property
    def provisioning(self) -> LeaderProvisioningRepository: ...


class Store(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """A read-write unit of work, committed when the block ends normally."""
        ...

    def snapshot(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """A read-only, repeatable-read unit of work: several reads, one point in time."""
        ...

    def fenced(self, term: Term) -> AbstractAsyncContextManager[LeaderUnitOfWork]:
        """A read-write unit of work for the holder of ``term``: NotLeader at once if the term
        is no longer the duty's current one; while it runs no other replica can take the duty
        over, and it may not sit idle longer than the lease allows."""
        ...

    def claiming(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """A read-write unit of work for a claim: a statement planned for a whole backlog yet
        run for a batch, many times a second; the store may set it up for that."""
        ...


@dataclass(slots=True)
class Changes:
    """What committed units of work changed, for whoever waits on it."""

    ready_runners: set[str] = field(default_factory=set)  # have claimable work
    sessions: set[int] = field(default_factory=set)  # logged changes
    cancelled_attempts: list[str] = field(default_factory=list)  # their runners must hear it
    deadlines: list[datetime | None] = field(default_factory=list)  # None: due now

    def __bool__(self) -> bool:
        return bool(
            self.ready_runners or self.sessions or self.cancelled_attempts or self.deadlines
        )


class ChangeFeed(Protocol):
    """Where the store announces changes: those of this replica's commits at once, those of
    other replicas' as they arrive."""

    def changed(self, changes: Changes) -> None: ...
    def missed(self) -> None:
        """Announcements may have been lost (the connection that hears them was down)."""
        ...


class Leadership(Protocol):
    def lead(self, duty: Duty) -> AbstractAsyncContextManager[Term]:
        """Wait until this replica holds ``duty``; held for as long as the block runs, unless
        ``Term.lost`` is set first. Leaving the block steps down."""
        ...


class Provisioner(Protocol):
    """Starts and stops runner instances: Kubernetes pods, local processes, or nothing.

    The observed state is a cache kept current by the backend (a watch, or process exits);
    ``changed`` is called whenever it changes, so the reconciler never polls.
    """

    name: str

    async def start(self, changed: Callable[[], None]) -> None: ...
    async def stop(self) -> None: ...
    def observed(self) -> list[Observed]:
        """Every instance this scheduler's provisioner manages, live or ended."""
        ...

    async def create(self, spec: InstanceSpec) -> Observed: ...
    async def delete(self, instance: Observed) -> None:
        """Delete exactly this instance (by uid); an instance already gone is not an error."""
        ...

    async def has_credential(self, runner: str) -> bool: ...
    async def store_credential(self, runner: str, secret: str) -> None:
        """Keep the Runner's credential where its instances read it (a Secret, the environment)."""
        ...


class BlobWriter(Protocol):
    """The content of one artefact being written; nothing is visible before ``commit``."""

    async def write(self, chunk: bytes) -> None: ...
    async def commit(self) -> None: ...
    async def abort(self) -> None:
        """Drop what was written; safe after a failed write or commit."""
        ...


class BlobStore(Protocol):
    """Where artefact content lives, by key (an artefact id): a folder, an S3 bucket. Keys are
    written once; the store knows nothing of sizes, digests or Sessions (the service checks
    those). Failures of the backend are ``Unavailable``; a missing key is ``NotFound``."""

    description: str

    async def writer(self, key: str) -> BlobWriter: ...
    def read(self, key: str, chunk_bytes: int) -> AsyncGenerator[bytes, None]:
        """The content in chunks of at most ``chunk_bytes``; NotFound before the first."""
        ...

    async def delete(self, key: str) -> None:
        """Delete the content; a key already gone is not an error."""
        ...

    async def close(self) -> None: ...


class SourceReader(Protocol):
    """Reads files by URI for CreateSession's file inputs (whatever the allow-list admits)."""

    def read(self, uri: SourceUri, chunk_bytes: int) -> AsyncIterator[bytes]:
        """The content in chunks; NotFound (or PermissionDenied) before the first."""
        ...
