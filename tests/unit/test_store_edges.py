"""The store's edges that need no database: the NOTIFY wire format, and how the driver's
exceptions leave the store."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from scheduler.domain.errors import Aborted, Internal, SchedulerError, Unavailable
from scheduler.domain.ports import Changes
from scheduler.store.errors import translated
from scheduler.store.notifications import CANCEL_CHANNEL, TICK_CHANNEL, decode, encode
from tests.unit.fakes import T0


def test_what_a_commit_changed_travels_and_comes_back_whole() -> None:
    ids = [f"{i:08d}-0000-0000-0000-000000000000" for i in range(200)]
    changes = Changes(
        ready_runners={"w", "x"},
        sessions={3, 1},
        cancelled_attempts=ids,
        deadlines=[T0, None, T0],
    )
    messages = encode(changes)
    cancels = [p for c, p in messages if c == CANCEL_CHANNEL]
    assert [len(p.split(",")) for p in cancels] == [150, 50]
    assert all(len(p) < 8000 for p in cancels)
    assert [p for c, p in messages if c == TICK_CHANNEL] == [T0.isoformat(), ""]
    back = Changes()
    for channel, payload in messages:
        got = decode(channel, payload)
        assert got is not None
        back.ready_runners |= got.ready_runners
        back.sessions |= got.sessions
        back.cancelled_attempts += got.cancelled_attempts
        back.deadlines += got.deadlines
    assert back.ready_runners == {"w", "x"} and back.sessions == {1, 3}
    assert back.cancelled_attempts == ids
    assert back.deadlines == [T0, None]
    assert encode(Changes()) == [] and not Changes()


def test_foreign_and_malformed_notifications_are_ignored() -> None:
    assert decode("somebody_else", "x") is None
    assert decode("heat_session", "not-a-number") is None
    assert decode(TICK_CHANNEL, "yesterday") is None
    assert decode(TICK_CHANNEL, (T0 + timedelta(seconds=1)).isoformat()) == Changes(
        deadlines=[T0 + timedelta(seconds=1)]
    )


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (asyncpg.DeadlockDetectedError("deadlock"), Aborted),
        (asyncpg.SerializationError("could not serialize"), Aborted),
        (asyncpg.AdminShutdownError("shutting down"), Unavailable),
        (asyncpg.CannotConnectNowError("starting up"), Unavailable),
        (asyncpg.TooManyConnectionsError("too many"), Unavailable),
        (ConnectionRefusedError("refused"), Unavailable),
        (asyncpg.InterfaceError("connection is closed"), Unavailable),
        (asyncpg.PostgresSyntaxError("a bug of ours"), Internal),
    ],
)
def test_driver_errors_leave_the_store_as_domain_errors(
    raised: Exception, expected: type[SchedulerError]
) -> None:
    with pytest.raises(expected) as caught, translated():
        raise raised
    assert caught.value.__cause__ is raised


def test_domain_errors_pass_through_untouched() -> None:
    with pytest.raises(Aborted, match="mine"), translated():
        raise Aborted("mine")
