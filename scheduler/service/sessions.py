"""Session use cases: create (from a template or inline), read, list, cancel, watch, and
move to another priority level."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from scheduler.domain.access import Identity
from scheduler.domain.artifacts import (
    FileInput,
    check_file_inputs,
    check_file_sources,
    parse_name,
    receivers,
)
from scheduler.domain.audit import AuditEvent
from scheduler.domain.clock import Clock
from scheduler.domain.dispatch_order import (
    DispatchPolicy,
    priority_of,
    priority_problem,
)
from scheduler.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    raise_if,
)
from scheduler.domain.limits import (
    BIGINT_MAX,
    LABEL_KEY_MAX_LENGTH,
    LABEL_VALUE_MAX_LENGTH,
    MAX_LABELS,
    REASON_MAX_LENGTH,
    REQUEST_ID_MAX_LENGTH,
    Limits,
)
from scheduler.domain.paging import Page, PageRequest
from scheduler.domain.ports import Store, UnitOfWork
from scheduler.domain.registry import DagNode, check_dag_nodes
from scheduler.domain.runner_protocol import ClaimedTask
from scheduler.domain.sessions import (
    NewSession,
    NodeState,
    Session,
    SessionCursor,
    SessionFilter,
    SessionState,
    StoredEvent,
    StoredSession,
    layout,
    new_session_name,
)
from scheduler.domain.telemetry import NO_TELEMETRY, Telemetry
from scheduler.domain.validation import check_dns_label, check_text
from scheduler.service.artifacts import Artifacts
from scheduler.service.offload import within_budget
from scheduler.service.runner_protocol.handoff import HandOff, Reservation
from scheduler.service.signals import Signals

_WATCH_BATCH: Final = 500


@dataclass(frozen=True, slots=True)
class Snapshot:
    cursor: str
    session: Session


@dataclass(frozen=True, slots=True)
class Change:
    cursor: str
    event: StoredEvent


WatchItem = Snapshot | Change


def _check_labels(labels: Mapping[str, str]) -> list[FieldViolation]:
    out = []
    if len(labels) > MAX_LABELS:
        out.append(FieldViolation("labels", f"at most {MAX_LABELS} labels"))
    for key, value in labels.items():
        if not key or len(key) > LABEL_KEY_MAX_LENGTH:
            out.append(
                FieldViolation(
                    f"labels[{key[:40]!r}]", f"keys are 1 to {LABEL_KEY_MAX_LENGTH} characters"
                )
            )
        elif "\x00" in key:
            out.append(FieldViolation(f"labels[{key[:40]!r}]", "keys may not contain NUL"))
        if "\x00" in value:
            out.append(FieldViolation(f"labels[{key[:40]!r}]", "values may not contain NUL"))
        if len(value) > LABEL_VALUE_MAX_LENGTH:
            out.append(
                FieldViolation(
                    f"labels[{key[:40]!r}]",
                    f"values are at most {LABEL_VALUE_MAX_LENGTH} characters",
                )
            )
    return out


class Sessions:
    def __init__(
        self,
        store: Store,
        signals: Signals,
        clock: Clock,
        limits: Limits,
        artifacts: Artifacts | None = None,
        *,
        telemetry: Telemetry = NO_TELEMETRY,
        hand_off: HandOff | None = None,
        policy: DispatchPolicy | None = None,
    ) -> None:
        """``hand_off``: the dispatch, which claims a new Session's roots in the transaction
        that creates it when this replica has credits for their Runner."""
        self._store = store
        self._telemetry = telemetry
        self._signals = signals
        self._clock = clock
        self._limits = limits
        self._artifacts = artifacts
        self._hand_off = hand_off
        self._policy = policy or DispatchPolicy()

    async def create(
        self,
        *,
        by: Identity,
        session_template: str = "",
        dag: Sequence[DagNode] | None = None,
        parameters: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str = "",
        files: Sequence[FileInput] = (),
        priority: int = 0,
    ) -> Session:
        """A new Session; ``files`` are given to its nodes as named inputs (uploads are taken,
        URIs read now, before the transaction)."""
        labels = dict(labels or {})
        violations = _check_labels(labels) + check_file_sources(files)
        problem = priority_problem(priority, unset_allowed=True)
        if problem:
            violations.append(FieldViolation("priority", problem))
        if len(request_id) > REQUEST_ID_MAX_LENGTH:
            violations.append(
                FieldViolation("request_id", f"at most {REQUEST_ID_MAX_LENGTH} characters")
            )
        if bool(session_template) == (dag is not None):
            violations.append(
                FieldViolation("source", "give exactly one of session_template and dag")
            )
        size = len(json.dumps(parameters or {}))
        if size > self._limits.max_parameters_bytes:
            violations.append(
                FieldViolation(
                    "parameters",
                    f"{size} bytes of JSON; at most {self._limits.max_parameters_bytes}",
                )
            )
        raise_if(violations)
        names = await self._file_names(files)
        now = self._clock.now()
        reservations: list[Reservation] = []
        claimed: list[list[ClaimedTask]] = []
        try:
            made = await self._create(
                by,
                now,
                session_template,
                dag,
                parameters,
                labels,
                request_id,
                files,
                names,
                priority,
                reservations,
                claimed,
            )
        except BaseException:
            if self._hand_off is not None:
                self._hand_off.abandoned(reservations)
            raise
        if self._hand_off is not None:
            self._hand_off.handed(reservations, claimed)
        if isinstance(made, Session):
            return made
        # Read back once committed (and its roots pushed): the commit waits for nothing else.
        async with self._store.snapshot() as work:
            found = await work.sessions.get(
                made, with_nodes=True, max_nodes=self._limits.max_created_nodes_shown
            )
        assert found is not None
        return found.session

    async def _create(
        self,
        by: Identity,
        now: datetime,
        session_template: str,
        dag: Sequence[DagNode] | None,
        parameters: Mapping[str, Any] | None,
        labels: dict[str, str],
        request_id: str,
        files: Sequence[FileInput],
        names: Sequence[str],
        priority: int,
        reservations: list[Reservation],
        claimed: list[list[ClaimedTask]],
    ) -> Session | str:
        """The Session an earlier request with the same id made, or the name of the new one."""
        async with self._store.transaction() as work:
            if request_id:
                existing = await work.sessions.by_request_id(request_id)
                if existing is not None:
                    found = await work.sessions.get(existing, with_nodes=True)
                    assert found is not None
                    return found.session
            nodes, defaults, default_priority, prefix = await self._nodes(
                work, session_template, dag
            )
            template_names = sorted({n.node_template for n in nodes})
            templates = await work.registry.node_templates_by_name(template_names)
            raise_if(
                await within_budget(
                    check_dag_nodes, nodes, prefix, self._limits, templates=templates.get
                )
            )
            keys = [n.key for n in nodes]
            upstream = {n.key: n.depends_on for n in nodes}
            raise_if(check_file_inputs(files, keys, upstream))
            given: dict[str, dict[str, str]] = {}
            for file, name in zip(files, names, strict=True):
                for key in receivers(file, keys, upstream):
                    given.setdefault(key, {})[file.input] = name
            durations = (
                await work.registry.durations(template_names)
                if self._policy.critical_path
                else None
            )
            new = NewSession(
                name=new_session_name(now),
                session_template=session_template,
                parameters={**defaults, **(parameters or {})},
                labels=labels,
                request_id=request_id,
                # The span this call runs in (CreateSession's) is the root of its trace.
                trace=self._telemetry.current(),
                nodes=layout(nodes, templates, given, durations),
                priority=priority_of(priority, default_priority),
                fairness_key=self._policy.fairness_key(labels),
            )
            session_id = await work.sessions.insert(new, now)
            if names:
                await self._take_files(work, names, session_id)
            detail = {"session_template": session_template} if session_template else {}
            await work.audit.record([AuditEvent(by, "create", "session", new.name, detail)])
            if self._hand_off is not None:
                ready = {n.runner for n in new.nodes if n.state is NodeState.QUEUED}
                reservations += self._hand_off.plan(ready, now)
                if reservations:
                    requests = [r.request for r in reservations]
                    claimed += await work.tasks.claim_along(requests, now)
        return new.name

    async def _file_names(self, files: Sequence[FileInput]) -> list[str]:
        """Each file input's artefact: the upload named, or a copy of the URI's file."""
        if not files:
            return []
        if self._artifacts is None:
            raise FailedPrecondition("this scheduler keeps no files: it has no artefact store")
        names = []
        for i, file in enumerate(files):
            if file.artifact:
                parse_name(file.artifact, f"files[{i}].artifact")
                names.append(file.artifact)
            else:
                names.append((await self._artifacts.import_uri(file.uri, f"files[{i}].uri")).name)
        return names

    @staticmethod
    async def _take_files(work: UnitOfWork, names: Sequence[str], session_id: int) -> None:
        wanted = sorted({parse_name(name, "files") for name in names})
        taken = set(await work.artifacts.attach(wanted, session_id))
        missing = [f"artifacts/{i}" for i in wanted if i not in taken]
        if missing:
            raise FailedPrecondition(
                f"files: {', '.join(missing[:10])} cannot be given to a new Session: unknown,"
                " not completely uploaded, expired, or already another Session's"
            )

    async def _nodes(
        self, work: UnitOfWork, session_template: str, dag: Sequence[DagNode] | None
    ) -> tuple[Sequence[DagNode], dict[str, Any], int, str]:
        """The nodes, default parameters and default priority of the Session's source."""
        if dag is not None:
            return dag, {}, 0, "dag"
        raise_if(check_dns_label(session_template, "session_template"))
        found = await work.registry.session_templates_by_name([session_template])
        if session_template not in found:
            raise NotFound("session template", session_template)
        template = found[session_template]
        return (
            template.nodes,
            dict(template.default_parameters),
            template.default_priority,
            "session_template",
        )

    async def get(self, name: str) -> Session:
        async with self._store.snapshot() as work:
            return (await self._find(work, name, with_nodes=True)).session

    async def _find(self, work: UnitOfWork, name: str, *, with_nodes: bool) -> StoredSession:
        raise_if(check_dns_label(name, "name"))
        found = await work.sessions.get(
            name, with_nodes=with_nodes, max_nodes=self._limits.max_nodes_shown
        )
        if found is None:
            raise NotFound("session", name)
        return found

    async def list(self, where: SessionFilter, page: PageRequest) -> Page[Session]:
        after: SessionCursor | None = None
        if page.after:
            try:
                stamp, _, ident = page.after.rpartition("|")
                after = SessionCursor(datetime.fromisoformat(stamp), int(ident))
                if not 0 <= after.id <= BIGINT_MAX or after.create_time.tzinfo is None:
                    raise ValueError(page.after)
            except ValueError:
                raise InvalidArgument(
                    [FieldViolation("page_token", "is not a token from a previous page")]
                ) from None
        async with self._store.snapshot() as work:
            rows = await work.sessions.page(where, after, page.size + 1)
        keys = {id(r.session): f"{r.session.create_time.isoformat()}|{r.id}" for r in rows}
        return Page.of([r.session for r in rows], page.size, lambda s: keys[id(s)])

    async def cancel(self, name: str, reason: str, *, by: Identity) -> Session:
        raise_if(check_text(reason, "reason", max_len=REASON_MAX_LENGTH))
        now = self._clock.now()
        async with self._store.transaction() as work:
            found = await self._find(work, name, with_nodes=False)
            state = found.session.state
            if state in (SessionState.SUCCEEDED, SessionState.FAILED):
                raise FailedPrecondition(
                    f"session {name!r} already ended ({state.value}); nothing to cancel"
                )
            if state is not SessionState.CANCELLED:
                await work.sessions.cancel(found.id, None, now, reason or "cancelled by request")
                await work.audit.record(
                    [AuditEvent(by, "cancel", "session", name, {"reason": reason[:200]})]
                )
            result = await self._find(work, name, with_nodes=True)
        return result.session

    async def cancel_node(self, name: str, key: str, reason: str, *, by: Identity) -> Session:
        raise_if(
            [
                *check_dns_label(key, "key", what="node key"),
                *check_text(reason, "reason", max_len=REASON_MAX_LENGTH),
            ]
        )
        now = self._clock.now()
        async with self._store.transaction() as work:
            found = await self._find(work, name, with_nodes=False)
            session = found.session
            if session.state.final:
                raise FailedPrecondition(f"session {name!r} already ended ({session.state.value})")
            node = await work.sessions.node(found.id, key)
            if node is None:
                raise NotFound("node", f"{name}/{key}")
            if node.state.final:
                raise FailedPrecondition(
                    f"node {key!r} of session {name!r} already ended ({node.state.value})"
                )
            await work.sessions.cancel(found.id, [node.idx], now, reason or "cancelled by request")
            await work.audit.record(
                [AuditEvent(by, "cancel", "node", f"{name}/{key}", {"reason": reason[:200]})]
            )
            result = await self._find(work, name, with_nodes=True)
        return result.session

    async def set_priority(self, name: str, priority: int, *, by: Identity) -> Session:
        """Move a Session to another level; its queued tasks are ordered by it at once."""
        problem = priority_problem(priority, unset_allowed=False)
        if problem:
            raise InvalidArgument([FieldViolation("session.priority", problem)])
        async with self._store.transaction() as work:
            found = await self._find(work, name, with_nodes=False)
            if found.session.state.final:
                raise FailedPrecondition(
                    f"session {name!r} already ended ({found.session.state.value})"
                )
            await work.sessions.set_priority(found.id, priority)
            detail = {"priority": priority, "previous_priority": found.session.priority}
            await work.audit.record([AuditEvent(by, "update", "session", name, detail)])
            result = await self._find(work, name, with_nodes=True)
        return result.session

    async def watch(self, name: str, cursor: str) -> AsyncIterator[WatchItem]:
        """The Session's state, then each change in order, until it has ended."""
        seq = 0
        if cursor:
            try:
                seq = int(cursor)
                if seq < 0:
                    raise ValueError(cursor)
            except ValueError:
                raise InvalidArgument(
                    [FieldViolation("cursor", "is not a cursor from this Watch; leave it empty")]
                ) from None
        async with self._store.snapshot() as work:
            found = await self._find(work, name, with_nodes=not cursor)
            session_id, session = found.id, found.session
            if not cursor:
                seq = session.event_seq
            elif seq > session.event_seq:
                raise InvalidArgument(
                    [FieldViolation("cursor", f"is past the last change ({session.event_seq})")]
                )
        changed = self._signals.watch_session(session_id)
        try:
            if not cursor:
                yield Snapshot(str(seq), session)
            ended = session.state.final and seq >= session.event_seq
            while not ended and not self._signals.closing:
                changed.clear()
                async with self._store.snapshot() as work:
                    events = await work.sessions.events_after(session_id, seq, _WATCH_BATCH)
                    if not events:
                        # A cursor at (or past) the end of an ended Session: nothing follows.
                        now_state = await work.sessions.get(name, with_nodes=False)
                        ended = now_state is not None and now_state.session.state.final
                for event in events:
                    seq = event.seq
                    yield Change(str(seq), event)
                    if event.node_key is None and SessionState(event.state).final:
                        ended = True
                if not events and not ended:
                    await changed.wait()
        finally:
            self._signals.unwatch_session(session_id, changed)
