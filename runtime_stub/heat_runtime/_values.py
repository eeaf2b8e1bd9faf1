"""google.protobuf.Value/Struct <-> plain Python values.

JSON numbers travel as doubles; whole numbers come back as ``int`` so a processor sees the
``3`` it was configured with, not ``3.0``. Going out, only what JSON can hold exactly is taken:
dict (str keys), list/tuple, str, int (within ±2**53), finite float, bool and None; numbers of
other kinds that are integers or reals (``numbers.Integral``/``numbers.Real``) and NumPy's
scalars (what pandas' ``df[col].sum()`` returns) count as the Python number they stand for.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Final

from google.protobuf import struct_pb2

__all__ = ["NotJsonable", "struct_to_dict", "to_python", "to_struct", "to_value"]

# Doubles hold every integer up to 2**53 exactly; beyond that a JSON number changes value.
_EXACT_INT: Final = 2**53
# protobuf refuses to parse Values nested deeper than its recursion limit (100).
_MAX_DEPTH: Final = 64


class NotJsonable(ValueError):
    """A value cannot be carried as JSON; ``path`` says where (``outputs['rows'][2]``)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path
        self.problem = problem


def to_python(value: struct_pb2.Value) -> Any:
    """The plain Python value of a Value; whole-number doubles become ``int``."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [to_python(item) for item in value.list_value.values]
    return None


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a dict of plain values."""
    return {key: to_python(item) for key, item in message.fields.items()}


def to_value(obj: Any, path: str = "value") -> struct_pb2.Value:
    """``obj`` as a Value; NotJsonable names the first part JSON cannot hold exactly."""
    value = struct_pb2.Value()
    _fill(value, obj, path, 0)
    return value


def to_struct(obj: Mapping[str, Any], path: str = "value") -> struct_pb2.Struct:
    """A mapping as a Struct; NotJsonable as for to_value."""
    message = struct_pb2.Struct()
    for key, item in obj.items():
        if not isinstance(key, str):
            raise NotJsonable(path, f"has the key {key!r}, which is not a string")
        _fill(message.fields[key], item, f"{path}[{key!r}]", 1)
    return message


def _fill(target: struct_pb2.Value, obj: Any, path: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise NotJsonable(path, f"is nested more than {_MAX_DEPTH} levels deep")
    if obj is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(obj, bool):
        target.bool_value = obj
    elif isinstance(obj, int):
        if abs(obj) > _EXACT_INT:
            raise NotJsonable(
                path,
                f"is the integer {obj}, beyond ±2**53, which a JSON number (a double) cannot"
                " hold exactly; return it as a string",
            )
        target.number_value = obj
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise NotJsonable(path, f"is {obj}, which JSON cannot represent")
        target.number_value = obj
    elif isinstance(obj, str):
        target.string_value = obj
    elif isinstance(obj, Mapping):
        target.struct_value.SetInParent()  # an empty dict is still a struct, not null
        fields = target.struct_value.fields
        for key, item in obj.items():
            if not isinstance(key, str):
                raise NotJsonable(path, f"has the key {key!r}, which is not a string")
            _fill(fields[key], item, f"{path}[{key!r}]", depth + 1)
    elif isinstance(obj, list | tuple):
        target.list_value.SetInParent()
        values = target.list_value.values
        for index, item in enumerate(obj):
            _fill(values.add(), item, f"{path}[{index}]", depth + 1)
    elif _is_numpy_scalar(obj):
        _fill(target, obj.item(), path, depth)
    elif isinstance(obj, numbers.Integral):
        _fill(target, int(obj), path, depth)
    elif isinstance(obj, numbers.Real):
        _fill(target, float(obj), path, depth)
    else:
        raise NotJsonable(
            path,
            f"is a {type(obj).__name__}; use only dict, list, str, int, float, bool or None",
        )


def _is_numpy_scalar(obj: Any) -> bool:
    """A NumPy scalar (numpy.int64, numpy.bool_, ...), told without importing NumPy."""
    return type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0
