"""Who may do what in the runner protocol: the one place every runner RPC asks.

- A bearer credential names its Runner (``runner_of``); every other check is against it.
- A ClaimTask stream is for the credential's own Runner, and an instance id belongs to the
  Runner it connected for (``check_start``, ``check_instance``).
- An attempt belongs to its node's Runner: another Runner may not settle it, and its lease is
  neither extended for nor shown to another Runner (``may_settle``, ``owns_attempt``; the
  lease extension applies the same rule in its statement).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from scheduler.domain import credentials
from scheduler.domain.clock import Clock
from scheduler.domain.errors import PermissionDenied, Unauthenticated
from scheduler.domain.ports import Store
from scheduler.domain.verdicts import HeldNode

# Revocation takes effect within this long, without a query per message.
CREDENTIAL_TTL: Final = timedelta(seconds=10)
_CACHED_MAX: Final = 10_000


class Authorisation:
    def __init__(
        self, store: Store, clock: Clock, runner_of_instance: Callable[[str], str | None]
    ) -> None:
        self._store = store
        self._clock = clock
        self._runner_of_instance = runner_of_instance
        self._credentials: dict[bytes, tuple[str | None, datetime]] = {}

    async def runner_of(self, secret: str | None) -> str:
        """The Runner a bearer credential belongs to."""
        if not secret:
            raise Unauthenticated(
                "no runner credential: send metadata 'authorization: Bearer <secret>' "
                "(issue one with RegistryService/IssueRunnerCredential)"
            )
        digest = credentials.digest(secret)
        now = self._clock.now()
        cached = self._credentials.get(digest)
        if cached is None or cached[1] < now:
            async with self._store.transaction() as work:
                runner = await work.registry.runner_of_credential(digest)
            if len(self._credentials) > _CACHED_MAX:
                self._credentials.clear()
            cached = (runner, now + CREDENTIAL_TTL)
            self._credentials[digest] = cached
        if cached[0] is None:
            raise Unauthenticated("the runner credential is unknown or revoked")
        return cached[0]

    def check_start(self, runner: str, declared: str) -> None:
        """A ClaimTask stream claims for the credential's Runner only."""
        if declared != runner:
            raise PermissionDenied(f"the credential belongs to runner {runner!r}, not {declared!r}")

    def check_instance(self, runner: str, instance_id: str, *, connecting: bool = False) -> None:
        """An instance id is the Runner's it connected for."""
        owner = self._runner_of_instance(instance_id)
        if owner is not None and owner != runner:
            if connecting:
                raise PermissionDenied(
                    f"instance {instance_id!r} is connected for runner {owner!r}"
                )
            raise PermissionDenied(f"instance {instance_id!r} belongs to runner {owner!r}")

    @staticmethod
    def may_settle(poster: str | None, node: HeldNode) -> str | None:
        """Why ``poster`` may not settle the attempt holding ``node`` (None: it may). The
        timekeeper (``poster`` None) may settle any attempt."""
        if poster is not None and node.runner != poster:
            return f"attempt {node.attempt_id} belongs to runner {node.runner!r}, not {poster!r}"
        return None

    @staticmethod
    def owns_attempt(runner: str, attempt_runner: str) -> bool:
        return attempt_runner == runner
