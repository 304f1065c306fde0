"""A job's secret values never reach its stored log, even split across chunks (live logs ship
whatever a second gathered) or across the rows a log is kept in; offsets hold."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.jobs.log_masking import LogMasker, mask
from coordinator.jobs.logs import COALESCE_BYTES, JobLogs
from coordinator.storage import Database

SECRET = "hf_SuperSecretToken"


def _masked_stream(chunks: list[bytes], secrets: list[str]) -> bytes:
    """What is stored after the chunks arrive in turn, rewrites applied."""
    masker, stored = LogMasker(), bytearray()
    for chunk in chunks:
        masked = masker.mask("job", len(stored), chunk, secrets)
        if masked.rewrite:
            stored[masked.rewrite_at : masked.rewrite_at + len(masked.rewrite)] = masked.rewrite
        stored += masked.chunk
    return bytes(stored)


@settings(max_examples=300, deadline=None)
@given(
    before=st.binary(max_size=40),
    after=st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=6),
)
def test_a_secret_cut_anywhere_is_stored_masked_and_lengths_hold(
    before: bytes, after: bytes, cuts: list[int]
) -> None:
    log = before + b"token=" + SECRET.encode() + b"\n" + after
    points = sorted({min(c, len(log)) for c in cuts})
    chunks = [log[a:b] for a, b in zip([0, *points], [*points, len(log)], strict=True)]
    stored = _masked_stream([c for c in chunks if c], [SECRET])
    assert len(stored) == len(log)
    assert SECRET.encode() not in stored
    assert stored == mask(log, [SECRET.encode()])


def test_without_secrets_nothing_is_kept_or_changed() -> None:
    assert _masked_stream([b"hf_Super", b"SecretToken"], []) == b"hf_SuperSecretToken"


async def test_a_secret_split_across_chunks_and_rows_is_masked_in_the_database(
    database_location: str,
) -> None:
    database = Database(database_location)
    database.start()
    try:
        logs = JobLogs(database, limit_bytes=1 << 20)
        # the secret begins at the end of one row (full at COALESCE_BYTES) and ends in the next
        first = b"x" * (COALESCE_BYTES - 5) + SECRET.encode()[:5]
        await logs.append("job-1", 0, first, [SECRET])
        await logs.append("job-1", len(first), SECRET.encode()[5:12], [SECRET])
        await logs.append("job-1", len(first) + 7, SECRET.encode()[12:] + b"\ndone\n", [SECRET])
        rows = await database.run(
            lambda db: db.conn.execute(
                'SELECT "offset", data FROM job_logs WHERE job_id = ? ORDER BY "offset"',
                ["job-1"],
            ).fetchall()
        )
        stored = b"".join(bytes(data) for _, data in rows)
        assert len(rows) >= 2, "the test means the secret to cross a row boundary"
        assert SECRET.encode()[:5] not in stored and b"SecretToken" not in stored
        assert stored == b"x" * (COALESCE_BYTES - 5) + b"*" * len(SECRET) + b"\ndone\n"
        data, _ = await logs.read("job-1", 0, 1 << 20)
        assert data == stored
    finally:
        database.close()
