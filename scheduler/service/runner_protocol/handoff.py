"""The hand-off, as the transactions that make work ready see the dispatch: a settlement (its
results gave credits back, its children became ready) and a CreateSession (its roots are ready)
claim for this replica's credits in their own transaction, and the tasks are pushed once it
has committed."""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from scheduler.domain.runner_protocol import ClaimedTask, ClaimRequest

if TYPE_CHECKING:
    from scheduler.service.runner_protocol.dispatch import Dispatcher, Instance


@dataclass(eq=False, slots=True)
class Reservation:
    """Credits a settlement's transaction claims for, handed out once it commits."""

    dispatcher: Dispatcher
    owners: list[Instance]
    request: ClaimRequest


class HandOff(Protocol):
    """The dispatch (``Dispatch``), as the transactions that make work ready see it."""

    def returned(self, runner: str, attempt_ids: Sequence[str]) -> None: ...
    def plan(self, ready: Set[str], now: datetime) -> list[Reservation]: ...
    def handed(
        self, reservations: Sequence[Reservation], claimed: Sequence[Sequence[ClaimedTask]]
    ) -> None: ...
    def abandoned(self, reservations: Sequence[Reservation]) -> None: ...
    def settled(self) -> None: ...
