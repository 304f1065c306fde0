"""Job logs as agents ship them: appended at offsets (a retry is harmless), bounded per job."""

from __future__ import annotations

from typing import Any

from coordinator.db import Database
from coordinator.errors import Conflict, Unprocessable

MAX_LOG_CHUNK = 256 * 1024


class JobLogs:
    def __init__(self, database: Database, limit_bytes: int) -> None:
        self.database = database
        self.limit = limit_bytes
        self._sizes: dict[str, int] = {}

    async def size(self, job_id: str) -> int:
        size = self._sizes.get(job_id)
        if size is None:
            size = await self.database.run(lambda db: next(iter(db.query(
                "SELECT COALESCE(SUM(LENGTH(data)), 0) AS n FROM job_logs WHERE job_id = ?",
                [job_id])))["n"])
            self._sizes[job_id] = size
        return size

    async def append(self, job_id: str, offset: Any, data: Any) -> dict[str, Any]:
        if type(offset) is not int or offset < 0 or type(data) is not bytes or len(data) > MAX_LOG_CHUNK:
            raise Unprocessable(
                f"offset must be a non-negative integer and data at most {MAX_LOG_CHUNK} bytes")
        size = await self.size(job_id)
        if offset > size and size < self.limit:
            raise Conflict(f"the log has {size} bytes; send from offset {size}", code="log_gap")
        skip = size - offset
        if skip >= len(data) or size >= self.limit:
            return {"stored_bytes": size, "truncated": size >= self.limit}
        chunk = data[skip:][: self.limit - size]
        self._sizes[job_id] = size + len(chunk)
        await self.database.run(lambda db: db["job_logs"].insert(
            {"job_id": job_id, "offset": size, "data": chunk}))
        stored = size + len(chunk)
        return {"stored_bytes": stored, "truncated": stored >= self.limit}

    async def read(self, job_id: str, offset: int, limit: int) -> tuple[bytes, int]:
        rows = await self.database.run(lambda db: list(db.query(
            "SELECT offset, data FROM job_logs WHERE job_id = ? AND offset + LENGTH(data) > ? "
            "ORDER BY offset", [job_id, offset])))
        out = bytearray()
        for row in rows:
            out += row["data"][max(0, offset - row["offset"]):]
            if len(out) >= limit:
                break
        chunk = bytes(out[:limit])
        return chunk, offset + len(chunk)
