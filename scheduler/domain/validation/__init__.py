"""Pure validation rules for registry and session requests, one module a subject:

- ``quantities``  Kubernetes quantities (CPU and memory limits)
- ``names``       DNS labels, free text, container image references
- ``config``      JSON Schema dialects, configurations against schemas, merging
- ``dags``        a DAG's keys, templates, edges and cycles

Every ``check_*`` function returns the list of FieldViolations it found (empty when the value is
valid) instead of raising, so a caller can collect the violations of a whole request and report
them together. ``field`` is the dotted path the caller wants to see in the violation. The
bounds they apply are in ``scheduler.domain.limits``.
"""

from __future__ import annotations

from scheduler.domain.validation.config import (
    ConfigChecker,
    check_config,
    check_config_size,
    check_json_schema,
    config_checker,
    merge_config,
)
from scheduler.domain.validation.dags import DagNodeSpec, check_dag
from scheduler.domain.validation.names import check_dns_label, check_image_reference, check_text
from scheduler.domain.validation.quantities import check_cpu, check_memory, parse_quantity

__all__ = [
    "ConfigChecker",
    "DagNodeSpec",
    "check_config",
    "check_config_size",
    "check_cpu",
    "check_dag",
    "check_dns_label",
    "check_image_reference",
    "check_json_schema",
    "check_memory",
    "check_text",
    "config_checker",
    "merge_config",
    "parse_quantity",
]
