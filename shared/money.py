"""Money in integer micro-yuan (µ¥): exact parsing of yuan strings, formatting, usage amounts."""

from __future__ import annotations

import re

from shared.errors import MoneyError

MICRO_PER_YUAN = 1_000_000
MS_PER_HOUR = 3_600_000
MAX_MICRO_YUAN = 2**63 - 1
_MAX_TEXT = 40
_YUAN = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")


def parse_yuan(text: str, *, allow_negative: bool = False, field: str = "amount") -> int:
    """Parse a plain decimal yuan string ("12.5", "0.000001") into integer micro-yuan."""
    if not isinstance(text, str):
        raise MoneyError(f'{field} must be a decimal string of yuan, like "12.50"')
    if len(text) > _MAX_TEXT:
        raise MoneyError(f"{field} is longer than {_MAX_TEXT} characters")
    match = _YUAN.fullmatch(text)
    if match is None:
        raise MoneyError(
            f"{field} {text!r} is not a plain decimal number of yuan "
            "(digits, an optional '.', up to 6 decimals; no signs, spaces or exponents)"
        )
    sign, whole, fraction = match.groups()
    fraction = fraction or ""
    if len(fraction) > 6:
        raise MoneyError(f"{field} {text!r} has more than 6 decimals (1 µ¥ is 0.000001 yuan)")
    micro = int(whole) * MICRO_PER_YUAN + int(fraction.ljust(6, "0"))
    if sign:
        if not allow_negative:
            raise MoneyError(f"{field} {text!r} must not be negative")
        micro = -micro
    if abs(micro) > MAX_MICRO_YUAN:
        raise MoneyError(f"{field} {text!r} is too large")
    return micro


def format_yuan(micro: int) -> str:
    """Micro-yuan as yuan for people: at least two decimals, more only where needed."""
    if type(micro) is not int:
        raise MoneyError("an amount in micro-yuan must be an int")
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), MICRO_PER_YUAN)
    digits = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}"


def format_money(micro: int) -> str:
    """Micro-yuan as people read money: "¥1,000,000,000.00", "-¥12.50", "¥0.000001" — the
    yuan sign, thousands separators, two decimals or as many more as the amount needs. The one
    form every command shows (µ¥ integers only in `--json`)."""
    if type(micro) is not int:
        raise MoneyError("an amount in micro-yuan must be an int")
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), MICRO_PER_YUAN)
    digits = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}¥{whole:,}.{digits}"


def usage_amount(gpu_ms: int, price_per_gpu_hour: int) -> int:
    """What `gpu_ms` GPU-milliseconds cost at a price in µ¥ per GPU-hour, rounded down."""
    if gpu_ms < 0 or price_per_gpu_hour < 0:
        raise MoneyError("GPU time and price must not be negative")
    return gpu_ms * price_per_gpu_hour // MS_PER_HOUR
