"""Text for the operator CLI: pure functions from heat.scheduler.v1 messages to lines.

Nothing here does I/O or reads a clock; ``scheduler.cli.sessions`` passes in the time and the
terminal width, so every function can be tested on hand-built messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from heat.scheduler.v1 import access_pb2, artifact_pb2, runner_pb2
from heat.scheduler.v1 import session_pb2 as spb
from heat.scheduler.v1 import session_service_pb2 as sspb

NodeState: TypeAlias = spb.NodeState.ValueType
SessionState: TypeAlias = spb.SessionState.ValueType

# Display order: what is done first, then what is in flight, then what waits.
NODE_ORDER: Final[tuple[NodeState, ...]] = (
    spb.NODE_STATE_SUCCEEDED,
    spb.NODE_STATE_FAILED,
    spb.NODE_STATE_CANCELLED,
    spb.NODE_STATE_UPSTREAM_FAILED,
    spb.NODE_STATE_RUNNING,
    spb.NODE_STATE_RETRY_WAIT,
    spb.NODE_STATE_QUEUED,
    spb.NODE_STATE_WAITING,
)
FINAL_NODE: Final = frozenset(NODE_ORDER[:4])
FINAL_SESSION: Final = frozenset(
    {spb.SESSION_STATE_SUCCEEDED, spb.SESSION_STATE_FAILED, spb.SESSION_STATE_CANCELLED}
)
BAR_WIDTH: Final = 10


def node_state(state: NodeState) -> str:
    """``NODE_STATE_RETRY_WAIT`` -> ``retry_wait``."""
    return spb.NodeState.Name(state).removeprefix("NODE_STATE_").lower()


def session_state(state: SessionState) -> str:
    return spb.SessionState.Name(state).removeprefix("SESSION_STATE_").lower()


def parse_session_state(text: str) -> SessionState:
    """``running``, ``RUNNING`` or ``SESSION_STATE_RUNNING``; ValueError otherwise."""
    name = text.strip().upper()
    name = name if name.startswith("SESSION_STATE_") else "SESSION_STATE_" + name
    if name == "SESSION_STATE_UNSPECIFIED":
        raise ValueError(text)
    return spb.SessionState.Value(name)


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in an ellipsis when it was cut."""
    if width <= 0 or len(text) <= width:
        return text
    return text[: width - 1] + "…"


def when(stamp: timestamp_pb2.Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def duration(seconds: float) -> str:
    """``350ms``, ``2.3s``, ``4m05s``, ``1h02m``."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _seconds(start: timestamp_pb2.Timestamp, end: datetime) -> float:
    return (end - start.ToDatetime(tzinfo=UTC)).total_seconds()


def node_duration(node: spb.Node, now: datetime) -> str:
    """How long the node's current or last attempt ran; empty before its first."""
    if not node.HasField("start_time"):
        return ""
    if node.HasField("end_time") and node.state in FINAL_NODE:
        return duration(_seconds(node.start_time, node.end_time.ToDatetime(tzinfo=UTC)))
    if node.state == spb.NODE_STATE_RUNNING:
        return duration(_seconds(node.start_time, now))
    return ""


def compact_json(value: struct_pb2.Value) -> str:
    """One line of JSON; whole numbers without a trailing ``.0`` (Struct keeps doubles)."""
    return json.dumps(
        _ints(json_format.MessageToDict(value)), separators=(",", ":"), sort_keys=True
    )


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], width: int = 0) -> list[str]:
    """Left-aligned columns two spaces apart; each line cut to ``width`` (0: no limit)."""
    all_rows = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append(fit("  ".join(cells).rstrip(), width))
    return lines


# -- node counts ------------------------------------------------------------------------------


def counts_of(session: spb.Session) -> dict[NodeState, int]:
    """``Session.node_counts`` (keyed by NodeState name) keyed by the enum."""
    return {spb.NodeState.Value(k): v for k, v in session.node_counts.items() if v}


def tally(states: Iterable[NodeState]) -> dict[NodeState, int]:
    counts: dict[NodeState, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return counts


def counts_text(counts: Mapping[NodeState, int]) -> str:
    """``7/10 succeeded · 2 running · 1 queued``: successes of all, then the other states."""
    total = sum(counts.values())
    parts = [f"{counts.get(spb.NODE_STATE_SUCCEEDED, 0)}/{total} succeeded"]
    parts += [
        f"{counts[s]} {node_state(s)}"
        for s in NODE_ORDER[1:]
        if counts.get(s)  # a zero is not worth the space
    ]
    return " · ".join(parts)


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = width if total <= 0 else min(width, done * width // total)
    return "▕" + "█" * filled + "░" * (width - filled) + "▏"


def progress_line(
    name: str, state: SessionState, counts: Mapping[NodeState, int], width: int = 0
) -> str:
    """The one status line of a live watch; the bar fills as nodes reach a final state."""
    done = sum(n for s, n in counts.items() if s in FINAL_NODE)
    total = sum(counts.values())
    text = f"{name}  {session_state(state)}  {bar(done, total)} {counts_text(counts)}"
    return fit(text, width)


# -- show, sessions, credentials --------------------------------------------------------------


def session_lines(session: spb.Session, now: datetime, width: int = 0) -> list[str]:
    """``show``: the Session's header, its node table, then each node's outputs."""
    state = session_state(session.state)
    if session.state_reason:
        state += f" ({session.state_reason})"
    times = [f"created {when(session.create_time)}"]
    if session.HasField("start_time"):
        times.append(f"started {when(session.start_time)}")
    if session.HasField("end_time"):
        times.append(f"ended {when(session.end_time)}")
    header = [
        ("session", session.name),
        ("state", state),
        ("template", session.session_template or "(inline DAG)"),
        ("time", ", ".join(times)),
        ("nodes", counts_text(counts_of(session))),
        ("priority", priority_text(session)),
    ]
    if session.labels:
        header.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(session.labels.items()))))
    if session.parameters.fields:
        header.append(
            ("parameters", compact_json(struct_pb2.Value(struct_value=session.parameters)))
        )
    lines = [fit(f"{k:<11}{v}", width) for k, v in header]
    lines += ["", *node_table(session.nodes, now, width)]
    outputs = output_lines(session.nodes, width)
    if outputs:
        lines += ["", *outputs]
    return lines


def priority_text(session: spb.Session) -> str:
    """The Session's level, and the fairness key it is dispatched under when it has one."""
    text = str(session.priority)
    return f"{text} (fairness key {session.fairness_key})" if session.fairness_key else text


def _node_error(node: spb.Node) -> str:
    if not node.HasField("error"):
        return ""
    message = " ".join(node.error.message.split())
    if node.error.attempt and node.error.attempt != node.attempt:
        message += f" (attempt {node.error.attempt})"
    return message


def node_table(nodes: Sequence[spb.Node], now: datetime, width: int = 0) -> list[str]:
    rows = [
        [
            n.key,
            n.node_template,
            node_state(n.state),
            str(n.attempt) if n.attempt else "-",
            node_duration(n, now) or "-",
            _node_error(n),
        ]
        for n in nodes
    ]
    return table(["KEY", "TEMPLATE", "STATE", "ATTEMPT", "DURATION", "ERROR"], rows, width)


def output_lines(nodes: Sequence[spb.Node], width: int = 0) -> list[str]:
    """``OUTPUTS`` and one line of compact JSON per node that has outputs."""
    rows = [[n.key, compact_json(n.outputs)] for n in nodes if n.HasField("outputs")]
    return table(["KEY", "OUTPUTS"], rows, width) if rows else []


def sessions_table(sessions: Sequence[spb.Session], width: int = 0) -> list[str]:
    rows = [
        [
            s.name,
            session_state(s.state),
            s.session_template or "(inline DAG)",
            when(s.create_time),
            str(s.priority),
            counts_text(counts_of(s)),
        ]
        for s in sessions
    ]
    return table(["NAME", "STATE", "TEMPLATE", "CREATED", "PRIORITY", "NODES"], rows, width)


def size(n: int) -> str:
    """Bytes in the largest unit that keeps a whole number in front: 812 B, 1.4 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def artifacts_table(artifacts: Sequence[artifact_pb2.Artifact], width: int = 0) -> list[str]:
    """A Session's files: where each came from (a node's attempt, or given), size, digest."""
    rows = [
        [
            a.name,
            f"{a.node_key}#{a.attempt}" if a.node_key else "(given)",
            a.filename or "-",
            size(a.size_bytes),
            a.sha256[:12],
            when(a.create_time),
        ]
        for a in artifacts
    ]
    return table(["NAME", "FROM", "FILENAME", "SIZE", "SHA256", "CREATED"], rows, width)


def credentials_table(credentials: Sequence[runner_pb2.RunnerCredential]) -> list[str]:
    rows = [
        [
            c.id,
            when(c.create_time),
            when(c.revoke_time) if c.HasField("revoke_time") else "-",
            c.description,
        ]
        for c in credentials
    ]
    return table(["ID", "CREATED", "REVOKED", "DESCRIPTION"], rows)


def runners_table(runners: Sequence[runner_pb2.Runner], width: int = 0) -> list[str]:
    """Each Runner with its provisioning status: instances wanted / seen / ready, work, error."""
    rows = [
        [
            r.name,
            "yes" if r.enabled else "no",
            f"{r.status.desired_pods}/{r.status.observed_pods}/{r.status.ready_pods}",
            f"{r.status.queued_tasks}/{r.status.running_tasks}",
            f"{r.min_pods}-{r.max_pods} x{r.tasks_per_pod}",
            r.status.last_provisioning_error or "-",
        ]
        for r in runners
    ]
    headers = ["RUNNER", "ENABLED", "PODS WANT/SEE/READY", "TASKS Q/RUN", "SCALE", "LAST ERROR"]
    return table(headers, rows, width)


def error_lines(code: str, details: str, violations: Iterable[tuple[str, str]]) -> list[str]:
    """``error: CODE: details``, then one indented line per BadRequest field violation."""
    return [f"error: {code}: {details}", *(f"  {f}: {d}" for f, d in violations)]


# -- watch ------------------------------------------------------------------------------------


@dataclass
class WatchView:
    """What a WatchSession stream has said so far, and the lines each message adds.

    ``apply`` returns the notable changes (a node finished or failed, a retry, the Session's
    end); with ``verbose`` (log output, no status line) every change gets its line.
    """

    name: str
    state: SessionState = spb.SESSION_STATE_UNSPECIFIED
    reason: str = ""
    cursor: str = ""
    nodes: dict[str, NodeState] = field(default_factory=dict)
    started: dict[str, datetime] = field(default_factory=dict)
    ended: bool = False  # the stream has said the Session ended

    @property
    def succeeded(self) -> bool:
        return self.state == spb.SESSION_STATE_SUCCEEDED

    def counts(self) -> dict[NodeState, int]:
        return tally(self.nodes.values())

    def status_line(self, width: int = 0) -> str:
        return progress_line(self.name, self.state, self.counts(), width)

    def seed(self, session: spb.Session) -> None:
        """Take the Session's state and nodes (resuming after a cursor); ``ended`` waits
        for the stream to replay the Session's end."""
        self.state = session.state
        self.reason = session.state_reason
        self.nodes = {n.key: n.state for n in session.nodes}
        self.started = {
            n.key: n.start_time.ToDatetime(tzinfo=UTC)
            for n in session.nodes
            if n.HasField("start_time")
        }

    def apply(self, response: sspb.WatchSessionResponse, *, verbose: bool = False) -> list[str]:
        if response.cursor:
            self.cursor = response.cursor
        kind = response.WhichOneof("event")
        if kind == "snapshot":
            return self._snapshot(response.snapshot)
        if kind == "node_change":
            return self._node(response.node_change.node, verbose)
        if kind == "session_change":
            change = response.session_change
            self.state = change.state
            self.reason = change.state_reason
            self.ended = change.state in FINAL_SESSION
            return [self.end_line()] if self.ended else []
        return []

    def _snapshot(self, session: spb.Session) -> list[str]:
        self.seed(session)
        self.ended = session.state in FINAL_SESSION
        lines = [f"{n.key} failed{_attempt(n)}: {_node_error(n)}" for n in _failed(session)]
        if self.ended:
            return [*lines, self.end_line()]
        return [self.summary_line(), *lines]

    def _node(self, node: spb.Node, verbose: bool) -> list[str]:
        state = node.state
        self.nodes[node.key] = state
        if state == spb.NODE_STATE_RUNNING:
            if node.HasField("start_time"):
                self.started[node.key] = node.start_time.ToDatetime(tzinfo=UTC)
            if self.state == spb.SESSION_STATE_PENDING:
                # The stream logs only a Session's end; its start shows as a first running node.
                self.state = spb.SESSION_STATE_RUNNING
        message = " ".join(node.error.message.split()) if node.HasField("error") else ""
        if state == spb.NODE_STATE_SUCCEEDED:
            took = ""
            if node.key in self.started and node.HasField("end_time"):
                took = ", " + duration(
                    (node.end_time.ToDatetime(tzinfo=UTC) - self.started[node.key]).total_seconds()
                )
            return [f"{node.key} succeeded (attempt {node.attempt}{took})"]
        if state == spb.NODE_STATE_FAILED:
            return [f"{node.key} failed{_attempt(node)}" + (f": {message}" if message else "")]
        if state == spb.NODE_STATE_RETRY_WAIT:
            why = f": {message}" if message else ""
            return [f"{node.key} attempt {node.attempt} failed, will retry{why}"]
        if state == spb.NODE_STATE_CANCELLED:
            return [f"{node.key} cancelled" + (f": {message}" if message else "")]
        if state == spb.NODE_STATE_UPSTREAM_FAILED:
            return [f"{node.key} not run: an upstream node failed or was cancelled"]
        if state == spb.NODE_STATE_RUNNING and (verbose or node.attempt > 1):
            retry = ", a retry" if node.attempt > 1 else ""
            return [f"{node.key} running (attempt {node.attempt}{retry})"]
        if verbose:
            return [f"{node.key} {node_state(state)}"]
        return []

    def summary_line(self, note: str = "") -> str:
        note = f" ({note})" if note else ""
        return (
            f"session {self.name} {session_state(self.state)}{note}: {counts_text(self.counts())}"
        )

    def end_line(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        return f"session {self.name} {session_state(self.state)}{reason}: " + counts_text(
            self.counts()
        )


def _attempt(node: spb.Node) -> str:
    return f" (attempt {node.attempt})" if node.attempt else ""


def _failed(session: spb.Session) -> list[spb.Node]:
    return [n for n in session.nodes if n.state == spb.NODE_STATE_FAILED]


def event_time(response: sspb.WatchSessionResponse) -> datetime | None:
    """When the change of a stream message happened, for log output; None for a snapshot."""
    kind = response.WhichOneof("event")
    if kind == "session_change":
        return response.session_change.time.ToDatetime(tzinfo=UTC)
    if kind == "node_change":
        node = response.node_change.node
        for stamp in (node.end_time, node.start_time, node.ready_time):
            if stamp.seconds or stamp.nanos:
                return stamp.ToDatetime(tzinfo=UTC)
    return None


def log_line(line: str, at: datetime | None) -> str:
    """A watch line as plain log output: UTC time first."""
    return f"{at:%Y-%m-%dT%H:%M:%SZ} {line}" if at is not None else line


def role(value: access_pb2.Role.ValueType) -> str:
    return access_pb2.Role.Name(value).removeprefix("ROLE_").lower()


def tokens_table(tokens: Sequence[access_pb2.AccessToken]) -> list[str]:
    rows = [
        [
            t.id,
            role(t.role),
            when(t.create_time),
            when(t.expire_time) if t.HasField("expire_time") else "never",
            when(t.revoke_time) if t.HasField("revoke_time") else "-",
            t.created_by,
            t.description,
        ]
        for t in tokens
    ]
    return table(["ID", "ROLE", "CREATED", "EXPIRES", "REVOKED", "BY", "DESCRIPTION"], rows)


def audit_table(events: Sequence[access_pb2.AuditEvent]) -> list[str]:
    rows = [
        [
            when(e.time),
            f"{e.caller.subject} ({role(e.caller.role)})",
            e.action,
            e.resource,
            e.name,
            ", ".join(f"{k}={v}" for k, v in sorted(json_format.MessageToDict(e.detail).items())),
        ]
        for e in events
    ]
    return table(["TIME", "WHO", "ACTION", "RESOURCE", "NAME", "DETAIL"], rows)
