"""The operator CLI's text, from hand-built heat.scheduler.v1 messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from heat.scheduler.v1 import runner_pb2
from heat.scheduler.v1 import session_pb2 as spb
from heat.scheduler.v1 import session_service_pb2 as sspb

from scheduler.cli import render

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NAME = "s-20260301-120000-0a1b2c3d"


def stamp(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(T0 + timedelta(seconds=seconds))
    return out


def value(data: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    json_format.ParseDict(data, out)
    return out


def node(key: str, state: int, **fields: object) -> spb.Node:
    return spb.Node(key=key, node_template="csv-column-sum", state=state, **fields)  # type: ignore[arg-type]


def session(*nodes: spb.Node, state: int = spb.SESSION_STATE_RUNNING) -> spb.Session:
    counts = render.tally(n.state for n in nodes)
    return spb.Session(
        name=NAME,
        session_template="csv-totals",
        state=state,  # type: ignore[arg-type]
        nodes=nodes,
        node_counts={spb.NodeState.Name(s): n for s, n in counts.items()},
        create_time=stamp(0),
    )


def change(cursor: int, n: spb.Node) -> sspb.WatchSessionResponse:
    return sspb.WatchSessionResponse(cursor=str(cursor), node_change=sspb.NodeChange(node=n))


def ended(cursor: int, state: int, reason: str = "") -> sspb.WatchSessionResponse:
    return sspb.WatchSessionResponse(
        cursor=str(cursor),
        session_change=sspb.SessionChange(state=state, state_reason=reason, time=stamp(9)),  # type: ignore[arg-type]
    )


# -- small pieces -----------------------------------------------------------------------------


def test_state_names_and_parsing() -> None:
    assert render.node_state(spb.NODE_STATE_RETRY_WAIT) == "retry_wait"
    assert render.session_state(spb.SESSION_STATE_CANCELLED) == "cancelled"
    for text in ("running", "RUNNING", "SESSION_STATE_RUNNING", " Running "):
        assert render.parse_session_state(text) == spb.SESSION_STATE_RUNNING
    for bad in ("unspecified", "done", ""):
        with pytest.raises(ValueError):
            render.parse_session_state(bad)


def test_fit_cuts_with_an_ellipsis_only_when_needed() -> None:
    assert render.fit("abcdef", 6) == "abcdef"
    assert render.fit("abcdefg", 6) == "abcde…"
    assert render.fit("abcdefg", 0) == "abcdefg"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.35, "350ms"), (2.34, "2.3s"), (245, "4m05s"), (3720, "1h02m"), (-1, "0ms")],
)
def test_durations(seconds: float, text: str) -> None:
    assert render.duration(seconds) == text


def test_compact_json_drops_the_doubles_of_whole_numbers() -> None:
    assert (
        render.compact_json(value({"sum": 200.5, "rows": 2, "parts": [1, 2.5], "ok": True}))
        == '{"ok":true,"parts":[1,2.5],"rows":2,"sum":200.5}'
    )


def test_counts_text_puts_successes_of_all_first_and_skips_zeros() -> None:
    counts = {
        spb.NODE_STATE_SUCCEEDED: 7,
        spb.NODE_STATE_RUNNING: 2,
        spb.NODE_STATE_QUEUED: 1,
        spb.NODE_STATE_FAILED: 0,
    }
    assert render.counts_text(counts) == "7/10 succeeded · 2 running · 1 queued"
    assert render.counts_text({}) == "0/0 succeeded"


def test_counts_of_reads_the_node_counts_map() -> None:
    s = spb.Session(node_counts={"NODE_STATE_QUEUED": 2, "NODE_STATE_WAITING": 1})
    assert render.counts_of(s) == {spb.NODE_STATE_QUEUED: 2, spb.NODE_STATE_WAITING: 1}


# -- the live status line ---------------------------------------------------------------------


def test_progress_line_fills_the_bar_with_finished_nodes() -> None:
    counts = {spb.NODE_STATE_SUCCEEDED: 7, spb.NODE_STATE_RUNNING: 2, spb.NODE_STATE_QUEUED: 1}
    line = render.progress_line(NAME, spb.SESSION_STATE_RUNNING, counts)
    assert line == f"{NAME}  running  ▕███████░░░▏ 7/10 succeeded · 2 running · 1 queued"
    failed = {spb.NODE_STATE_SUCCEEDED: 1, spb.NODE_STATE_FAILED: 1}
    assert "▕██████████▏" in render.progress_line(NAME, spb.SESSION_STATE_FAILED, failed)
    assert render.bar(0, 0) == "▕██████████▏"


def test_progress_line_fits_the_terminal() -> None:
    counts = {spb.NODE_STATE_WAITING: 3}
    line = render.progress_line(NAME, spb.SESSION_STATE_PENDING, counts, width=40)
    assert len(line) == 40 and line.endswith("…") and line.startswith(NAME)


# -- watch ------------------------------------------------------------------------------------


def test_watch_from_a_snapshot_through_a_retry_to_success() -> None:
    view = render.WatchView(NAME)
    first = sspb.WatchSessionResponse(
        cursor="0",
        snapshot=session(
            node("q1", spb.NODE_STATE_QUEUED),
            node("total", spb.NODE_STATE_WAITING),
            state=spb.SESSION_STATE_PENDING,
        ),
    )
    assert view.apply(first) == [f"session {NAME} pending: 0/2 succeeded · 1 queued · 1 waiting"]
    assert view.status_line().endswith("▕░░░░░░░░░░▏ 0/2 succeeded · 1 queued · 1 waiting")

    # Claims are not notable on a terminal, but they start the Session.
    assert (
        view.apply(change(1, node("q1", spb.NODE_STATE_RUNNING, attempt=1, start_time=stamp(1))))
        == []
    )
    assert view.state == spb.SESSION_STATE_RUNNING
    error = spb.NodeError(attempt=1, retryable=True, message="connection\n reset")
    retry = node("q1", spb.NODE_STATE_RETRY_WAIT, attempt=1, error=error)
    assert view.apply(change(2, retry)) == ["q1 attempt 1 failed, will retry: connection reset"]
    second = node("q1", spb.NODE_STATE_RUNNING, attempt=2, start_time=stamp(3))
    assert view.apply(change(3, second)) == ["q1 running (attempt 2, a retry)"]
    done = node("q1", spb.NODE_STATE_SUCCEEDED, attempt=2, end_time=stamp(5.5))
    assert view.apply(change(4, done)) == ["q1 succeeded (attempt 2, 2.5s)"]
    assert view.apply(change(5, node("total", spb.NODE_STATE_QUEUED))) == []
    assert "1/2 succeeded · 1 queued" in view.status_line()
    view.apply(change(6, node("total", spb.NODE_STATE_RUNNING, attempt=1, start_time=stamp(6))))
    view.apply(change(7, node("total", spb.NODE_STATE_SUCCEEDED, attempt=1, end_time=stamp(6.2))))
    assert not view.ended
    assert view.apply(ended(8, spb.SESSION_STATE_SUCCEEDED)) == [
        f"session {NAME} succeeded: 2/2 succeeded"
    ]
    assert view.ended and view.succeeded and view.cursor == "8"


def test_verbose_watch_logs_every_change() -> None:
    view = render.WatchView(NAME)
    view.seed(session(node("q1", spb.NODE_STATE_WAITING)))
    assert view.apply(change(1, node("q1", spb.NODE_STATE_QUEUED)), verbose=True) == ["q1 queued"]
    running = node("q1", spb.NODE_STATE_RUNNING, attempt=1)
    assert view.apply(change(2, running), verbose=True) == ["q1 running (attempt 1)"]


def test_watch_failure_cancellation_and_upstream_failed_lines() -> None:
    view = render.WatchView(NAME)
    view.seed(session(node("a", spb.NODE_STATE_RUNNING), node("b", spb.NODE_STATE_WAITING)))
    error = spb.NodeError(attempt=3, message="column 'x' is not in the CSV header")
    failed = node("a", spb.NODE_STATE_FAILED, attempt=3, error=error)
    assert view.apply(change(10, failed)) == [
        "a failed (attempt 3): column 'x' is not in the CSV header"
    ]
    assert view.apply(change(11, node("b", spb.NODE_STATE_UPSTREAM_FAILED))) == [
        "b not run: an upstream node failed or was cancelled"
    ]
    assert view.apply(change(12, node("c", spb.NODE_STATE_CANCELLED))) == ["c cancelled"]
    assert view.apply(ended(13, spb.SESSION_STATE_FAILED, "node a failed")) == [
        f"session {NAME} failed (node a failed): 0/3 succeeded · 1 failed · 1 cancelled"
        " · 1 upstream_failed"
    ]
    assert view.ended and not view.succeeded


def test_snapshot_of_an_ended_session_says_how_it_ended() -> None:
    view = render.WatchView(NAME)
    s = session(node("q1", spb.NODE_STATE_CANCELLED), state=spb.SESSION_STATE_CANCELLED)
    s.state_reason = "cancelled by request"
    lines = view.apply(sspb.WatchSessionResponse(cursor="4", snapshot=s))
    assert lines == [
        f"session {NAME} cancelled (cancelled by request): 0/1 succeeded · 1 cancelled"
    ]
    assert view.ended and not view.succeeded


def test_a_resumed_view_of_an_ended_session_waits_for_the_replayed_end() -> None:
    view = render.WatchView(NAME)
    view.seed(session(node("q1", spb.NODE_STATE_SUCCEEDED), state=spb.SESSION_STATE_SUCCEEDED))
    assert not view.ended
    view.apply(ended(2, spb.SESSION_STATE_SUCCEEDED))
    assert view.ended and view.succeeded


def test_log_lines_carry_the_time_of_the_change() -> None:
    response = change(1, node("q1", spb.NODE_STATE_SUCCEEDED, end_time=stamp(5)))
    at = render.event_time(response)
    assert at == T0 + timedelta(seconds=5)
    assert render.log_line("q1 succeeded", at) == "2026-03-01T12:00:05Z q1 succeeded"
    assert render.event_time(ended(2, spb.SESSION_STATE_SUCCEEDED)) == T0 + timedelta(seconds=9)
    assert render.event_time(change(3, node("q1", spb.NODE_STATE_RETRY_WAIT))) is None


# -- show, sessions, credentials, errors ------------------------------------------------------


def test_show_lists_nodes_with_state_attempt_duration_error_and_outputs() -> None:
    nodes = (
        node(
            "q1",
            spb.NODE_STATE_SUCCEEDED,
            attempt=2,
            start_time=stamp(1),
            end_time=stamp(1.25),
            outputs=value({"column": "amount", "sum": 200.5, "rows": 2}),
            error=spb.NodeError(attempt=1, message="timeout"),
        ),
        node("q2", spb.NODE_STATE_RUNNING, attempt=1, start_time=stamp(2)),
        node(
            "total",
            spb.NODE_STATE_FAILED,
            attempt=1,
            start_time=stamp(3),
            end_time=stamp(4),
            error=spb.NodeError(attempt=1, message="no 'sum'"),
        ),
        node("late", spb.NODE_STATE_WAITING),
    )
    lines = render.session_lines(session(*nodes), now=T0 + timedelta(seconds=12))
    assert lines[:5] == [
        f"session    {NAME}",
        "state      running",
        "template   csv-totals",
        "time       created 2026-03-01 12:00:00Z",
        "nodes      1/4 succeeded · 1 failed · 1 running · 1 waiting",
    ]
    blank = lines.index("")
    table = lines[blank + 1 : lines.index("", blank + 1)]
    assert table[0].split() == ["KEY", "TEMPLATE", "STATE", "ATTEMPT", "DURATION", "ERROR"]
    assert table[1].split()[:5] == ["q1", "csv-column-sum", "succeeded", "2", "250ms"]
    assert table[1].endswith("  timeout (attempt 1)")  # an earlier attempt's failure
    assert table[2].split() == ["q2", "csv-column-sum", "running", "1", "10.0s"]
    assert table[3].split() == ["total", "csv-column-sum", "failed", "1", "1.0s", "no", "'sum'"]
    assert table[4].split() == ["late", "csv-column-sum", "waiting", "-", "-"]
    # Columns line up: every STATE cell starts where the header's does.
    column = table[0].index("STATE")
    states = [row[column:].split()[0] for row in table[1:]]
    assert states == ["succeeded", "running", "failed", "waiting"]
    assert lines[-2:] == ["KEY  OUTPUTS", 'q1   {"column":"amount","rows":2,"sum":200.5}']


def test_show_truncates_long_outputs_to_the_width() -> None:
    big = node("q1", spb.NODE_STATE_SUCCEEDED, outputs=value({"rows": list(range(200))}))
    lines = render.session_lines(session(big), now=T0, width=60)
    assert all(len(line) <= 60 for line in lines)
    assert lines[-1].startswith('q1   {"rows":[0,1,2') and lines[-1].endswith("…")
    whole = render.output_lines([big])
    assert whole[-1].endswith("199]}")


def test_sessions_table() -> None:
    s = session(node("a", spb.NODE_STATE_SUCCEEDED), node("b", spb.NODE_STATE_QUEUED))
    inline = spb.Session(name="s-2", state=spb.SESSION_STATE_PENDING, create_time=stamp(60))
    lines = render.sessions_table([s, inline])
    assert lines[0].split() == ["NAME", "STATE", "TEMPLATE", "CREATED", "PRIORITY", "NODES"]
    assert lines[1].split()[:5] == [NAME, "running", "csv-totals", "2026-03-01", "12:00:00Z"]
    assert lines[1].endswith("  1/2 succeeded · 1 queued")
    assert lines[2].split()[:3] == ["s-2", "pending", "(inline"]


def test_credentials_table() -> None:
    live = runner_pb2.RunnerCredential(
        id="rc-1", runner="r", description="prod", create_time=stamp(0)
    )
    gone = runner_pb2.RunnerCredential(
        id="rc-0", runner="r", create_time=stamp(0), revoke_time=stamp(60)
    )
    lines = render.credentials_table([live, gone])
    assert lines[1].split() == ["rc-1", "2026-03-01", "12:00:00Z", "-", "prod"]
    assert lines[2].split() == ["rc-0", "2026-03-01", "12:00:00Z", "2026-03-01", "12:01:00Z"]


def test_error_lines_list_each_field_violation() -> None:
    lines = render.error_lines(
        "INVALID_ARGUMENT",
        "invalid request: runner.memory_limit: '1GB' is not a Kubernetes quantity",
        [("runner.memory_limit", "'1GB' is not a Kubernetes quantity"), ("runner.name", "empty")],
    )
    assert lines == [
        "error: INVALID_ARGUMENT: invalid request: runner.memory_limit: '1GB' is not a "
        "Kubernetes quantity",
        "  runner.memory_limit: '1GB' is not a Kubernetes quantity",
        "  runner.name: empty",
    ]


def test_runners_table_shows_provisioning_status() -> None:
    runner = runner_pb2.Runner(
        name="csv-runner",
        enabled=True,
        min_pods=0,
        max_pods=3,
        tasks_per_pod=2,
        status=runner_pb2.RunnerStatus(
            desired_pods=2,
            observed_pods=3,
            ready_pods=1,
            queued_tasks=4,
            running_tasks=1,
            last_provisioning_error="instance csv-runner-ab12 failed: exit code 7",
        ),
    )
    header, row = render.runners_table([runner])
    assert "PODS WANT/SEE/READY" in header
    assert "2/3/1" in row and "4/1" in row and "0-3 x2" in row
    assert "exit code 7" in row
