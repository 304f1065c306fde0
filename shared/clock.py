"""The one clock: wall-clock time as integer milliseconds since the Unix epoch."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch, the unit of every `_ms` field."""
    return time.time_ns() // 1_000_000
