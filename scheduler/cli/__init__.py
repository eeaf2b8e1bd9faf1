"""The operator's command line, ``heat-scheduler``: ``serve`` and ``migrate`` run the scheduler
(``main``); the other commands are clients of a running one (``registry``, ``sessions``), printed
through ``render``, which does no I/O.
"""

from __future__ import annotations

from scheduler.cli.main import main, parser

__all__ = ["main", "parser"]
