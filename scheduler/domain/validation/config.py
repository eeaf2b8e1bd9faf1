"""Configurations: JSON Schema dialects, checking a configuration against its schema, merging
overrides over defaults.

A schema is the caller's code, run on every Session that uses its template, so it is held to:

- references: only to its own parts (``#...``) and to the bundled metaschemas of the dialects;
  nothing is ever fetched or read (the resolver's registry refuses any other URI, and such a
  reference is refused when the schema is stored);
- regular expressions (``pattern``, ``patternProperties``) through RE2, a linear-time engine:
  one RE2 cannot compile (backreferences, lookaround) is refused when the schema is stored;
- size: ``SCHEMA_MAX_BYTES`` of JSON; a configuration, ``CONFIG_MAX_BYTES``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Final

import jsonschema._keywords
import jsonschema._legacy_keywords
import jsonschema._utils
import re2
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
from jsonschema_specifications import REGISTRY as METASCHEMAS
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable

from scheduler.domain.errors import FieldViolation
from scheduler.domain.limits import CONFIG_MAX_BYTES, SCHEMA_MAX_BYTES
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


def _refuse(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


# Whatever is not a bundled metaschema resolves to nothing: no URL is fetched, no file read.
_REGISTRY: Final[Registry[Any]] = Registry(retrieve=_refuse)  # type: ignore[call-arg]


@lru_cache(maxsize=1024)
def _re2(pattern: str) -> Any:
    options = re2.Options()
    options.max_mem = 8 << 20  # RE2's memory for one pattern; a bigger one does not compile
    options.log_errors = False  # a refused pattern is the caller's, answered, not logged
    return re2.compile(pattern, options)


def _search(pattern: str, text: str) -> Any:
    return _re2(pattern).search(text)


# jsonschema matches `pattern` and `patternProperties` with the `re` module its keyword
# modules import; they get one whose search is RE2's (the rest of `re` as it is).
_LINEAR_RE: Final = SimpleNamespace(
    **{**{k: getattr(re, k) for k in re.__all__}, "search": _search}
)
for _module in (jsonschema._keywords, jsonschema._legacy_keywords, jsonschema._utils):
    _module.re = _LINEAR_RE  # type: ignore[attr-defined]

_REFERENCES: Final = ("$ref", "$dynamicRef", "$recursiveRef")
# Keywords whose values are data, not schemas: a "$ref" or "pattern" in them means nothing.
_DATA_KEYWORDS: Final = frozenset({"const", "enum", "default", "examples"})


def check_json_schema(schema: Mapping[str, Any] | None, field: str) -> list[FieldViolation]:
    """The schema is itself a valid JSON Schema, safe to run (see the module's docstring);
    None or {} means "any object"."""
    if not schema:
        return []
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > SCHEMA_MAX_BYTES:
        return [
            FieldViolation(
                field, f"is {size} bytes of JSON; a schema has at most {SCHEMA_MAX_BYTES}"
            )
        ]
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
    return list(_unsafe_parts(schema, field))[:12]


def _unsafe_parts(value: Any, path: str) -> Iterator[FieldViolation]:
    """References that would leave the schema, and patterns RE2 cannot run."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _unsafe_parts(item, f"{path}[{i}]")
        return
    if not isinstance(value, Mapping):
        return
    for key, item in value.items():
        at = f"{path}.{key}"
        if key in _DATA_KEYWORDS:
            continue
        if key in _REFERENCES and isinstance(item, str) and not _local(item):
            yield FieldViolation(
                at,
                f"refers to {shown(item)}; a schema may only refer to its own parts ('#/$defs/"
                "name') or to a JSON Schema metaschema: references are never fetched",
            )
        elif key == "pattern" and isinstance(item, str):
            yield from _pattern(item, at)
        elif key == "patternProperties" and isinstance(item, Mapping):
            for pattern in item:
                yield from _pattern(str(pattern), f"{at}[{shown(str(pattern))}]")
        yield from _unsafe_parts(item, at)


def _reason(error: Exception) -> str:
    reason = error.args[0] if error.args else error
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    return bounded(str(reason))


def check_config_size(config: Mapping[str, Any], field: str) -> list[FieldViolation]:
    """A configuration is at most ``CONFIG_MAX_BYTES`` of JSON."""
    if not config:
        return []
    size = len(json.dumps(config, separators=(",", ":")))
    if size > CONFIG_MAX_BYTES:
        return [
            FieldViolation(
                field, f"is {size} bytes of JSON; a configuration has at most {CONFIG_MAX_BYTES}"
            )
        ]
    return []


def _local(reference: str) -> bool:
    if reference.startswith("#"):
        return True
    try:
        METASCHEMAS.get_or_retrieve(reference.rstrip("#"))
    except (NoSuchResource, Unresolvable, ValueError):
        return False
    return True


def _pattern(pattern: str, path: str) -> Iterator[FieldViolation]:
    try:
        _re2(pattern)
    except re2.error as error:
        yield FieldViolation(
            path,
            f"the regular expression {shown(pattern)} is not one this scheduler runs"
            f" ({_reason(error)}): patterns run on RE2, a linear-time engine, without"
            " backreferences or lookaround",
        )


ConfigChecker = Callable[[Mapping[str, Any], str], list[FieldViolation]]


def config_checker(schema: Mapping[str, Any] | None, *, partial: bool = False) -> ConfigChecker:
    """``check_config`` for one schema, its validator built once: a DAG of 100,000 nodes of one
    template checks each node's configuration without compiling the schema again."""
    if not schema:
        return lambda config, field: []
    validator = (_dialect(schema) or Draft202012Validator)(schema, registry=_REGISTRY)

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
        except re2.error as error:  # a pattern stored before patterns were checked
            return [
                FieldViolation(
                    field,
                    f"cannot be checked: the schema has a pattern RE2 cannot run"
                    f" ({_reason(error)}); fix the node template's schema",
                )
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
