"""Amounts as billing takes them in (whole micro-yuan within bounds) and writes them in its
sentences."""

from __future__ import annotations

from coordinator.billing.errors import InvalidTransfer
from shared.money import format_money

MAX_AMOUNT = 2**62


def check_amount(value: object, name: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if type(value) is not int or not low <= value <= MAX_AMOUNT:
        raise InvalidTransfer(
            f"{name} must be an integer number of micro-yuan from {low} to {MAX_AMOUNT}, "
            f"not {value!r}"
        )
    return value


def yuan(micro: int) -> str:
    """An amount in a sentence people read, the one way money is shown (`format_money`)."""
    return format_money(micro)
