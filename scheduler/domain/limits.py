"""Size bounds on what callers may send; every one is a setting."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_name: int = 63
    max_description: int = 4096
    max_dag_nodes: int = 100_000
    max_tasks_per_pod: int = 1024
    max_attempts: int = 100
    max_page_size: int = 1000
    default_page_size: int = 100
    max_parameters_bytes: int = 256 * 1024
    # Sessions larger than these come back without their nodes (they would not fit one
    # message): CreateSession acknowledges, GetSession shows up to the second bound, and
    # WatchSession streams every change.
    max_created_nodes_shown: int = 1_000
    max_nodes_shown: int = 10_000
