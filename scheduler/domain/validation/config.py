"""Configurations: JSON Schema dialects, checking a configuration against its schema, merging
overrides over defaults. Schema references are never fetched: validation stays pure and offline.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import (
    Draft3Validator,
    Draft4Validator,
    Draft6Validator,
    Draft7Validator,
    Draft201909Validator,
    Draft202012Validator,
)
from referencing.exceptions import Unresolvable

from scheduler.domain.errors import FieldViolation
from scheduler.domain.validation.wording import bounded, shown

_DIALECTS: Final[Mapping[str, type[Validator]]] = {
    str(cls.META_SCHEMA.get("$id") or cls.META_SCHEMA["id"]).rstrip("#"): cls
    for cls in (
        Draft3Validator,
        Draft4Validator,
        Draft6Validator,
        Draft7Validator,
        Draft201909Validator,
        Draft202012Validator,
    )
}
_SCHEMA_FORM: Final = (
    "write a JSON Schema (Draft 2020-12 unless $schema says otherwise), e.g."
    ' {"type": "object", "properties": {"threshold": {"type": "number"}}}'
)


def check_json_schema(schema: Mapping[str, Any] | None, field: str) -> list[FieldViolation]:
    """The schema is itself a valid JSON Schema; None or {} means "any object"."""
    if not schema:
        return []
    dialect = _dialect(schema)
    if dialect is None:
        known = ", ".join(sorted(_DIALECTS))
        return [
            FieldViolation(
                field,
                f"$schema {bounded(repr(schema['$schema']))} is not a dialect this scheduler"
                f" knows; omit it for Draft 2020-12 or use one of {known}",
            )
        ]
    try:
        dialect.check_schema(dict(schema))
    except SchemaError as error:
        return [
            FieldViolation(
                field,
                f"is not a valid JSON Schema: {bounded(error.message)} (at {error.json_path});"
                f" {_SCHEMA_FORM}",
            )
        ]
    except RecursionError:
        return [FieldViolation(field, f"is nested too deeply to check; {_SCHEMA_FORM}")]
    return []


ConfigChecker = Callable[[Mapping[str, Any], str], list[FieldViolation]]


def config_checker(schema: Mapping[str, Any] | None, *, partial: bool = False) -> ConfigChecker:
    """``check_config`` for one schema, its validator built once: a DAG of 100,000 nodes of one
    template checks each node's configuration without compiling the schema again."""
    if not schema:
        return lambda config, field: []
    validator = (_dialect(schema) or Draft202012Validator)(schema)

    def check(config: Mapping[str, Any], field: str) -> list[FieldViolation]:
        try:
            errors = sorted(validator.iter_errors(config), key=_error_order)
        except Unresolvable as error:
            # Remote references are never fetched: validation stays pure and offline.
            return [
                FieldViolation(
                    field,
                    f"cannot be checked: the schema's reference {shown(error.ref)} does not "
                    "resolve; a schema may only refer to its own parts",
                )
            ]
        except RecursionError:
            return [
                FieldViolation(field, "is nested too deeply to check; flatten the configuration")
            ]
        return [
            FieldViolation(_config_path(field, e.absolute_path), bounded(e.message))
            for e in errors
            if not (partial and e.validator == "required")
        ]

    return check


def check_config(
    config: Mapping[str, Any],
    schema: Mapping[str, Any] | None,
    field: str,
    *,
    partial: bool = False,
) -> list[FieldViolation]:
    """One violation per place where ``config`` breaks ``schema`` (checked by check_json_schema).

    ``partial`` is for defaults that nodes complete: a missing required property is fine there,
    a present property of the wrong kind is not.
    """
    return config_checker(schema, partial=partial)(config, field)


def merge_config(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` laid over ``defaults``: objects merge key by key, anything else is replaced.

    The result shares nothing mutable with either input, so neither can be changed through it.
    """
    merged = {
        key: _merge_value(value, overrides[key]) if key in overrides else copy.deepcopy(value)
        for key, value in defaults.items()
    }
    merged.update((k, copy.deepcopy(v)) for k, v in overrides.items() if k not in defaults)
    return merged


def _merge_value(default: Any, override: Any) -> Any:
    if isinstance(default, Mapping) and isinstance(override, Mapping):
        return merge_config(default, override)
    return copy.deepcopy(override)


def _dialect(schema: Mapping[str, Any]) -> type[Validator] | None:
    """The validator class for the schema's $schema; None when that names no known dialect.

    Unlike jsonschema's validator_for, an unknown $schema is not silently read as the default
    dialect: a typo there would change what the schema means without anyone noticing.
    """
    if "$schema" not in schema:
        return Draft202012Validator
    declared = schema["$schema"]
    if not isinstance(declared, str):
        return None
    return _DIALECTS.get(declared.rstrip("#"))


def _error_order(error: ValidationError) -> tuple[tuple[int, int, str], ...]:
    # Paths mix str keys and int indices, which do not compare with each other directly.
    return tuple((1, p, "") if isinstance(p, int) else (0, 0, str(p)) for p in error.absolute_path)


def _config_path(field: str, path: Iterable[str | int]) -> str:
    # Indices are written as [i], like the request paths of the rest of the API (nodes[3]).
    return field + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
