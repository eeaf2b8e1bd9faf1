"""Hypothesis strategies for every request of the contract, built from the messages' own
descriptors: valid values (names the fuzzed scheduler knows, well-formed durations) mixed with
hostile ones (NUL, huge strings, non-finite numbers, deep JSON, extreme integers, timestamps
and durations out of range, unknown enum values)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

INT32: Final = (-(2**31), 2**31 - 1)
INT64: Final = (-(2**63), 2**63 - 1)
UINT32: Final = (0, 2**32 - 1)
UINT64: Final = (0, 2**64 - 1)
_SIGNED32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
_SIGNED64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64}
_UNSIGNED32 = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
_UNSIGNED64 = {FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64}
MESSAGE_DEPTH: Final = 4


def hostile_text(known: Sequence[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(list(known)),  # names the scheduler knows: deeper paths
        st.text(max_size=12),
        st.text(st.characters(codec="utf-8"), max_size=40),  # NUL and the rest of Unicode
        st.sampled_from(
            ["", "\x00", "a\x00b", " ", "../../etc/passwd", "%s%n", "'; DROP TABLE x; --", "😀"]
        ),
        st.integers(1, 5).map(lambda n: "a" * (10**n)),  # up to 100,000 characters
        st.uuids().map(str),
    )


def extreme_int(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(-3, 1000).filter(lambda n: low <= n <= high),
        st.sampled_from([low, high, low + 1, high - 1, 0]),
        st.integers(low, high),
    )


def numbers() -> st.SearchStrategy[float]:
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, 1.0, 2.0, 1e300, -1e300, 1e-300, float("nan"), float("inf")]),
    )


def json_values(known: Sequence[str], depth: int = 0) -> st.SearchStrategy[Any]:
    """JSON as Struct carries it: numbers may be non-finite, strings and keys hostile."""
    leaves = st.one_of(st.none(), st.booleans(), numbers(), hostile_text(known))
    nested = st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(hostile_text(known), children, max_size=3),
        ),
        max_leaves=8,
    )
    return st.one_of(nested, st.integers(15, 24).map(_deep))


def _deep(levels: int) -> dict[str, Any]:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return dict(value)


def _set_json(target: Any, value: Any) -> None:
    """Fill a google.protobuf.Value from a Python value, non-finite numbers included."""
    if value is None:
        target.null_value = 0
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, float):
        target.number_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, list):
        items = target.list_value
        items.SetInParent()
        for item in value:
            _set_json(items.values.add(), item)
    else:
        _fill_struct(target.struct_value, value)
        target.struct_value.SetInParent()


def _fill_struct(target: Any, value: dict[str, Any]) -> None:
    for key, item in value.items():
        _set_json(target.fields[key], item)


@st.composite
def _struct(draw: st.DrawFn, known: Sequence[str]) -> dict[str, Any]:
    return draw(st.dictionaries(hostile_text(known), json_values(known), max_size=4))


def messages(
    descriptor: Descriptor, known: Sequence[str], depth: int = 0
) -> st.SearchStrategy[Message]:
    """A message of ``descriptor``'s type, each field set or not, oneofs at most one."""
    cls = message_factory.GetMessageClass(descriptor)
    return _message(cls, descriptor, tuple(known), depth)


@st.composite
def _message(
    draw: st.DrawFn, cls: type[Message], descriptor: Descriptor, known: tuple[str, ...], depth: int
) -> Message:
    message = cls()
    name = descriptor.full_name
    if name == "google.protobuf.Struct":
        _fill_struct(message, draw(_struct(known)))
        return message
    if name == "google.protobuf.Value":
        _set_json(message, draw(json_values(known)))
        return message
    if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        message.seconds = draw(  # type: ignore[attr-defined]
            st.one_of(
                st.integers(-100, 10**6),
                st.sampled_from([10**15, -(10**15), 253_402_300_800, -62_135_596_801]),
                st.integers(*INT64),
            )
        )
        message.nanos = draw(  # type: ignore[attr-defined]
            st.one_of(st.integers(0, 999_999_999), st.integers(*INT32))
        )
        return message
    if depth > MESSAGE_DEPTH:
        return message
    chosen_oneofs = {
        oneof.name: draw(st.sampled_from([None, *oneof.fields])) for oneof in descriptor.oneofs
    }
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen_oneofs[oneof.name] is not field:
            continue
        if oneof is None and not draw(st.booleans()):
            continue
        _set_field(draw, message, field, known, depth)
    return message


def _scalar(field: FieldDescriptor, known: tuple[str, ...]) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return hostile_text(known)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=20)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 12)  # unknown values included (proto3 enums are open)
    if kind in _SIGNED32:
        return extreme_int(*INT32)
    if kind in _SIGNED64:
        return extreme_int(*INT64)
    if kind in _UNSIGNED32:
        return extreme_int(*UINT32)
    if kind in _UNSIGNED64:
        return extreme_int(*UINT64)
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=True, allow_infinity=True)
    return numbers()


def _set_field(
    draw: st.DrawFn, message: Any, field: FieldDescriptor, known: tuple[str, ...], depth: int
) -> None:
    target = getattr(message, field.name)
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key_field = entry.fields_by_name["key"]
        value_field = entry.fields_by_name["value"]
        for _ in range(draw(st.integers(0, 3))):
            key = draw(_scalar(key_field, known))
            if value_field.message_type is not None:
                _copy(target[key], draw(_message_of(value_field, known, depth + 1)))
            else:
                target[key] = draw(_scalar(value_field, known))
        return
    if field.is_repeated:
        for _ in range(draw(st.integers(0, 3))):
            if entry is not None:
                _copy(target.add(), draw(_message_of(field, known, depth + 1)))
            else:
                target.append(draw(_scalar(field, known)))
        return
    if entry is not None:
        _copy(target, draw(_message_of(field, known, depth + 1)))
        return
    setattr(message, field.name, draw(_scalar(field, known)))


def _copy(target: Any, value: Message) -> None:
    # protobuf refuses a copy nested past its own depth limit: that part stays unset (the
    # over-deep case has its own test, with bytes encoded by hand).
    try:
        target.CopyFrom(value)
    except DecodeError:
        target.Clear()


def _message_of(
    field: FieldDescriptor, known: tuple[str, ...], depth: int
) -> st.SearchStrategy[Message]:
    assert field.message_type is not None
    return messages(field.message_type, known, depth)
