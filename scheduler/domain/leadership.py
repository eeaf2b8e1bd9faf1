"""Leadership by lease: one replica at a time holds a duty, for a term; the rules, given times.

A term is a lease in the database with an *epoch* that grows by one at every takeover. The
lease runs out at its ``expire_time``, by the database's clock, unless its holder renews it;
each renewal, every ``renew_every``, sets it to the database's now + ``duration``. Another
replica takes over once the lease has run out (it waits for that known deadline; nothing
polls), or at once when the holder's connection ends (the holder died).

The holder counts its lease from the moment it *sent* each renewal that succeeded, on its own
monotonic clock (``Tenure``). That moment is never later than the database's now at the
renewal, so the holder never believes it leads longer than the database lets it, whatever the
replicas' clocks say: only durations are compared. When its count runs out (the process was
paused, cut off from the database, or the database is slow), the term is over for it.

Every leader-only write runs in a *fenced* transaction: its first statement checks that the
term is still the duty's current one with a lease not run out, and holds that (a row lock)
until the transaction ends; a takeover waits for such transactions. So every leader-only write
commits under the epoch that is current when it commits. A fenced transaction may not sit idle
longer than ``idle_limit`` (``duration - renew_every``): the database then ends it, so a
paused holder cannot hold a takeover back past the end of its lease.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

DEFAULT_DURATION: Final = timedelta(seconds=10)
DEFAULT_RENEW_EVERY: Final = timedelta(seconds=2)
# A renewal may fail twice in a row (a blip) and the third still land before the lease ends.
RENEWALS_PER_LEASE: Final = 3


class NotLeader(Exception):
    """This replica's term is over: another replica took over, or its lease ran out."""


class Duty(enum.Enum):
    TIMEKEEPER = "keeps time (expires leases, requeues retries)"
    PROVISIONING = "provisions runners"

    @property
    def key(self) -> str:
        """The duty's name in the database, logs and health notes."""
        return self.name.lower()


@dataclass(eq=False, slots=True)
class Term:
    """One spell of leadership. ``lost`` is set once this replica must stop acting for the
    duty (``end(reason)``); ``epoch`` orders terms where the implementation counts them (the
    fencing token), else None; ``holder`` names this replica and ``since`` is when the term
    began, by the database's clock."""

    duty: Duty
    lost: asyncio.Event
    epoch: int | None = None
    holder: str = ""
    since: datetime | None = None
    reason: str = ""  # why it ended

    def end(self, reason: str) -> None:
        """The term is over for this replica (the first reason given is kept)."""
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()

    def check(self) -> None:
        """NotLeader once the term is over (before acting outside the database)."""
        if self.lost.is_set():
            raise NotLeader(self.reason or f"the term ({self.describe()}) is over")

    def describe(self) -> str:
        text = f"{self.duty.key}, epoch {self.epoch}" if self.epoch is not None else self.duty.key
        if self.since is not None:
            text += f", since {self.since.isoformat(timespec='seconds')}"
        return text


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    duration: timedelta = DEFAULT_DURATION
    renew_every: timedelta = DEFAULT_RENEW_EVERY

    @property
    def idle_limit(self) -> timedelta:
        """How long a fenced transaction may sit idle before the database ends it."""
        return self.duration - self.renew_every

    def problem(self) -> str | None:
        """Why these settings cannot work, or None."""
        if self.renew_every <= timedelta(0):
            return "the renewal interval must be more than 0"
        if self.renew_every * RENEWALS_PER_LEASE > self.duration:
            return (
                f"the renewal interval ({self.renew_every.total_seconds():g}s) must be at most "
                f"1/{RENEWALS_PER_LEASE} of the lease ({self.duration.total_seconds():g}s), so a "
                "renewal can fail twice and the third still land in time"
            )
        return None


@dataclass(slots=True)
class Tenure:
    """The holder's own count of its lease, in seconds of a monotonic clock."""

    settings: LeaseSettings
    valid_until: float

    @classmethod
    def begun(cls, settings: LeaseSettings, sent_at: float) -> Tenure:
        """The term began with a statement sent at ``sent_at``."""
        return cls(settings, sent_at + settings.duration.total_seconds())

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` succeeded."""
        self.valid_until = max(self.valid_until, sent_at + self.settings.duration.total_seconds())

    def holds(self, now: float) -> bool:
        return now < self.valid_until

    def next_renewal(self, sent_at: float) -> float:
        """When to renew after a renewal sent at ``sent_at`` succeeded."""
        return sent_at + self.settings.renew_every.total_seconds()

    def retry_at(self, now: float, wait: float) -> float:
        """When to try again after a renewal failed (a ``wait`` of backoff), never after the
        lease ends by our count."""
        return min(now + wait, self.valid_until)

    def time_left(self, now: float) -> float:
        return max(self.valid_until - now, 0.0)


def takeover_wait(expire_time: datetime, database_now: datetime) -> float:
    """Seconds until a lease runs out, by the database's clock (0 once it has)."""
    return max((expire_time - database_now).total_seconds(), 0.0)


@dataclass(frozen=True, slots=True)
class LeaderView:
    """Who leads a duty, as this replica last saw it (its own term, or the database's row)."""

    duty: Duty
    holder: str
    epoch: int
    since: datetime
    mine: bool

    def describe(self) -> str:
        who = f"{self.holder} (this replica)" if self.mine else self.holder
        return f"{who}, epoch {self.epoch}, since {self.since.isoformat(timespec='seconds')}"
