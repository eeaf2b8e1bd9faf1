"""Kubernetes quantities: CPU and memory limits, parsed exactly."""

from __future__ import annotations

import decimal
import re
from typing import Final

from scheduler.domain.errors import FieldViolation
from scheduler.domain.limits import QUANTITY_EXPONENT_MAX, QUANTITY_MAX_LENGTH
from scheduler.domain.validation.wording import shown, too_long

# ASCII digits only: Decimal() would happily accept Arabic-Indic digits, Kubernetes would not.
_QUANTITY: Final = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<decimal>[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?"
)
_BINARY_MULTIPLIER: Final = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_DECIMAL_EXPONENT: Final = {
    "n": -9,
    "u": -6,
    "m": -3,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
# Kubernetes caps larger quantities silently; reject them so the stored value is the real one.
_QUANTITY_MAX: Final = decimal.Decimal(2**63 - 1)
_CPU_MIN: Final = decimal.Decimal("0.001")
_CPU_EXAMPLES: Final = "500m, 1, 2.5"
_MEMORY_EXAMPLES: Final = "512Mi, 1Gi, 100M"


def parse_quantity(value: str) -> decimal.Decimal:
    """The exact value of a Kubernetes resource.Quantity; ValueError when it is not one."""
    match = _QUANTITY.fullmatch(value)
    if match is None:
        raise ValueError(f"{shown(value)} is not a Kubernetes quantity")
    number = match["number"]
    if match["binary"]:
        # Enough precision that the product is exact: 2**60 has 19 digits.
        with decimal.localcontext(prec=len(number) + 25):
            return decimal.Decimal(number) * _BINARY_MULTIPLIER[match["binary"]]
    exponent = _DECIMAL_EXPONENT[match["decimal"]] if match["decimal"] else 0
    if match["exponent"]:
        exponent = int(match["exponent"])
        if abs(exponent) > QUANTITY_EXPONENT_MAX:
            raise ValueError(f"{shown(value)} has an exponent beyond ±{QUANTITY_EXPONENT_MAX}")
    return decimal.Decimal(f"{number}e{exponent}")


def check_cpu(value: str, field: str) -> list[FieldViolation]:
    """A CPU limit: a positive Kubernetes quantity of at least one millicore."""
    quantity, violations = _positive_quantity(value, field, _CPU_EXAMPLES)
    if quantity is not None and quantity < _CPU_MIN:
        return [
            FieldViolation(
                field, f"{shown(value)} is less than one millicore; use at least 1m, e.g. 100m"
            )
        ]
    return violations


def check_memory(value: str, field: str) -> list[FieldViolation]:
    """A memory limit: a positive Kubernetes quantity that is a whole number of bytes."""
    quantity, violations = _positive_quantity(value, field, _MEMORY_EXAMPLES)
    if quantity is not None and quantity != quantity.to_integral_value():
        return [
            FieldViolation(
                field,
                f"{shown(value)} is not a whole number of bytes; use a byte count or a suffix"
                f" such as {_MEMORY_EXAMPLES}",
            )
        ]
    return violations


def _positive_quantity(
    value: str, field: str, examples: str
) -> tuple[decimal.Decimal | None, list[FieldViolation]]:
    """The parsed quantity when it is acceptable, else the one violation explaining why not."""
    if not value:
        return None, [
            FieldViolation(field, f"is required; use a Kubernetes quantity such as {examples}")
        ]
    if len(value) > QUANTITY_MAX_LENGTH:
        return None, [too_long(field, len(value), QUANTITY_MAX_LENGTH, f"use e.g. {examples}")]
    try:
        quantity = parse_quantity(value)
    except ValueError:
        return None, [
            FieldViolation(
                field,
                f"{shown(value)} is not a Kubernetes quantity; use a number with an optional"
                f" suffix such as {examples}",
            )
        ]
    if quantity <= 0:
        return None, [
            FieldViolation(
                field,
                f"{shown(value)} is not positive; use a quantity above zero such as {examples}",
            )
        ]
    if quantity > _QUANTITY_MAX:
        return None, [
            FieldViolation(
                field,
                f"{shown(value)} exceeds the largest Kubernetes quantity (2^63-1); use a smaller"
                f" one such as {examples}",
            )
        ]
    return quantity, []
