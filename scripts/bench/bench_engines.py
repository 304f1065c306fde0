"""Which storage engines a benchmark runs on (its `--db`), a fresh database on each for every
run, and the lines that set PostgreSQL's figure beside SQLite's.

    --db sqlite                  SQLite only (the default)
    --db postgresql, --postgres  SQLite, then PostgreSQL in a private cluster this bench starts
                                 (tests/postgres_cluster.py, BENCH_SETTINGS)
    --db postgresql://USER@HOST/DBNAME
                                 SQLite, then that server: each run gets a new database made
                                 there (the role needs CREATEDB) and dropped afterwards
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the private cluster lives with the tests

import psycopg
from postgres_cluster import BENCH_SETTINGS, Cluster, running_cluster

from coordinator.storage.engines import describe as shown_location
from coordinator.storage.postgres import is_postgres_url, translate

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=SQLITE,
        help="sqlite (default); postgresql (SQLite, then PostgreSQL in a private cluster this "
        "bench starts); or postgresql://USER@HOST/DBNAME (SQLite, then that server, a new "
        "database per run)",
    )
    parser.add_argument("--postgres", action="store_true", help="the same as --db postgresql")


def choice(args: argparse.Namespace) -> str:
    return POSTGRESQL if args.postgres else str(args.db)


@dataclass
class Engines:
    """The engines of this run, in the order they run, and fresh databases on them."""

    names: list[str]
    server: str | None = None  # a PostgreSQL URL whose server takes the new databases
    cluster: Cluster | None = None
    made: list[str] = field(default_factory=list)
    _numbers: Iterator[int] = field(default_factory=lambda: count(1))

    def fresh(self, engine: str, directory: Path | None = None) -> str:
        """A new empty database on `engine` (SQLite's file in `directory`): its `--db`."""
        if engine == SQLITE:
            assert directory is not None
            return str(directory / "coordinator.db")
        assert self.server is not None
        name = f"suanli_bench_{os.getpid()}_{next(self._numbers)}"
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return urlunsplit(urlsplit(self.server)._replace(path=f"/{name}"))

    def copy(self, location: str) -> str:
        """A new database made from `location`'s (nobody may be connected to it): its URL."""
        assert self.server is not None
        source = urlsplit(location).path.lstrip("/")
        copy = self.fresh(POSTGRESQL)
        name = urlsplit(copy).path.lstrip("/")
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}"')
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        return copy

    def postgres_pids(self) -> list[int]:
        """The private cluster's postmaster (its backends are its children); none elsewhere."""
        process = self.cluster._process if self.cluster is not None else None  # noqa: SLF001
        return [process.pid] if process is not None else []

    def describe(self) -> str:
        return "SQLite" if self.server is None else f"SQLite, then {self.describe_server()}"

    def describe_server(self) -> str:
        """The PostgreSQL server the benches' databases are made on."""
        assert self.server is not None
        if self.cluster is not None:
            return f"a private PostgreSQL cluster ({_settings()})"
        return "PostgreSQL at " + shown_location(self.server)

    def drop_made(self) -> None:
        if self.server is None:
            return
        with psycopg.connect(self.server, autocommit=True) as conn:
            for name in self.made:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.made.clear()


def _settings() -> str:
    return ", ".join(f"{k}={v}" for k, v in BENCH_SETTINGS.items()) + ", the rest default"


@contextlib.contextmanager
def engines(text: str) -> Iterator[Engines]:
    """The engines `--db text` names, with a private cluster started (and stopped) if asked."""
    if text == SQLITE:
        yield Engines([SQLITE])
        return
    if text == POSTGRESQL:
        with running_cluster(BENCH_SETTINGS) as cluster:
            chosen = Engines([SQLITE, POSTGRESQL], server=cluster.url(), cluster=cluster)
            try:
                yield chosen
            finally:
                chosen.drop_made()
        return
    if not is_postgres_url(text):
        raise SystemExit(f"--db {text}: give sqlite, postgresql, or postgresql://USER@HOST/DBNAME")
    try:
        with psycopg.connect(text, autocommit=True, connect_timeout=10):
            pass
    except psycopg.Error as exc:
        raise SystemExit(f"--db {shown_location(text)}: cannot connect: {exc}") from None
    chosen = Engines([SQLITE, POSTGRESQL], server=text)
    try:
        yield chosen
    finally:
        chosen.drop_made()


def rows(location: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows read straight from a database on either engine; `?` placeholders on both."""
    if is_postgres_url(location):
        with psycopg.connect(location, autocommit=True) as conn:
            return [tuple(row) for row in conn.execute(translate(sql), params).fetchall()]
    with contextlib.closing(
        sqlite3.connect(f"file:{location}?mode=ro", uri=True, timeout=30)
    ) as conn:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]


def label(engine: str) -> str:
    return "PostgreSQL" if engine == POSTGRESQL else "SQLite"


def heading(engine: str, round_: int, rounds: int) -> None:
    """The line that opens one engine's run, when several run."""
    of = f", round {round_ + 1} of {rounds}" if rounds > 1 else ""
    print(f"\n== {label(engine)}{of} ==", flush=True)


def verdict(met: bool) -> str:
    return "goal met" if met else "goal missed"


def ratio_line(what: str, figures: dict[str, float], unit: str, goal: float | None = None) -> str:
    """`what  SQLite X unit, PostgreSQL Y unit: ratio R (goal >= G: met)`; SQLite's alone
    when PostgreSQL did not run."""
    sqlite_figure = figures.get(SQLITE)
    postgres_figure = figures.get(POSTGRESQL)
    text = f"{what:<18} SQLite {sqlite_figure or 0:,.0f} {unit}"
    if postgres_figure is None:
        return text
    text += f", PostgreSQL {postgres_figure:,.0f} {unit}"
    if sqlite_figure:
        ratio = postgres_figure / sqlite_figure
        text += f": PostgreSQL / SQLite {ratio:.2f}"
        if goal is not None:
            text += f" (goal ≥ {goal}: {verdict(ratio >= goal)})"
    return text
