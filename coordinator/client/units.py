"""Exact parsing of the sizes, durations and CPU amounts people type, and their display.

Everything is integer arithmetic on the digits as typed, so "1.5GiB" is exactly
1610612736 bytes and "0.5" cores exactly 500 millicores; no float is ever involved.
"""

from __future__ import annotations

import re

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40

SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": KIB,
    "mib": MIB,
    "gib": GIB,
    "tib": TIB,
}
DURATION_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
MAX_TEXT = 40
MAX_CORES_DECIMALS = 3

_DECIMAL = r"([0-9]+)(?:\.([0-9]+))?"
_SIZE = re.compile(_DECIMAL + r"\s*([A-Za-z]*)")
_DURATION_PART = re.compile(r"([0-9]+)([dhms])")
_CORES = re.compile(_DECIMAL)
_DIGITS = re.compile(r"[0-9]+")


class UnitError(ValueError):
    """Text is not a size, duration or CPU amount; the message is one sentence for people."""


def _scaled(whole: str, fraction: str | None, scale: int) -> tuple[int, bool]:
    """`whole.fraction × scale` as an int, and whether that was exact."""
    fraction = fraction or ""
    numerator = int(whole + fraction) * scale
    denominator = 10 ** len(fraction)
    return numerator // denominator, numerator % denominator == 0


def _check_length(text: str, what: str) -> None:
    if len(text) > MAX_TEXT:
        raise UnitError(f"{what} {text[:MAX_TEXT]!r}… is longer than {MAX_TEXT} characters")


def parse_size(text: str) -> int:
    """Bytes from "40GiB", "1.5 GB", "512MiB", "4096" (plain bytes); units are case-blind."""
    _check_length(text, "size")
    match = _SIZE.fullmatch(text.strip())
    if match is None or match.group(3).lower() not in SIZE_UNITS:
        raise UnitError(
            f"{text!r} is not a size; write a number and a unit, like 40GiB, 512MiB or 1.5TB "
            "(units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB; no unit means bytes)"
        )
    whole, fraction, unit = match.groups()
    size, exact = _scaled(whole, fraction, SIZE_UNITS[unit.lower()])
    if not exact:
        raise UnitError(f"{text!r} is not a whole number of bytes")
    if size <= 0:
        raise UnitError(f"size {text!r} must be more than zero")
    return size


def parse_duration(text: str) -> int:
    """Seconds from "90s", "30m", "2h", "1d", "1h30m", or a plain number of seconds."""
    _check_length(text, "duration")
    text = text.strip()
    if _DIGITS.fullmatch(text):
        seconds = int(text)
    else:
        parts = _DURATION_PART.findall(text)
        units = [unit for _, unit in parts]
        order = list(DURATION_UNITS)
        if (
            not parts
            or "".join(n + u for n, u in parts) != text
            or units != sorted(set(units), key=order.index)
        ):
            raise UnitError(
                f"{text!r} is not a duration; write it like 90s, 30m, 2h, 1d or 1h30m "
                "(units d, h, m, s, largest first, each at most once)"
            )
        seconds = sum(int(n) * DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise UnitError(f"duration {text!r} must be longer than zero")
    return seconds


def parse_cores(text: str) -> int:
    """Thousandths of a CPU core from a decimal number of cores: "8" → 8000, "0.5" → 500."""
    _check_length(text, "CPU amount")
    match = _CORES.fullmatch(text.strip())
    if match is None:
        raise UnitError(f"{text!r} is not a number of CPU cores; write it like 8 or 0.5")
    whole, fraction = match.groups()
    if fraction is not None and len(fraction.rstrip("0")) > MAX_CORES_DECIMALS:
        raise UnitError(
            f"{text!r} has more than {MAX_CORES_DECIMALS} decimals "
            "(the smallest step is a thousandth of a core)"
        )
    milli, _ = _scaled(whole, fraction, 1000)
    if milli <= 0:
        raise UnitError(f"CPU amount {text!r} must be more than zero")
    return milli


def format_size(size: int) -> str:
    """Bytes for people in the largest binary unit, one decimal where needed (display only)."""
    for unit, scale in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale:
            tenths = size * 10 // scale
            whole, tenth = divmod(tenths, 10)
            return f"{whole} {unit}" if tenth == 0 else f"{whole}.{tenth} {unit}"
    return f"{size} B"


def format_duration(seconds: int) -> str:
    """Seconds as "1h30m", the form `parse_duration` reads back."""
    if seconds <= 0:
        return f"{seconds}s"
    out = []
    for unit, scale in DURATION_UNITS.items():
        count, seconds = divmod(seconds, scale)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def format_cores(milli: int) -> str:
    """Millicores as a decimal number of cores: 500 → "0.5"."""
    whole, rest = divmod(milli, 1000)
    return str(whole) if rest == 0 else f"{whole}.{rest:03d}".rstrip("0")
