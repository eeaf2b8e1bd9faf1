"""The one sweep over every request at the edge, before any servicer sees it.

Whatever a caller sends is decoded here (not by gRPC: a message protobuf refuses to decode, e.g.
one nested past its depth limit, is the caller's fault and answered INVALID_ARGUMENT) and walked
once, whatever the RPC:

- every string (plain fields, map keys and values, JSON strings and keys) holds no NUL (which
  PostgreSQL text and jsonb cannot store); plain strings are at most ``TEXT_MAX_LENGTH`` long,
  JSON keys at most ``JSON_KEY_MAX_LENGTH`` (JSON strings are data, bounded by the message and
  by the domain's byte bounds on outputs, configurations and parameters);
- every floating-point number, in JSON or not, is finite;
- JSON (``Struct``, ``Value``, ``ListValue``) nests at most ``JSON_MAX_DEPTH`` levels;
- ``Timestamp`` and ``Duration`` values are within the ranges their definitions give.

The domain then applies its own, tighter bounds (names, sizes, durations) to what it takes.
Each bound is in ``scheduler.domain.limits``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

from google.protobuf import message as pb_message
from google.protobuf.descriptor import FieldDescriptor

from scheduler.domain.errors import FieldViolation, InvalidArgument
from scheduler.domain.limits import (
    DURATION_MAX_SECONDS,
    JSON_KEY_MAX_LENGTH,
    JSON_MAX_DEPTH,
    TEXT_MAX_LENGTH,
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
)

_MAX_VIOLATIONS: Final = 12
_NANOS_MAX: Final = 999_999_999
_STRUCT: Final = "google.protobuf.Struct"
_VALUE: Final = "google.protobuf.Value"
_LIST: Final = "google.protobuf.ListValue"
_TIMESTAMP: Final = "google.protobuf.Timestamp"
_DURATION: Final = "google.protobuf.Duration"
_FLOATS: Final = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})


def decoder(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``parse`` (a generated FromString), then the sweep; InvalidArgument for either."""

    def decode(data: bytes) -> Any:
        try:
            request = parse(data)
        except pb_message.DecodeError as error:
            depth = "nested too deeply" if "Depth" in str(error) else "not a valid message"
            raise InvalidArgument(
                [
                    FieldViolation(
                        "",
                        f"the request is {depth} for protobuf to decode; JSON values nest at"
                        f" most {JSON_MAX_DEPTH} levels",
                    )
                ]
            ) from None
        check(request)
        return request

    return decode


async def decoded(
    requests: AsyncIterator[bytes], decode: Callable[[bytes], Any]
) -> AsyncIterator[Any]:
    """A stream's requests, each decoded and swept as it arrives."""
    async for data in requests:
        yield decode(data)


def check(request: pb_message.Message) -> None:
    """InvalidArgument listing (up to a dozen of) the request's values out of bounds."""
    if _clean(request, 0):
        return  # the common case, found without naming a path (a 100,000-node DAG is large)
    violations: list[FieldViolation] = []
    for violation in _message(request, "", 0):
        violations.append(violation)
        if len(violations) >= _MAX_VIOLATIONS:
            break
    if violations:
        raise InvalidArgument(violations)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _message(message: pb_message.Message, path: str, depth: int) -> Iterator[FieldViolation]:
    name = message.DESCRIPTOR.full_name
    if name == _STRUCT:
        yield from _struct(message, path, depth + 1)
        return
    if name == _VALUE:
        yield from _value(message, path, depth)
        return
    if name == _LIST:
        yield from _list(message, path, depth + 1)
        return
    if name == _TIMESTAMP:
        yield from _timestamp(message, path)
        return
    if name == _DURATION:
        yield from _duration(message, path)
        return
    for field, value in message.ListFields():
        yield from _field(field, value, _join(path, field.name), depth)


def _field(field: FieldDescriptor, value: Any, path: str, depth: int) -> Iterator[FieldViolation]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            at = f"{path}[{_key_text(key)}]"
            if isinstance(key, str):
                yield from _text(key, f"{at} (key)", TEXT_MAX_LENGTH)
            yield from _single(value_field, item, at, depth)
        return
    if field.is_repeated:
        for i, item in enumerate(value):
            yield from _single(field, item, f"{path}[{i}]", depth)
        return
    yield from _single(field, value, path, depth)


def _single(field: FieldDescriptor, value: Any, path: str, depth: int) -> Iterator[FieldViolation]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        yield from _message(value, path, depth)
    elif field.type == FieldDescriptor.TYPE_STRING:
        yield from _text(value, path, TEXT_MAX_LENGTH)
    elif field.type in _FLOATS and not math.isfinite(value):
        yield FieldViolation(path, f"is {value}; only finite numbers are accepted")


def _text(value: str, path: str, limit: int) -> Iterator[FieldViolation]:
    if len(value) > limit:
        yield FieldViolation(
            path, f"is {len(value)} characters long, more than the {limit} accepted"
        )
    elif "\x00" in value:
        yield FieldViolation(path, "contains a NUL character, which cannot be stored; remove it")


def _key_text(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:39] + "…"


def _too_deep(path: str) -> FieldViolation:
    return FieldViolation(path, f"JSON nests more than {JSON_MAX_DEPTH} levels deep; flatten it")


def _struct(message: Any, path: str, depth: int) -> Iterator[FieldViolation]:
    if depth > JSON_MAX_DEPTH:
        yield _too_deep(path)
        return
    for key, value in message.fields.items():
        at = f"{path}.{key}" if len(key) <= 40 else f"{path}[{_key_text(key)}]"
        yield from _text(key, f"{at} (key)", JSON_KEY_MAX_LENGTH)
        yield from _value(value, at, depth)


def _list(message: Any, path: str, depth: int) -> Iterator[FieldViolation]:
    if depth > JSON_MAX_DEPTH:
        yield _too_deep(path)
        return
    for i, value in enumerate(message.values):
        yield from _value(value, f"{path}[{i}]", depth)


def _value(message: Any, path: str, depth: int) -> Iterator[FieldViolation]:
    kind = message.WhichOneof("kind")
    if kind == "string_value":
        if "\x00" in message.string_value:
            yield FieldViolation(
                path, "contains a NUL character, which cannot be stored; remove it"
            )
    elif kind == "number_value":
        if not math.isfinite(message.number_value):
            yield FieldViolation(path, f"is {message.number_value}; JSON numbers must be finite")
    elif kind == "struct_value":
        yield from _struct(message.struct_value, path, depth + 1)
    elif kind == "list_value":
        yield from _list(message.list_value, path, depth + 1)


def _timestamp(message: Any, path: str) -> Iterator[FieldViolation]:
    if not TIMESTAMP_MIN_SECONDS <= message.seconds <= TIMESTAMP_MAX_SECONDS or not (
        0 <= message.nanos <= _NANOS_MAX
    ):
        yield FieldViolation(
            path,
            "is not a timestamp between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
        )


def _duration(message: Any, path: str) -> Iterator[FieldViolation]:
    seconds, nanos = message.seconds, message.nanos
    in_range = abs(seconds) <= DURATION_MAX_SECONDS and abs(nanos) <= _NANOS_MAX
    if not in_range or (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        yield FieldViolation(
            path,
            f"is not a duration: seconds within ±{DURATION_MAX_SECONDS} and nanos of the same sign",
        )


# -- the same checks, answering only whether all pass (no paths, no generators) -----------------

_MAP: Final = 0
_REPEATED: Final = 1
_ONE: Final = 2
_SHAPES: dict[FieldDescriptor, tuple[int, FieldDescriptor]] = {}


def _shape(field: FieldDescriptor) -> tuple[int, FieldDescriptor]:
    """How a field holds its values, and the descriptor of each (a map's: its value field)."""
    shape = _SHAPES.get(field)
    if shape is None:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            shape = (_MAP, field.message_type.fields_by_name["value"])
        elif field.is_repeated:
            shape = (_REPEATED, field)
        else:
            shape = (_ONE, field)
        _SHAPES[field] = shape
    return shape


def _clean(message: Any, depth: int) -> bool:
    """Whether ``_message`` would find nothing wrong."""
    name = message.DESCRIPTOR.full_name
    if name == _STRUCT:
        return _clean_struct(message, depth + 1)
    if name == _VALUE:
        return _clean_value(message, depth)
    if name == _LIST:
        return _clean_list(message, depth + 1)
    if name == _TIMESTAMP:
        return next(_timestamp(message, ""), None) is None
    if name == _DURATION:
        return next(_duration(message, ""), None) is None
    for field, value in message.ListFields():
        shape, item_field = _shape(field)
        if shape == _MAP:
            for key, item in value.items():
                if isinstance(key, str) and not _clean_text(key, TEXT_MAX_LENGTH):
                    return False
                if not _clean_single(item_field, item, depth):
                    return False
        elif shape == _REPEATED:
            kind = field.type
            if kind == FieldDescriptor.TYPE_STRING:
                if not all(_clean_text(item, TEXT_MAX_LENGTH) for item in value):
                    return False
            elif kind == FieldDescriptor.TYPE_MESSAGE:
                if not all(_clean(item, depth) for item in value):
                    return False
            elif kind in _FLOATS and not all(math.isfinite(item) for item in value):
                return False
        elif not _clean_single(field, value, depth):
            return False
    return True


def _clean_single(field: FieldDescriptor, value: Any, depth: int) -> bool:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _clean(value, depth)
    if kind == FieldDescriptor.TYPE_STRING:
        return _clean_text(value, TEXT_MAX_LENGTH)
    return kind not in _FLOATS or math.isfinite(value)


def _clean_text(value: str, limit: int) -> bool:
    return len(value) <= limit and "\x00" not in value


def _clean_struct(message: Any, depth: int) -> bool:
    if depth > JSON_MAX_DEPTH:
        return False
    return all(
        _clean_text(key, JSON_KEY_MAX_LENGTH) and _clean_value(value, depth)
        for key, value in message.fields.items()
    )


def _clean_list(message: Any, depth: int) -> bool:
    if depth > JSON_MAX_DEPTH:
        return False
    return all(_clean_value(value, depth) for value in message.values)


def _clean_value(message: Any, depth: int) -> bool:
    kind = message.WhichOneof("kind")
    if kind == "string_value":
        return "\x00" not in message.string_value
    if kind == "number_value":
        return math.isfinite(message.number_value)
    if kind == "struct_value":
        return _clean_struct(message.struct_value, depth + 1)
    if kind == "list_value":
        return _clean_list(message.list_value, depth + 1)
    return True
