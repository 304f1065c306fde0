"""Statement periods: calendar months (UTC) named YYYY-MM, their bounds in ms, and whether one
is closed. Usage belongs to the month in which its receipt was accepted."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from coordinator.billing.errors import BadPeriod
from coordinator.storage import Session

DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PERIOD = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")


def utc(now_ms: int) -> datetime:
    """The moment `now_ms` as a UTC datetime."""
    return _EPOCH + timedelta(milliseconds=now_ms)


def _ms(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def period_of(now_ms: int) -> str:
    """The statement period (YYYY-MM, UTC) a moment belongs to."""
    moment = utc(now_ms)
    return f"{moment.year:04d}-{moment.month:02d}"


def period_bounds(period: str) -> tuple[int, int]:
    """[start, end) of a period in ms; `BadPeriod` unless it is written YYYY-MM."""
    match = _PERIOD.fullmatch(period) if isinstance(period, str) else None
    if match is None:
        raise BadPeriod(f"a statement period is written YYYY-MM, like 2026-11, not {period!r}")
    year, month = int(match[1]), int(match[2])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return _ms(start), _ms(end)


def date_text(ms: int) -> str:
    """The UTC date of a moment, YYYY-MM-DD."""
    return utc(ms).strftime("%Y-%m-%d")


def is_closed(db: Session, period: str) -> bool:
    return (
        db.conn.execute("SELECT 1 FROM ledger_period_closes WHERE period = ?", [period]).fetchone()
        is not None
    )
