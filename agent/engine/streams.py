"""The engine's streams: an image pull's progress lines and a container's multiplexed logs."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Protocol

from agent.engine.errors import EngineError, ImageTooLarge, pull_error

_MAX_LOG_FRAME = 16 << 20


def split_image_ref(ref: str) -> tuple[str, str]:
    """`repo[:tag]` or `repo@digest` as the (fromImage, tag) pair of a pull; the tag defaults to
    latest, since a pull without a tag fetches every tag of the repository."""
    if "@" in ref:
        return ref, ""
    name, sep, tag = ref.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return ref, "latest"


async def follow_pull(
    ref: str,
    lines: AsyncIterable[bytes],
    max_bytes: int | None,
    progress: Callable[[str], object] | None,
) -> None:
    """Read a pull's progress lines (JSON, one per line) until the engine ends them; raise on
    an error line or once the layer sizes seen add up to more than max_bytes."""
    sizes: dict[str, int] = {}
    async for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("error") or event.get("errorDetail"):
            detail = event.get("errorDetail") or {}
            raise pull_error(ref, str(event.get("error") or detail.get("message")))
        layer = str(event.get("id") or "")
        detail = event.get("progressDetail") or {}
        seen = max(int(detail.get("total") or 0), int(detail.get("current") or 0))
        if layer and seen:
            sizes[layer] = max(sizes.get(layer, 0), seen)
        if max_bytes is not None and sum(sizes.values()) > max_bytes:
            raise ImageTooLarge(
                f"pulling image {ref} stopped: its layers exceed the limit of {max_bytes} bytes"
            )
        if progress is not None:
            words = [layer, str(event.get("status") or ""), str(event.get("progress") or "")]
            progress(" ".join(word for word in words if word))


_STREAMS = {0: "stdin", 1: "stdout", 2: "stderr", 3: "system"}


class _Reader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


async def demultiplex(content: _Reader) -> AsyncIterator[tuple[str, bytes]]:
    """Docker's multiplexed stream: frames of an 8-byte header (stream, 0, 0, 0, big-endian
    uint32 size) and a payload. A stream ending between frames is a clean end."""
    while True:
        try:
            header = await content.readexactly(8)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise EngineError("a container log stream ended inside a frame header") from exc
            return
        kind, size = header[0], struct.unpack(">I", header[4:])[0]
        if kind not in _STREAMS or header[1:4] != b"\0\0\0" or size > _MAX_LOG_FRAME:
            raise EngineError(f"a container log stream has a malformed frame header {header!r}")
        try:
            payload = await content.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise EngineError("a container log stream ended inside a frame") from exc
        yield _STREAMS[kind], payload
