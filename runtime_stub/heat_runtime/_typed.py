"""Typed hooks: a hook whose ``inputs`` or ``config`` is annotated with a dataclass (or a
pydantic model, when pydantic is installed) gets an instance of it, checked field by field.

``converter(tp)`` builds, once per registration, a function that turns the plain value a task
carries into ``tp``; it raises ``FieldError`` naming the first field that does not fit
(``config.threshold``, ``inputs.file``, ``config.rows[2].name``). A type the checker cannot
check raises TypeError at registration, not in the middle of a task.

Dataclass fields may be: Any/object, None, bool, int, float (ints accepted), str, bytes (bytes,
bytearray, memoryview, or a readable binary file, read whole), ``typing.BinaryIO``/``IO[bytes]``
(a readable file; bytes are wrapped in ``io.BytesIO``), Literal, Enum, X | Y and Optional,
list/Sequence, tuple (``tuple[X, ...]`` or fixed), set/frozenset, dict/Mapping with str keys,
and nested dataclasses. Unknown keys are refused (a typo would otherwise fall back to a
default silently); missing fields without a default are refused.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import io
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["Converter", "FieldError", "converter", "is_typed_class", "path_of"]

Converter = Callable[[Any, str], Any]
"""Turns a plain value into the declared type; the second argument is its path for errors."""

_BINARY_FILES: Final = (typing.BinaryIO, typing.IO[bytes])
_MAX_SHOWN: Final = 60


class FieldError(ValueError):
    """A value does not fit the declared type; ``path`` names the field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def path_of(parent: str, key: object) -> str:
    """``config.threshold`` for identifiers, ``inputs['csv-in']`` for other keys."""
    if isinstance(key, str) and key.isidentifier():
        return f"{parent}.{key}"
    return f"{parent}[{key!r}]"


def is_typed_class(tp: object) -> bool:
    """Whether a hook annotated with ``tp`` gets converted values: a dataclass or a pydantic
    model class."""
    return isinstance(tp, type) and (dataclasses.is_dataclass(tp) or _is_pydantic_model(tp))


def converter(tp: type) -> Converter:
    """The converter of a dataclass or pydantic model class; TypeError for anything else or
    for a field type the checker cannot check."""
    if _is_pydantic_model(tp):
        return _pydantic(tp)
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, {})
    raise TypeError(f"{tp!r} is neither a dataclass nor a pydantic model")


# --- pydantic ------------------------------------------------------------------------------------


def _is_pydantic_model(tp: object) -> bool:
    pydantic = sys.modules.get("pydantic")  # never imported here: a model's module did it
    base = getattr(pydantic, "BaseModel", None)
    return isinstance(tp, type) and isinstance(base, type) and issubclass(tp, base)


def _pydantic(model: type) -> Converter:
    import pydantic

    validate: Callable[[Any], Any] = model.model_validate  # type: ignore[attr-defined]

    def convert(value: Any, path: str) -> Any:
        try:
            return validate(value)
        except pydantic.ValidationError as error:
            first = error.errors()[0]
            where = path
            for part in first.get("loc", ()):
                where = f"{where}[{part}]" if isinstance(part, int) else path_of(where, part)
            raise FieldError(where, str(first.get("msg", "is not valid"))) from None

    return convert


# --- dataclasses ---------------------------------------------------------------------------------


def _dataclass(cls: type, building: dict[type, Converter]) -> Converter:
    if cls in building:
        return building[cls]  # a recursive dataclass: the converter being built
    fields: dict[str, Converter] = {}
    required: list[str] = []

    def convert(value: Any, path: str) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise FieldError(
                path, f"expected an object with the fields of {cls.__name__}, {_got(value)}"
            )
        for key in value:
            if key not in fields:
                known = ", ".join(fields) or "none"
                raise FieldError(
                    path_of(path, key), f"is not a field of {cls.__name__} (its fields: {known})"
                )
        for name in required:
            if name not in value:
                raise FieldError(path_of(path, name), f"is required by {cls.__name__}")
        arguments = {key: fields[key](item, path_of(path, key)) for key, item in value.items()}
        try:
            return cls(**arguments)
        except (TypeError, ValueError) as error:  # from __post_init__
            raise FieldError(path, f"{cls.__name__}: {error}") from None

    building[cls] = convert
    try:
        hints = typing.get_type_hints(cls)
    except Exception as error:
        raise TypeError(
            f"cannot resolve the field types of {cls.__name__} ({type(error).__name__}: {error});"
            " define the types its fields name at module level"
        ) from None
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        try:
            fields[field.name] = _of(hints.get(field.name, Any), building)
        except TypeError as error:
            raise TypeError(f"field {field.name!r} of {cls.__name__}: {error}") from None
        no_default = field.default is dataclasses.MISSING
        if no_default and field.default_factory is dataclasses.MISSING:
            required.append(field.name)
    return convert


def _of(tp: Any, building: dict[type, Converter]) -> Converter:
    if tp is Any or tp is object:
        return _as_is
    if tp is None or tp is type(None):
        return _none
    if tp in _BINARY_FILES:
        return _binary_file
    origin = typing.get_origin(tp)
    arguments = typing.get_args(tp)
    if origin is typing.Annotated:
        return _of(arguments[0], building)
    if origin is typing.Literal:
        return _literal(arguments)
    if origin is typing.Union or origin is types.UnionType:
        return _union([_of(arg, building) for arg in arguments], arguments)
    if origin in (list, collections.abc.Sequence, collections.abc.MutableSequence):
        return _list(_of(arguments[0] if arguments else Any, building))
    if origin in (set, frozenset, collections.abc.Set, collections.abc.MutableSet):
        return _set(_of(arguments[0] if arguments else Any, building), origin is frozenset)
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return _tuple_of(_of(arguments[0], building))
        return _tuple_fixed([_of(arg, building) for arg in arguments])
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        key, value = arguments if arguments else (str, Any)
        if key is not str and key is not Any:
            raise TypeError(f"{_name(tp)}: JSON object keys are text; use dict[str, ...]")
        return _dict(_of(value, building))
    if origin is not None:
        raise TypeError(f"{_name(tp)} is not a type the runtime can check; {_SUPPORTED}")
    if isinstance(tp, type):
        if _is_pydantic_model(tp):
            return _pydantic(tp)
        if dataclasses.is_dataclass(tp):
            return _dataclass(tp, building)
        if issubclass(tp, enum.Enum):
            return _enum(tp)
        simple = _SIMPLE.get(tp)
        if simple is not None:
            return simple
        if tp in (list, tuple, dict, set, frozenset):
            return _of(_BARE[tp], building)
    raise TypeError(f"{_name(tp)} is not a type the runtime can check; {_SUPPORTED}")


_SUPPORTED: Final = (
    "use Any, None, bool, int, float, str, bytes, BinaryIO, Literal, an Enum, unions,"
    " list/tuple/set/dict of those, a dataclass or a pydantic model"
)


def _as_is(value: Any, path: str) -> Any:
    return value


def _none(value: Any, path: str) -> None:
    if value is not None:
        raise FieldError(path, f"expected null, {_got(value)}")


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise FieldError(path, f"expected true or false, {_got(value)}")
    return value


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise FieldError(path, f"expected a whole number, {_got(value)}")
    return value


def _float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(path, f"expected a number, {_got(value)}")
    return float(value)


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise FieldError(path, f"expected text, {_got(value)}")
    return value


def _bytes(value: Any, path: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if _is_file(value):
        data = value.read()
        if isinstance(data, bytes | bytearray | memoryview):
            return bytes(data)
        raise FieldError(path, f"expected bytes or a binary file; its read() gave {_got(data)}")
    raise FieldError(path, f"expected bytes or a binary file, {_got(value)}")


def _binary_file(value: Any, path: str) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return io.BytesIO(value)
    if _is_file(value):
        return value
    raise FieldError(path, f"expected a binary file or bytes, {_got(value)}")


_SIMPLE: Final[dict[type, Converter]] = {
    bool: _bool,
    int: _int,
    float: _float,
    str: _str,
    bytes: _bytes,
}
_BARE: Final[dict[type, Any]] = {
    list: list[Any],
    tuple: tuple[Any, ...],
    dict: dict[str, Any],
    set: set[Any],
    frozenset: frozenset[Any],
}


def _literal(choices: tuple[Any, ...]) -> Converter:
    def convert(value: Any, path: str) -> Any:
        for choice in choices:
            if value == choice and type(value) is type(choice):
                return choice
        shown = ", ".join(repr(choice) for choice in choices)
        raise FieldError(path, f"expected one of {shown}, {_got(value)}")

    return convert


def _enum(cls: type[enum.Enum]) -> Converter:
    def convert(value: Any, path: str) -> Any:
        try:
            return cls(value)
        except ValueError:
            shown = ", ".join(repr(member.value) for member in cls)
            raise FieldError(path, f"expected one of {shown}, {_got(value)}") from None

    return convert


def _union(options: list[Converter], types_: tuple[Any, ...]) -> Converter:
    def convert(value: Any, path: str) -> Any:
        problems: list[FieldError] = []
        for option in options:
            try:
                return option(value, path)
            except FieldError as error:
                problems.append(error)
        deepest = max(problems, key=lambda error: len(error.path))
        if deepest.path != path:
            raise deepest  # it got into one option's fields: that option's own complaint
        expected = " or ".join(_name(tp) for tp in types_)
        raise FieldError(path, f"expected {expected}, {_got(value)}")

    return convert


def _items(value: Any, path: str, what: str) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    raise FieldError(path, f"expected {what}, {_got(value)}")


def _list(item: Converter) -> Converter:
    def convert(value: Any, path: str) -> list[Any]:
        return [item(x, f"{path}[{i}]") for i, x in enumerate(_items(value, path, "a list"))]

    return convert


def _set(item: Converter, frozen: bool) -> Converter:
    def convert(value: Any, path: str) -> Any:
        items = value if isinstance(value, set | frozenset) else _items(value, path, "a list")
        made = {item(x, f"{path}[{i}]") for i, x in enumerate(items)}
        return frozenset(made) if frozen else made

    return convert


def _tuple_of(item: Converter) -> Converter:
    def convert(value: Any, path: str) -> tuple[Any, ...]:
        return tuple(item(x, f"{path}[{i}]") for i, x in enumerate(_items(value, path, "a list")))

    return convert


def _tuple_fixed(items: list[Converter]) -> Converter:
    def convert(value: Any, path: str) -> tuple[Any, ...]:
        values = _items(value, path, f"a list of {len(items)}")
        if len(values) != len(items):
            raise FieldError(path, f"expected a list of {len(items)}, got {len(values)} items")
        pairs = enumerate(zip(items, values, strict=True))
        return tuple(item(x, f"{path}[{i}]") for i, (item, x) in pairs)

    return convert


def _dict(item: Converter) -> Converter:
    def convert(value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise FieldError(path, f"expected an object, {_got(value)}")
        return {key: item(x, path_of(path, key)) for key, x in value.items()}

    return convert


def _is_file(value: Any) -> bool:
    return callable(getattr(value, "read", None))


def _got(value: Any) -> str:
    if value is None:
        return "got null"
    shown = repr(value)
    if len(shown) > _MAX_SHOWN:
        shown = shown[: _MAX_SHOWN - 3] + "..."
    return f"got {shown} ({type(value).__name__})"


def _name(tp: Any) -> str:
    if tp is None or tp is type(None):
        return "null"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")
