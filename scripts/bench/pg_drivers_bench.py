"""Benchmark: psycopg 3 against asyncpg doing what the coordinator's writer does on PostgreSQL.

One transaction per batch of N calls (N = 1, 64, 512: a quiet writer, a busy one, the writer's
MAX_BATCH), each call inside its own SAVEPOINT, each call inserting a few receipt-like rows
(a 32-byte bytea key, a ~400-byte bytea, 8 bigints), then COMMIT; rows/s for each way of
sending them:

    coordinator's connection coordinator/storage/postgres.py itself (begin, execute,
                             executemany), from a thread, as the writer calls it
    psycopg executemany      sync, from a thread, plain psycopg in the same calls
                             (default prepare_threshold; psycopg pipelines executemany itself)
    psycopg prepared         the same with every statement prepared at once (prepare_threshold=0)
    psycopg unprepared       the same with none prepared (prepare_threshold=None)
    psycopg VALUES           one multi-row INSERT ... VALUES (...), (...) per call
    psycopg COPY             one binary COPY per call
    psycopg pipeline         the whole transaction in one pipeline (savepoints included)
    asyncpg executemany      from the event loop, nested transactions as savepoints
    asyncpg COPY             copy_records_to_table per call

The PostgreSQL server is a private cluster this bench starts (tests/postgres_cluster.py,
BENCH_SETTINGS), or the server `--db postgresql://...` names (a new database is made there).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import bench_engines
import psycopg

TABLE = "bench_receipts"
COLUMNS = ["digest", "envelope", *(f"n{i}" for i in range(8))]
CREATE = (
    f"CREATE TABLE {TABLE} (digest BYTEA PRIMARY KEY, envelope BYTEA NOT NULL, "
    + ", ".join(f"n{i} BIGINT NOT NULL" for i in range(8))
    + ")"
)
INSERT = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * 10)})"
ASYNCPG_INSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES "
    f"({', '.join(f'${i}' for i in range(1, 11))})"
)
ENVELOPE_BYTES = 400
BATCHES = (1, 64, 512)

Row = tuple[Any, ...]


def make_rows(count: int) -> list[Row]:
    now = time.time_ns() // 1_000_000
    return [(b"", os.urandom(ENVELOPE_BYTES), n, 1, now, now, n, n * 7, 7, 0) for n in range(count)]


class Rows:
    """An endless supply of fresh rows: a new random-looking key each (as a digest is), the
    rest made once, so making them costs every way the same, and little."""

    def __init__(self, per_call: int) -> None:
        self.per_call = per_call
        self.template = make_rows(per_call)
        self.made = 0

    def call(self) -> list[Row]:
        rows = []
        for row in self.template:
            self.made += 1
            key = hashlib.blake2b(self.made.to_bytes(8, "big"), digest_size=32).digest()
            rows.append((key, *row[1:]))
        return rows


# -- psycopg, sync, from a thread ----------------------------------------------------------

PsycopgCall = Callable[[psycopg.Connection[Any], list[Row]], None]


def _executemany(conn: psycopg.Connection[Any], rows: list[Row]) -> None:
    conn.cursor().executemany(INSERT, rows)


def _values(conn: psycopg.Connection[Any], rows: list[Row]) -> None:
    marks = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
    sql = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES " + ", ".join([marks] * len(rows))
    conn.execute(sql, [value for row in rows for value in row])


def _copy(conn: psycopg.Connection[Any], rows: list[Row]) -> None:
    with conn.cursor().copy(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as c:
        c.set_types(["bytea", "bytea", *(["int8"] * 8)])
        for row in rows:
            c.write_row(row)


def psycopg_run(
    url: str,
    call: PsycopgCall,
    calls_per_tx: int,
    rows: Rows,
    seconds: float,
    prepare_threshold: int | None = 5,
    pipeline: bool = False,
) -> float:
    """Rows/s of transactions of `calls_per_tx` calls, run in a thread as the writer is."""
    result: list[float] = []

    def work() -> None:
        with psycopg.connect(url, autocommit=True, prepare_threshold=prepare_threshold) as conn:
            done = 0
            began = time.perf_counter()
            while (elapsed := time.perf_counter() - began) < seconds:
                batch = [rows.call() for _ in range(calls_per_tx)]
                with conn.pipeline() if pipeline else _nothing():
                    conn.execute("BEGIN")
                    for call_rows in batch:
                        conn.execute("SAVEPOINT call")
                        call(conn, call_rows)
                        conn.execute("RELEASE call")
                    conn.execute("COMMIT")
                done += sum(map(len, batch))
            result.append(done / elapsed)

    thread = threading.Thread(target=work, name="bench-writer")
    thread.start()
    thread.join()
    return result[0]


def coordinator_run(url: str, calls_per_tx: int, rows: Rows, seconds: float) -> float:
    """Rows/s through the coordinator's own PostgreSQL connection, as its writer uses it."""
    from coordinator.storage import postgres

    sql = INSERT.replace("%s", "?")
    result: list[float] = []

    def work() -> None:
        conn = postgres.open_connection(url)
        try:
            done = 0
            began = time.perf_counter()
            while (elapsed := time.perf_counter() - began) < seconds:
                batch = [rows.call() for _ in range(calls_per_tx)]
                postgres.begin(conn)
                for call_rows in batch:
                    conn.execute("SAVEPOINT call")
                    conn.executemany(sql, call_rows)
                    conn.execute("RELEASE call")
                conn.execute("COMMIT")
                done += sum(map(len, batch))
            result.append(done / elapsed)
        finally:
            conn.close()

    thread = threading.Thread(target=work, name="bench-writer")
    thread.start()
    thread.join()
    return result[0]


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# -- asyncpg, from the event loop -----------------------------------------------------------


async def asyncpg_run(url: str, copy: bool, calls_per_tx: int, rows: Rows, seconds: float) -> float:
    import asyncpg  # type: ignore[import-untyped]  # a bench-only driver, without types

    conn = await asyncpg.connect(url)
    try:
        done = 0
        began = time.perf_counter()
        while (elapsed := time.perf_counter() - began) < seconds:
            batch = [rows.call() for _ in range(calls_per_tx)]
            async with conn.transaction():
                for call_rows in batch:
                    async with conn.transaction():  # nested: a savepoint
                        if copy:
                            await conn.copy_records_to_table(
                                TABLE, records=call_rows, columns=COLUMNS
                            )
                        else:
                            await conn.executemany(ASYNCPG_INSERT, call_rows)
            done += sum(map(len, batch))
        return done / elapsed
    finally:
        await conn.close()


def asyncpg_version() -> str | None:
    """asyncpg's version, or None where the bench extra is not installed."""
    try:
        import asyncpg
    except ImportError:
        return None
    return str(asyncpg.__version__)


# -- the run ---------------------------------------------------------------------------


def ways(url: str, have_async: bool) -> dict[str, Callable[[int, Rows, float], float]]:
    found: dict[str, Callable[[int, Rows, float], float]] = {
        "coordinator's conn": lambda n, r, s: coordinator_run(url, n, r, s),
        "psycopg executemany": lambda n, r, s: psycopg_run(url, _executemany, n, r, s),
        "psycopg prepared": lambda n, r, s: psycopg_run(url, _executemany, n, r, s, 0),
        "psycopg unprepared": lambda n, r, s: psycopg_run(url, _executemany, n, r, s, None),
        "psycopg VALUES": lambda n, r, s: psycopg_run(url, _values, n, r, s),
        "psycopg COPY": lambda n, r, s: psycopg_run(url, _copy, n, r, s),
        "psycopg pipeline": lambda n, r, s: psycopg_run(url, _executemany, n, r, s, pipeline=True),
    }
    if have_async:
        found["asyncpg executemany"] = lambda n, r, s: asyncio.run(asyncpg_run(url, False, n, r, s))
        found["asyncpg COPY"] = lambda n, r, s: asyncio.run(asyncpg_run(url, True, n, r, s))
    return found


def _truncate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows-per-call", type=int, default=8, help="rows each call inserts")
    parser.add_argument("--seconds", type=float, help="per measurement (default 2; quick 0.5)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="each way measured this often, in turn "
        "with the others (default 3; quick 1); the median is shown",
    )
    parser.add_argument("--quick", action="store_true", help="one short round, ~20 s")
    parser.add_argument(
        "--db",
        default=bench_engines.POSTGRESQL,
        help="postgresql (a private cluster, the default) or postgresql://USER@HOST/DBNAME",
    )
    args = parser.parse_args()
    seconds = args.seconds or (0.5 if args.quick else 2.0)
    rounds = args.rounds or (1 if args.quick else 3)
    asyncpg_installed = asyncpg_version()
    have_async = asyncpg_installed is not None
    began = time.monotonic()
    with bench_engines.engines(args.db) as chosen:
        url = chosen.fresh(bench_engines.POSTGRESQL)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(CREATE)
            server = conn.execute("SHOW server_version").fetchone()
        print(
            f"setup              {chosen.describe_server()}, PostgreSQL "
            f"{server[0] if server else '?'}; psycopg {psycopg.__version__} "
            f"({psycopg.pq.__impl__}, libpq {psycopg.pq.version()}), "
            + (
                f"asyncpg {asyncpg_installed}"
                if have_async
                else "asyncpg not installed (pip install -e '.[bench]')"
            )
        )
        print(
            f"shape              {args.rows_per_call} rows a call (32 + {ENVELOPE_BYTES} bytes of "
            f"bytea, 8 bigints), each call in a savepoint, N calls a transaction; "
            f"{seconds:g} s a measurement, {rounds} round(s), median shown; "
            f"{os.cpu_count()} CPUs shared with the server",
            flush=True,
        )
        rows = Rows(args.rows_per_call)
        measured: dict[tuple[str, int], list[float]] = defaultdict(list)
        candidates = ways(url, have_async)
        for _ in range(rounds):
            for calls in BATCHES:
                for name, run in candidates.items():
                    measured[name, calls].append(run(calls, rows, seconds))
                    _truncate(url)
    print(f"\n{'rows/s':<22}" + "".join(f"{f'N = {n}':>12}" for n in BATCHES))
    base = {n: statistics.median(measured["psycopg executemany", n]) for n in BATCHES}
    for name in candidates:
        medians = [statistics.median(measured[name, n]) for n in BATCHES]
        cells = "".join(f"{m:>12,.0f}" for m in medians)
        ratios = " ".join(f"{m / base[n]:.2f}" for m, n in zip(medians, BATCHES, strict=True))
        print(f"{name:<22}{cells}   × executemany: {ratios}")
    print(f"total              {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
