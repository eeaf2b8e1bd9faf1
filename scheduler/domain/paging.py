"""Keyset paging: opaque page tokens that name the last key of the previous page."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from scheduler.domain.errors import FieldViolation, InvalidArgument
from scheduler.domain.limits import Limits

T = TypeVar("T")
_PREFIX = "k1:"


@dataclass(frozen=True, slots=True)
class PageRequest:
    size: int
    after: str

    @classmethod
    def parse(cls, page_size: int, page_token: str, limits: Limits) -> PageRequest:
        violations = []
        if page_size < 0 or page_size > limits.max_page_size:
            violations.append(
                FieldViolation(
                    "page_size",
                    f"must be between 0 and {limits.max_page_size} "
                    f"(0 means {limits.default_page_size}); got {page_size}",
                )
            )
        after = ""
        if page_token:
            try:
                raw = base64.urlsafe_b64decode(page_token.encode()).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raw = ""
            if not raw.startswith(_PREFIX):
                violations.append(
                    FieldViolation(
                        "page_token", "is not a token from a previous page; leave it empty to start"
                    )
                )
            after = raw.removeprefix(_PREFIX)
        if violations:
            raise InvalidArgument(violations)
        return cls(page_size or limits.default_page_size, after)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_token: str

    @classmethod
    def of(cls, rows: Sequence[T], size: int, key: Callable[[T], str]) -> Page[T]:
        """``rows`` holds up to ``size + 1`` items: the extra one says a next page exists."""
        items = list(rows[:size])
        more = len(rows) > size and items
        token = ""
        if more:
            token = base64.urlsafe_b64encode((_PREFIX + key(items[-1])).encode()).decode()
        return cls(items, token)
