"""How violations word what they show: values and messages bounded, lists shortened.

Values are echoed back in descriptions; a megabyte of garbage must not be.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from scheduler.domain.errors import FieldViolation

_SHOWN_MAX: Final = 80
_MESSAGE_MAX: Final = 300
_NAMES_SHOWN: Final = 10


def too_long(field: str, length: int, limit: int, advice: str) -> FieldViolation:
    return FieldViolation(
        field, f"is {length} characters long, more than the {limit} accepted; {advice}"
    )


def shown(value: str) -> str:
    if len(value) > _SHOWN_MAX:
        return repr(value[: _SHOWN_MAX - 1] + "…")
    return repr(value)


def bounded(message: str) -> str:
    if len(message) > _MESSAGE_MAX:
        return message[: _MESSAGE_MAX - 1] + "…"
    return message


def joined(names: Sequence[str]) -> str:
    text = ", ".join(names[:_NAMES_SHOWN])
    if len(names) > _NAMES_SHOWN:
        return f"{text}, … {len(names) - _NAMES_SHOWN} more"
    return text
