"""A clock that tests move, and in-memory fakes of the store's and the provisioner's ports.

The fakes keep the promises the services rely on (the repository protocols of
``scheduler.domain.ports``) for the slice of behaviour a unit test looks at; what PostgreSQL
itself does (locks, the set-based statements) is the integration tests' business.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from scheduler.domain import dag
from scheduler.domain.access import AccessToken
from scheduler.domain.audit import AuditEvent, AuditFilter
from scheduler.domain.errors import Aborted, Internal, Unavailable
from scheduler.domain.leadership import Duty, NotLeader, Term
from scheduler.domain.ports import Changes, ClaimPlanner
from scheduler.domain.provisioning import InstanceSpec, Observed, Phase, RunnerStatus, RunnerWork
from scheduler.domain.registry import Runner, RunnerCredential
from scheduler.domain.runner_protocol import AttemptState, ClaimedTask, ClaimRequest
from scheduler.domain.sessions import NodeState
from scheduler.domain.verdicts import EarlierVerdict, ExpiredAttempt, ExpiryReason, HeldNode

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.at = now

    def now(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> datetime:
        self.at += timedelta(**delta)
        return self.at


# --- the store ---------------------------------------------------------------------------------


@dataclass
class MemoryRegistry:
    runners: dict[str, Runner] = field(default_factory=dict)
    credentials: dict[bytes, str] = field(default_factory=dict)

    async def runners_by_name(
        self, names: Sequence[str], *, lock: bool = False
    ) -> dict[str, Runner]:
        return {n: self.runners[n] for n in names if n in self.runners}

    async def all_runners(self) -> list[Runner]:
        return [self.runners[n] for n in sorted(self.runners)]

    async def runner_of_credential(self, secret_hash: bytes) -> str | None:
        return self.credentials.get(secret_hash)

    async def insert_credential(
        self, credential: RunnerCredential, secret_hash: bytes
    ) -> RunnerCredential:
        self.credentials[secret_hash] = credential.runner
        return credential


@dataclass
class MemoryTasks:
    """Attempts by id: the nodes they hold, their leases, the verdicts given to them."""

    nodes: dict[str, HeldNode] = field(default_factory=dict)
    leases: dict[str, datetime] = field(default_factory=dict)
    verdicts: dict[str, EarlierVerdict] = field(default_factory=dict)
    queued: list[ClaimedTask] = field(default_factory=list)
    settlements: list[dag.Settlement] = field(default_factory=list)
    claims: list[ClaimRequest] = field(default_factory=list)
    extended: list[tuple[str, list[str]]] = field(default_factory=list)
    conflicts: int = 0  # settlements that lose to a concurrent change before one wins
    changes: Changes = field(default_factory=Changes)
    # Attempts whose retry the database refuses to store (a value of another era): a settlement
    # that would put one in retry_wait fails as PostgreSQL's statement would (Internal).
    unstorable_retries: set[str] = field(default_factory=set)

    def running(self, node: HeldNode, lease: datetime) -> None:
        self.nodes[node.attempt_id] = node
        self.leases[node.attempt_id] = lease

    async def claim(self, request: ClaimRequest) -> list[ClaimedTask]:
        self.claims.append(request)
        taken, self.queued = self.queued[: len(request.owners)], self.queued[len(request.owners) :]
        return [
            replace(
                t,
                owner=owner,
                lease_deadline=request.lease_deadline,
                heartbeat_interval=request.heartbeat_interval,
            )
            for t, owner in zip(taken, request.owners, strict=False)
        ]

    async def claim_along(
        self, requests: Sequence[ClaimRequest], now: datetime
    ) -> list[list[ClaimedTask]]:
        return [await self.claim(r) for r in requests]

    async def held(self, attempt_ids: Sequence[str]) -> dict[str, HeldNode]:
        return {a: self.nodes[a] for a in attempt_ids if a in self.nodes}

    async def earlier_verdicts(self, attempt_ids: Sequence[str]) -> dict[str, EarlierVerdict]:
        return {a: self.verdicts[a] for a in attempt_ids if a in self.verdicts}

    async def settle(
        self, settlement: dag.Settlement, now: datetime, claims: ClaimPlanner | None = None
    ) -> list[list[ClaimedTask]]:
        if self.conflicts:
            self.conflicts -= 1
            raise Aborted("a concurrent change won (fake); retry")
        for write in settlement.writes:
            if write.node.attempt_id in self.unstorable_retries and write.not_before is not None:
                raise Internal("a database statement failed (DatetimeFieldOverflow, fake)")
        claimed = []
        if claims is not None:
            for request in claims(settlement.ready_runners):
                claimed.append(await self.claim(request))
        self.settlements.append(settlement)
        for write in settlement.writes:
            self.nodes[write.node.attempt_id] = replace(write.node, state=write.state)
            self.leases.pop(write.node.attempt_id, None)
        for verdict in settlement.verdicts:
            self.verdicts[verdict.node.attempt_id] = EarlierVerdict(verdict.reply, verdict.outcome)
        self.changes.ready_runners |= settlement.ready_runners
        return claimed

    async def extend_leases(
        self, runner: str, attempt_ids: Sequence[str], deadline: datetime, now: datetime
    ) -> set[str]:
        self.extended.append((runner, list(attempt_ids)))
        done = set()
        for a in attempt_ids:
            node = self.nodes.get(a)
            if node is None or node.state is not NodeState.RUNNING or node.runner != runner:
                continue
            if a in self.leases and now < self.leases[a] < deadline:
                self.leases[a] = deadline
                done.add(a)
        return done

    async def attempt_states(self, attempt_ids: Sequence[str]) -> dict[str, AttemptState]:
        return {
            a: AttemptState(self.nodes[a].state, self.leases.get(a), self.nodes[a].runner)
            for a in attempt_ids
            if a in self.nodes
        }

    async def expire_leases_of(self, instance_ids: Sequence[str], now: datetime) -> int:
        return 0

    async def expired(self, now: datetime, limit: int) -> list[ExpiredAttempt]:
        return [
            ExpiredAttempt(a, ExpiryReason.LEASE, timedelta(hours=1))
            for a, lease in sorted(self.leases.items())
            if lease <= now and self.nodes[a].state is NodeState.RUNNING
        ][:limit]

    async def promote_due_retries(self, now: datetime, limit: int) -> int:
        return 0

    async def next_deadline(self) -> datetime | None:
        return min(self.leases.values(), default=None)


@dataclass
class MemoryProvisioning:
    work: dict[str, RunnerWork] = field(default_factory=dict)
    statuses: dict[str, RunnerStatus] = field(default_factory=dict)
    drains: dict[str, str] = field(default_factory=dict)
    drain_budget: int = 0

    async def work_by_runner(self) -> dict[str, RunnerWork]:
        return dict(self.work)

    async def save_runner_status(self, statuses: Sequence[RunnerStatus], now: datetime) -> None:
        self.statuses.update((s.runner, s) for s in statuses)

    async def runner_status(self, names: Sequence[str]) -> dict[str, RunnerStatus]:
        return {n: self.statuses[n] for n in names if n in self.statuses}

    async def claim_drain(self, instance_id: str, runner: str, reason: str, now: datetime) -> bool:
        if self.drain_budget <= 0:
            return False
        self.drain_budget -= 1
        self.drains[instance_id] = runner
        return True

    async def forget_drains(self, instance_ids: Sequence[str]) -> None:
        for i in instance_ids:
            self.drains.pop(i, None)


@dataclass
class MemoryAccess:
    tokens: dict[bytes, AccessToken] = field(default_factory=dict)

    async def insert_token(self, token: AccessToken, secret_hash: bytes) -> AccessToken:
        self.tokens[secret_hash] = token
        return token

    async def replace_token(
        self, token: AccessToken, secret_hash: bytes, *, replace: bool = True
    ) -> AccessToken | None:
        if secret_hash in self.tokens:
            return None
        if not replace and any(t.id == token.id for t in self.tokens.values()):
            return None
        self.tokens = {h: t for h, t in self.tokens.items() if t.id != token.id}
        self.tokens[secret_hash] = token
        return token

    async def list_tokens(self, *, show_revoked: bool) -> list[AccessToken]:
        return [t for t in self.tokens.values() if show_revoked or t.revoke_time is None]

    async def revoke_token(self, token_id: str) -> AccessToken | None:
        for secret_hash, token in self.tokens.items():
            if token.id == token_id:
                self.tokens[secret_hash] = replace(token, revoke_time=T0)
                return self.tokens[secret_hash]
        return None

    async def token_by_digest(self, secret_hash: bytes) -> AccessToken | None:
        return self.tokens.get(secret_hash)

    async def token_digest(self, token_id: str) -> bytes | None:
        return next((h for h, t in self.tokens.items() if t.id == token_id), None)


@dataclass
class MemoryAudit:
    events: list[AuditEvent] = field(default_factory=list)

    async def record(self, events: Sequence[AuditEvent]) -> None:
        self.events += [replace(e, id=len(self.events) + i + 1) for i, e in enumerate(events)]

    async def page(self, where: AuditFilter, before: int, limit: int) -> list[AuditEvent]:
        found = [e for e in reversed(self.events) if not before or e.id < before]
        return found[:limit]


@dataclass
class MemoryUnitOfWork:
    registry: MemoryRegistry
    tasks: MemoryTasks
    provisioning: MemoryProvisioning
    access: MemoryAccess
    audit: MemoryAudit
    sessions: Any = None  # no unit test here reads Sessions
    artifacts: Any = None  # nor artefacts


class MemoryStore:
    """Units of work over shared in-memory repositories; counts what it is asked.

    A fenced unit of work refuses a term that is over (``Term.lost``), as the database's fence
    refuses an epoch that is not current, and fails to commit (Unavailable) if the term ended
    while it ran, as the database ends a leader's transaction that outlasts the lease;
    ``fenced_writes`` counts those that committed, per epoch.
    """

    def __init__(self) -> None:
        self.registry = MemoryRegistry()
        self.tasks = MemoryTasks()
        self.provisioning = MemoryProvisioning()
        self.access = MemoryAccess()
        self.audit = MemoryAudit()
        self.transactions = 0
        self.fenced_writes: dict[int | None, int] = {}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryUnitOfWork]:
        self.transactions += 1
        yield self._work()

    @asynccontextmanager
    async def fenced(self, term: Term) -> AsyncIterator[MemoryUnitOfWork]:
        if term.lost.is_set():
            raise NotLeader(f"the term ({term.describe()}) is over")
        self.transactions += 1
        yield self._work()
        if term.lost.is_set():
            raise Unavailable("the database ended the transaction (fake)")
        self.fenced_writes[term.epoch] = self.fenced_writes.get(term.epoch, 0) + 1

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[MemoryUnitOfWork]:
        yield self._work()

    def _work(self) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(
            self.registry, self.tasks, self.provisioning, self.access, self.audit
        )

    @asynccontextmanager
    async def claiming(self) -> AsyncIterator[MemoryUnitOfWork]:
        self.transactions += 1
        yield self._work()


class OneReplica:
    """Leadership when there is only this replica: granted at once (a new epoch each time),
    lost only when a test ends the term (``Term.end``)."""

    def __init__(self) -> None:
        self.terms: list[Term] = []

    @asynccontextmanager
    async def lead(self, duty: Duty) -> AsyncIterator[Term]:
        term = Term(duty, asyncio.Event(), epoch=len(self.terms) + 1, holder="this", since=T0)
        self.terms.append(term)
        yield term

    def term(self, duty: Duty) -> Term:
        """A term of ``duty`` as ``lead`` would grant it."""
        term = Term(duty, asyncio.Event(), epoch=len(self.terms) + 1, holder="this", since=T0)
        self.terms.append(term)
        return term


# --- the provisioner ---------------------------------------------------------------------------


@dataclass
class FakeProvisioner:
    """Instances that exist as soon as they are created; the test moves their phases."""

    name: str = "fake"
    clock: Callable[[], datetime] = lambda: T0
    instances: dict[str, Observed] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    fail_creates: bool = False

    async def start(self, changed: Callable[[], None]) -> None:
        return None

    async def stop(self) -> None:
        return None

    def observed(self) -> list[Observed]:
        return list(self.instances.values())

    async def create(self, spec: InstanceSpec) -> Observed:
        if self.fail_creates:
            raise RuntimeError("the backend refused")
        name = f"{spec.runner.name}-{len(self.created)}"
        made = Observed(name, spec.runner.name, f"uid-{name}", Phase.PENDING, created=self.clock())
        self.instances[name] = made
        self.created.append(name)
        return made

    async def delete(self, instance: Observed) -> None:
        self.instances.pop(instance.name, None)
        self.deleted.append(instance.name)

    async def has_credential(self, runner: str) -> bool:
        return runner in self.credentials

    async def store_credential(self, runner: str, secret: str) -> None:
        self.credentials[runner] = secret

    def set_phase(self, name: str, phase: Phase, **changes: Any) -> None:
        self.instances[name] = replace(self.instances[name], phase=phase, **changes)
