"""The database driver's exceptions, translated at the store's edge into the domain's.

- a serialization failure, a deadlock or a lock wait that timed out (SQLSTATE 40001, 40P01,
  55P03): ``Aborted``, a concurrent change won and retrying may succeed;
- a lost or refused connection, a server shutting down, starting up or out of resources
  (classes 08, 53, 57, 58), a session the server ended for idling in a transaction (25P03),
  socket errors, and the driver's own complaints about a connection in a broken state:
  ``Unavailable``;
- any other failed statement: ``Internal``, a fault of ours.

Errors a repository turns into something more precise (a unique violation: AlreadyExists) are
caught there, before they reach this edge.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import asyncpg
from asyncpg.exceptions import InternalClientError

from scheduler.domain.errors import Aborted, Internal, Unavailable

_CONFLICT: Final = frozenset({"40001", "40P01", "55P03"})
_UNAVAILABLE_CLASSES: Final = frozenset({"08", "53", "57", "58"})
_UNAVAILABLE: Final = frozenset({"25P03"})


@contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except asyncpg.PostgresError as exc:
        state = exc.sqlstate or ""
        name = type(exc).__name__
        if state in _CONFLICT:
            raise Aborted(f"a concurrent change won ({name}); retry") from exc
        if state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE:
            raise Unavailable(f"the database is unavailable ({name}); retry") from exc
        raise Internal(f"a database statement failed ({name}, SQLSTATE {state})") from exc
    except (OSError, asyncpg.InterfaceError, InternalClientError) as exc:
        raise Unavailable(f"the database is unavailable ({type(exc).__name__}); retry") from exc
