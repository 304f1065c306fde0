"""Exact parsing of the sizes, durations and CPU amounts people type, and their display.

Everything is integer arithmetic on the digits as typed, so "1.5GiB" is exactly
1610612736 bytes, "1.5h" exactly 5400 seconds and "0.5" cores exactly 500 millicores; no
float is ever involved.

Sizes: a unit with an "i" (KiB, Gi) or a bare letter (K, M, G, T, any case) is binary, as
`docker run --memory 64g` and Kubernetes' `64Gi` mean; a unit with "B" and no "i" (KB, GB)
is decimal, SI's. So `64G` is 64 GiB here: what Docker users expect, and 7% more than
Kubernetes' decimal `64G`. A size without a unit is bytes.

Durations: "90m", "1.5h", "2d", "1h30m", or Slurm's clock forms "MM:SS", "HH:MM:SS",
"D-HH", "D-HH:MM", "D-HH:MM:SS". A bare number is refused: Slurm reads it as minutes,
others as seconds, so the unit is asked for instead of guessed.
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
    "k": KIB,
    "m": MIB,
    "g": GIB,
    "t": TIB,
    "ki": KIB,
    "mi": MIB,
    "gi": GIB,
    "ti": TIB,
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
_DURATION_PART = re.compile(r"([0-9]+)(?:\.([0-9]+))?([dhms])")
# Slurm's forms: [D-]HH[:MM[:SS]] with a day, MM:SS or HH:MM:SS without one
_CLOCK = re.compile(
    r"(?:([0-9]+)-([0-9]+)(?::([0-9]+))?(?::([0-9]+))?|([0-9]+):([0-9]+)(?::([0-9]+))?)"
)
_CORES = re.compile(_DECIMAL)
_DIGITS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


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
    """Bytes from "64G", "64GiB", "40Gi", "1.5 GB", "512MiB", "4096" (bytes); case-blind."""
    _check_length(text, "size")
    match = _SIZE.fullmatch(text.strip())
    if match is None or match.group(3).lower() not in SIZE_UNITS:
        raise UnitError(
            f"{text!r} is not a size; write a number and a unit, like 64G, 40GiB or 512MiB "
            "(K, M, G, T, KiB, MiB, GiB, TiB are binary; KB, MB, GB, TB decimal; "
            "no unit means bytes)"
        )
    whole, fraction, unit = match.groups()
    size, exact = _scaled(whole, fraction, SIZE_UNITS[unit.lower()])
    if not exact:
        raise UnitError(f"{text!r} is not a whole number of bytes")
    if size <= 0:
        raise UnitError(f"size {text!r} must be more than zero")
    return size


def _clock_seconds(text: str, match: re.Match[str]) -> int:
    days, d_hours, d_minutes, d_seconds, first, second, third = match.groups()
    if days is not None:
        leading, fields = int(days) * 86_400, [(d_hours, 24, 3600), (d_minutes, 60, 60)]
        fields.append((d_seconds, 60, 1))
    elif third is None:  # MM:SS
        leading, fields = int(first) * 60, [(second, 60, 1)]
    else:  # HH:MM:SS
        leading, fields = int(first) * 3600, [(second, 60, 60), (third, 60, 1)]
    total = leading
    for value, bound, scale in fields:
        if value is None:  # D-HH and D-HH:MM leave the smaller fields out
            continue
        if int(value) >= bound:
            raise UnitError(f"{text!r} is not a duration: {value} must be below {bound}")
        total += int(value) * scale
    return total


def parse_duration(text: str) -> int:
    """Seconds from "90s", "30m", "1.5h", "2d", "1h30m", "1:30:00" or "2-12:00"."""
    _check_length(text, "duration")
    text = text.strip()
    if _DIGITS.fullmatch(text):
        raise UnitError(
            f"duration {text!r} has no unit; add one: {text}s, {text}m, {text}h or {text}d "
            "(or write it as H:MM:SS)"
        )
    clock = _CLOCK.fullmatch(text)
    if clock is not None:
        seconds = _clock_seconds(text, clock)
    else:
        parts = _DURATION_PART.findall(text)
        units = [unit for _, _, unit in parts]
        order = list(DURATION_UNITS)
        if (
            not parts
            or "".join(w + ("." + f if f else "") + u for w, f, u in parts) != text
            or units != sorted(set(units), key=order.index)
        ):
            raise UnitError(
                f"{text!r} is not a duration; write it like 90m, 1.5h, 2d, 1h30m or 1:30:00 "
                "(units d, h, m, s, largest first, each at most once)"
            )
        seconds = 0
        for whole, fraction, unit in parts:
            amount, exact = _scaled(whole, fraction, DURATION_UNITS[unit])
            if not exact:
                raise UnitError(f"duration {text!r} is not a whole number of seconds")
            seconds += amount
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


def format_exact_size(size: int) -> str:
    """Bytes in the largest binary unit that shows them exactly: 64 GiB, 1536 MiB, 100 B."""
    for unit, scale in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
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
