"""Each relayed session as operators see it: a row opened when the session starts and closed
when it ends (who, which job, lease and agent, what kind, when, bytes each way, how it ended)."""

from __future__ import annotations

from typing import Any

from coordinator.storage import Database, Session

COLUMNS = (
    "id",
    "job_id",
    "lease_id",
    "agent_id",
    "enterprise_id",
    "token_hash",
    "kind",
    "detail",
    "started_at_ms",
    "ended_at_ms",
    "bytes_in",
    "bytes_out",
    "exit_code",
    "end_reason",
)
MAX_LISTED = 1000


def record_opened(database: Database, row: dict[str, Any]) -> None:
    names = [name for name in COLUMNS if name in row]
    sql = (
        f"INSERT INTO relay_sessions ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
    )
    values = [row[name] for name in names]
    database.submit(lambda db: db.conn.execute(sql, values))


def record_closed(
    database: Database,
    session_id: str,
    ended_at_ms: int,
    bytes_in: int,
    bytes_out: int,
    exit_code: int | None,
    reason: str,
) -> None:
    values = [ended_at_ms, bytes_in, bytes_out, exit_code, reason, session_id]
    database.submit(
        lambda db: db.conn.execute(
            "UPDATE relay_sessions SET ended_at_ms = ?, bytes_in = ?, bytes_out = ?, "
            "exit_code = ?, end_reason = ? WHERE id = ?",
            values,
        )
    )


def list_sessions(
    db: Session, job_id: str | None = None, enterprise_id: str | None = None
) -> list[dict[str, Any]]:
    """The newest sessions first, of one job or enterprise when given."""
    where, params = [], []
    if job_id is not None:
        where.append("job_id = ?")
        params.append(job_id)
    if enterprise_id is not None:
        where.append("enterprise_id = ?")
        params.append(enterprise_id)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = db.conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM relay_sessions {clause}"
        f"ORDER BY started_at_ms DESC, id LIMIT {MAX_LISTED}",
        params,
    ).fetchall()
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows]
