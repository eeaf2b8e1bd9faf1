"""Backoff: how long to wait before trying again; the one rule every retry in the scheduler uses.

The bound grows exponentially from ``first`` by ``multiplier`` per consecutive failure, up to
``cap``; the wait is drawn uniformly from the top ``spread`` of the bound. By default that is
all of it, from zero ("full jitter"), so the replicas, streams and tasks that failed together do
not all come back together.

A task's retry policy, the leadership loop, the LISTEN connection, a dispatcher's claims and a
conflicting settlement wait with full jitter. Two loops keep a floor: the Kubernetes watch and
the CLI's watch wait at least half the bound (``spread=0.5``), so a failing API server or
scheduler is never asked again at once; the replacement of crashing instances waits the whole
bound (``spread=0``): one leader decides it, so there is nobody to spread out, and operators
read the delays (1 s, 2 s, 4 s, …).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class Backoff:
    first: timedelta
    cap: timedelta
    multiplier: float = 2.0
    spread: float = 1.0

    def bound(self, failures: int) -> timedelta:
        """The longest wait after ``failures`` consecutive failures (1 is the first)."""
        return timedelta(seconds=self._bound(failures))

    def delay(self, failures: int, rng: random.Random) -> timedelta:
        """A wait drawn uniformly from the top ``spread`` of ``bound(failures)``."""
        bound = self._bound(failures)
        if self.spread <= 0:
            return timedelta(seconds=bound)
        return timedelta(seconds=rng.uniform(bound * (1 - self.spread), bound))

    def _bound(self, failures: int) -> float:
        first, cap = self.first.total_seconds(), self.cap.total_seconds()
        if first <= 0:
            return 0.0
        try:
            return min(first * self.multiplier ** max(failures - 1, 0), cap)
        except OverflowError:
            return cap


_RNG = random.Random()  # noqa: S311 (jitter, not secrets)


@dataclass(slots=True)
class Retries:
    """The consecutive failures of one loop: ``wait()`` after each, ``reset()`` on success."""

    backoff: Backoff
    rng: random.Random = field(default=_RNG)
    failures: int = 0

    def wait(self) -> float:
        """One more failure: the seconds to wait before the next try."""
        self.failures += 1
        return self.backoff.delay(self.failures, self.rng).total_seconds()

    def reset(self) -> None:
        self.failures = 0
