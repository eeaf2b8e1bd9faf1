"""The pytest plugin of heat-runtime (loaded by pytest through its ``pytest11`` entry point).

Fixture ``heat_scheduler``: a ``HeatScheduler`` (a real scheduler on an embedded PostgreSQL,
served in-process) shared by the test session; each test applies its manifest, starts its
runners and submits its own Sessions. Needs ``pip install 'heat-runtime[testing]'`` and the
PostgreSQL server programs; the scheduler is imported only when a test asks for the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from heat_runtime.testing._scheduler import HeatScheduler


@pytest.fixture(scope="session")
def heat_scheduler() -> Iterator[HeatScheduler]:
    """A scheduler with an embedded PostgreSQL, in this process, for the whole test session."""
    with HeatScheduler() as scheduler:
        yield scheduler
