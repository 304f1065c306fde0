"""A container's output on its way to the coordinator: a chunk as soon as LOG_CHUNK bytes are
buffered, else what is buffered once it has gathered for GATHER_S and FLUSH_S have passed since
the last chunk. A line printed after a quiet spell leaves at once, one printed soon after
another at most FLUSH_S later; a job that prints steadily sends a chunk a second, one that
floods sends full chunks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

LOG_CHUNK = 64 * 1024
FLUSH_S = 1.0
GATHER_S = 0.05  # what a job prints in one go (several writes) travels in one chunk
# Past this much unsent output the pump stops reading; the engine keeps the rest in its log.
MAX_BUFFERED = 4 * LOG_CHUNK

Stream = AsyncIterator[tuple[str, bytes]]
# ships one chunk; False once the coordinator keeps no more of the job's log
Send = Callable[[bytes], Awaitable[bool]]


class LogPump:
    """One pass over a container's log stream. The first `skip` bytes of the stream were
    shipped before (by an earlier pass, or before the agent restarted) and are not sent again;
    at most `room` bytes are sent."""

    def __init__(self, stream: Stream, send: Send, *, skip: int, room: int) -> None:
        self.stream = stream
        self.send = send
        self.skip = skip
        self.room = room
        self.coordinator_full = False
        self._buffer = bytearray()
        self._waiting_since = 0.0
        self._last_sent = float("-inf")
        self._seen = 0
        self._ended = False
        self._failure: BaseException | None = None
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()

    async def run(self) -> None:
        """Ship until the stream ends (or the room or the coordinator's bound is used up);
        raises what the stream raised once what was read before is shipped."""
        reader = asyncio.create_task(self._read())
        try:
            while self.room > 0:
                await self._chunk_ready()
                if not self._buffer:
                    break
                chunk = bytes(self._buffer[: min(LOG_CHUNK, self.room)])
                del self._buffer[: len(chunk)]
                self._last_sent = self._waiting_since = self._now()
                self._drained.set()
                self.room -= len(chunk)
                if not await self.send(chunk):
                    self.coordinator_full = True
                    break
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if self._failure is not None and not self.coordinator_full and self.room > 0:
            raise self._failure

    async def _read(self) -> None:
        try:
            async for _stream, data in self.stream:
                start = max(0, self.skip - self._seen)
                self._seen += len(data)
                if start >= len(data):
                    continue
                if not self._buffer:
                    self._waiting_since = self._now()
                    self._wake.set()
                self._buffer += data[start:]
                if len(self._buffer) >= LOG_CHUNK:
                    self._wake.set()
                while len(self._buffer) >= MAX_BUFFERED:
                    self._drained.clear()
                    await self._drained.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - raised by run() after the buffer is shipped
            self._failure = exc
        finally:
            self._ended = True
            self._wake.set()

    async def _chunk_ready(self) -> None:
        """Until a full chunk is buffered, the stream has ended, or buffered bytes are due."""
        while not self._ended and len(self._buffer) < LOG_CHUNK:
            timeout = None
            if self._buffer:
                due = max(self._waiting_since + GATHER_S, self._last_sent + FLUSH_S)
                timeout = due - self._now()
                if timeout <= 0:
                    return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()
