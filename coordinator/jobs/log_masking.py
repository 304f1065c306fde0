"""A job's secret values masked in its log even where one arrives split across chunks (live
logs ship whatever a second gathered): the masker keeps, in memory only, the last bytes of the
log as they came, masks them again together with the next chunk, and says which stored bytes
must be rewritten when a secret turns out to have begun in them. Masking keeps lengths, so
offsets hold."""

from __future__ import annotations

from dataclasses import dataclass

MIN_MASKED = 4  # shorter secret values would mask ordinary text; they are not looked for
ASTERISK = ord("*")


def mask(data: bytes, secrets: list[bytes]) -> bytes:
    """`data` with every occurrence of a secret value replaced by as many asterisks."""
    for raw in secrets:
        if raw in data:
            data = data.replace(raw, b"*" * len(raw))
    return data


@dataclass(frozen=True)
class Masked:
    """A chunk masked, and the stored bytes before it that must become `rewrite`."""

    chunk: bytes
    rewrite_at: int = 0
    rewrite: bytes = b""


@dataclass
class _Tail:
    at: int  # where in the log the tail begins
    raw: bytes  # as the agent sent it
    stored: bytes  # as it was stored (masked)


class LogMasker:
    def __init__(self) -> None:
        self._tails: dict[str, _Tail] = {}

    def mask(self, job_id: str, at: int, chunk: bytes, secrets: list[str]) -> Masked:
        """Mask `chunk`, to be stored at offset `at` of the job's log."""
        values = [raw for s in secrets if len(raw := s.encode()) >= MIN_MASKED]
        if not values:
            self._tails.pop(job_id, None)
            return Masked(chunk)
        tail = self._tails.get(job_id)
        if tail is None or tail.at + len(tail.raw) != at:
            tail = _Tail(at, b"", b"")
        raw = tail.raw + chunk
        joined = mask(raw, values)
        # what was masked stays masked: the tail may have lost the start of a secret it holds
        before = bytes(s if s == ASTERISK else j for s, j in zip(tail.stored, joined, strict=False))
        masked = joined[len(tail.raw) :]
        keep = max(len(v) for v in values) - 1
        start = max(0, len(raw) - keep)
        self._tails[job_id] = _Tail(tail.at + start, raw[start:], (before + masked)[start:])
        if before != tail.stored:
            return Masked(masked, tail.at, before)
        return Masked(masked)

    def forget(self, job_id: str) -> None:
        self._tails.pop(job_id, None)
