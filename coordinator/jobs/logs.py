"""Job logs as agents ship them: appended at offsets (a retry is harmless), bounded per job.

Small chunks are coalesced: a chunk joins the job's last row while that row is smaller than
COALESCE_BYTES, so a job's log is at most limit / COALESCE_BYTES + 1 rows however finely an
agent cuts it. Reads fetch only the rows their `limit` reaches, trimmed in SQL. Secret env
values of the job are masked (same length, so offsets hold) before anything is stored.
"""

from __future__ import annotations

from typing import Any

from coordinator.errors import Conflict
from coordinator.jobs.log_masking import LogMasker, Masked
from coordinator.storage import Database

# Live logs send most chunks small (a second's output) and each joins by rewriting its row:
# rows kept this short cost little to rewrite, and a 1 MiB log is still at most 129 rows.
COALESCE_BYTES = 8 * 1024


class JobLogs:
    def __init__(self, database: Database, limit_bytes: int) -> None:
        self.database = database
        self.limit = limit_bytes
        self._sizes: dict[str, int] = {}
        # job -> (offset, length) of its last row, while that row may still grow
        self._last: dict[str, tuple[int, int]] = {}
        self._masker = LogMasker()

    async def size(self, job_id: str) -> int:
        cached = self._sizes.get(job_id)
        if cached is None:

            def read(db: Any) -> tuple[int, tuple[int, int] | None]:
                total = db.conn.execute(
                    "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM job_logs WHERE job_id = ?", [job_id]
                ).fetchone()[0]
                last = db.conn.execute(
                    'SELECT "offset", LENGTH(data) FROM job_logs WHERE job_id = ? '
                    'ORDER BY "offset" DESC LIMIT 1',
                    [job_id],
                ).fetchone()
                return int(total), (int(last[0]), int(last[1])) if last else None

            total, last = await self.database.run(read)
            self._sizes[job_id] = total
            if last is not None and last[1] < COALESCE_BYTES:
                self._last[job_id] = last
            return total
        return cached

    async def append(
        self,
        job_id: str,
        offset: int,
        data: bytes,
        secrets: list[str] | None = None,
        base: int = 0,
    ) -> dict[str, Any]:
        """Store a chunk the door checked (ap.LogChunk: offset ≥ 0, data within the limit) at
        `offset` of a lease whose output begins at `base` of the job's log; the answer counts
        in the lease's offsets."""
        size = await self.size(job_id)
        offset += base
        if offset > size and size < self.limit:
            mine = size - base
            raise Conflict(f"the log has {mine} bytes; send from offset {mine}", code="log_gap")
        skip = size - offset
        if skip >= len(data) or size >= self.limit:
            return {"stored_bytes": max(0, size - base), "truncated": size >= self.limit}
        masked = self._masker.mask(job_id, size, data[skip:][: self.limit - size], secrets or [])
        chunk = masked.chunk
        stored = size + len(chunk)
        self._sizes[job_id] = stored
        last = self._last.get(job_id)
        if last is not None and last[0] + last[1] == size and last[1] < COALESCE_BYTES:
            row_offset, row_length = last[0], last[1] + len(chunk)

            def write(db: Any) -> None:
                _rewrite(db, job_id, masked)
                # joined here, not with SQL's ||, which makes text of the bytes
                (data,) = db.conn.execute(
                    'SELECT data FROM job_logs WHERE job_id = ? AND "offset" = ?',
                    [job_id, row_offset],
                ).fetchone()
                db.conn.execute(
                    'UPDATE job_logs SET data = ? WHERE job_id = ? AND "offset" = ?',
                    [bytes(data) + chunk, job_id, row_offset],
                )

        else:
            row_offset, row_length = size, len(chunk)

            def write(db: Any) -> None:
                _rewrite(db, job_id, masked)
                db.table("job_logs").insert({"job_id": job_id, "offset": size, "data": chunk})

        await self.database.run(write)
        if row_length < COALESCE_BYTES:
            self._last[job_id] = (row_offset, row_length)
        else:
            self._last.pop(job_id, None)
        return {"stored_bytes": stored - base, "truncated": stored >= self.limit}

    async def read(self, job_id: str, offset: int, limit: int) -> tuple[bytes, int]:
        end = offset + limit
        rows = await self.database.run(
            lambda db: db.conn.execute(
                'SELECT "offset", substr(data, '
                'CAST(CASE WHEN "offset" < ? THEN ? - "offset" + 1 ELSE 1 END AS INTEGER), '
                'CAST(? - CASE WHEN "offset" > ? THEN "offset" ELSE ? END AS INTEGER)) '
                'FROM job_logs WHERE job_id = ? AND "offset" + LENGTH(data) > ? '
                'AND "offset" < ? ORDER BY "offset"',
                [offset, offset, end, offset, offset, job_id, offset, end],
            ).fetchall()
        )
        out = b"".join(bytes(row[1]) for row in rows)[:limit]
        return out, offset + len(out)

    def forget(self, job_id: str) -> None:
        self._sizes.pop(job_id, None)
        self._last.pop(job_id, None)
        self._masker.forget(job_id)


def _rewrite(db: Any, job_id: str, masked: Masked) -> None:
    """Put `masked.rewrite` over the stored bytes at `masked.rewrite_at` (a secret that began in
    them), in whichever rows hold them."""
    if not masked.rewrite:
        return
    start, end = masked.rewrite_at, masked.rewrite_at + len(masked.rewrite)
    rows = db.conn.execute(
        'SELECT "offset", data FROM job_logs WHERE job_id = ? AND "offset" < ? '
        'AND "offset" + LENGTH(data) > ?',
        [job_id, end, start],
    ).fetchall()
    for row_offset, data in rows:
        data = bytearray(bytes(data))
        low, high = max(start, row_offset), min(end, row_offset + len(data))
        data[low - row_offset : high - row_offset] = masked.rewrite[low - start : high - start]
        db.conn.execute(
            'UPDATE job_logs SET data = ? WHERE job_id = ? AND "offset" = ?',
            [bytes(data), job_id, row_offset],
        )
