"""What the health service says, decided by named conditions.

A condition is something that makes this replica unfit to serve: a background loop that keeps
failing, the embedded PostgreSQL being down, the database out of reach. Whoever watches such a
thing sets its condition (``set(name, ok=False, reason=...)``) and clears it when it is over.
A condition names the services it affects (by default every one). A service is SERVING while
none of the conditions that affect it is failing; the overall status (the service ``""``) is
SERVING while no condition at all is failing.

Notes ride along for operators (which replica leads each duty, and since when); they never
change a status. Subscribers hear of every change, so the gRPC health service is updated at
once, never polled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from scheduler.domain.clock import Clock

OVERALL = ""


@dataclass(frozen=True, slots=True)
class Problem:
    """A failing condition: why, since when, and which services it takes down (None: all)."""

    name: str
    reason: str
    since: datetime
    services: frozenset[str] | None = None

    def affects(self, service: str) -> bool:
        return service == OVERALL or self.services is None or service in self.services


class Health:
    def __init__(self, services: Iterable[str], clock: Clock) -> None:
        self.services = (OVERALL, *(s for s in services if s != OVERALL))
        self._clock = clock
        self._problems: dict[str, Problem] = {}
        self._notes: dict[str, str] = {}
        self._subscribers: list[Callable[[], None]] = []

    def set(
        self, name: str, *, ok: bool, reason: str = "", services: Sequence[str] | None = None
    ) -> None:
        """Set condition ``name``: failing (``ok=False``, with why) or over (``ok=True``)."""
        if ok:
            if self._problems.pop(name, None) is not None:
                self._changed()
            return
        known = self._problems.get(name)
        scope = None if services is None else frozenset(services)
        if known is not None and known.reason == reason and known.services == scope:
            return
        since = known.since if known is not None else self._clock.now()
        self._problems[name] = Problem(name, reason, since, scope)
        self._changed()

    def note(self, key: str, text: str) -> None:
        """A fact for operators (empty text removes it)."""
        if self._notes.get(key, "") == text:
            return
        if text:
            self._notes[key] = text
        else:
            self._notes.pop(key, None)
        self._changed()

    def serving(self, service: str = OVERALL) -> bool:
        return not any(p.affects(service) for p in self._problems.values())

    def statuses(self) -> dict[str, bool]:
        """Every service's status, the overall one ("") last (it sums the others up)."""
        ordered = [s for s in self.services if s != OVERALL] + [OVERALL]
        return {s: self.serving(s) for s in ordered}

    def problems(self) -> list[Problem]:
        return sorted(self._problems.values(), key=lambda p: (p.since, p.name))

    def notes(self) -> dict[str, str]:
        return dict(sorted(self._notes.items()))

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` on every change; returns the unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _changed(self) -> None:
        for callback in list(self._subscribers):
            callback()
