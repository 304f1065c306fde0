"""The database engines the coordinator's tests run on: SQLite files in the test's directory,
and databases in one private PostgreSQL cluster started for the whole run (`postgres_cluster`).

`SUANLI_TEST_ENGINES` (default `sqlite,postgresql`) names which run. Where PostgreSQL is not
installed its tests skip, except under CI, where a missing engine must not pass as green.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from postgres_cluster import Cluster, bin_dir, running_cluster

from coordinator.storage import Session
from coordinator.storage.postgres import is_postgres_url, translate

ENGINES = tuple(
    e.strip() for e in os.environ.get("SUANLI_TEST_ENGINES", "sqlite,postgresql").split(",")
)
UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_cluster: Cluster | None = None
_opened: list[Session] = []
_cluster_context: Any = None


def shared_cluster() -> Cluster:
    """The run's PostgreSQL cluster, started on first use (stopped by `stop_shared_cluster`)."""
    global _cluster, _cluster_context
    if _cluster is None:
        if bin_dir() is None:
            message = "PostgreSQL is not installed (scripts/install-test-deps installs it)"
            if UNDER_CI:
                pytest.fail(message)
            pytest.skip(message)
        _cluster_context = running_cluster()
        _cluster = _cluster_context.__enter__()
    return _cluster


def stop_shared_cluster() -> None:
    global _cluster, _cluster_context
    if _cluster_context is not None:
        _cluster_context.__exit__(None, None, None)
    _cluster = _cluster_context = None


def new_database(engine: str, directory: Path, name: str = "coordinator.db") -> str:
    """A fresh, empty database on `engine`: its `--db` location."""
    if engine == "sqlite":
        return str(directory / name)
    if engine == "postgresql":
        return shared_cluster().create_database()
    raise ValueError(f"unknown engine {engine!r}")


def closed_after_the_test(session: Session) -> Session:
    """`session`, closed when the test ends (psycopg warns of a connection left open)."""
    _opened.append(session)
    return session


def close_opened() -> None:
    while _opened:
        conn = _opened.pop().conn
        close = getattr(conn, "close", None)
        if close is not None:
            close()


# The coordinator's code above its storage is the same on both engines. These test modules are
# about what the engine itself decides (transactions, triggers, constraints, locks, recovery,
# the ledger and the log as stored, a market run end to end), so they run on every engine; the
# others run on SQLite only unless SUANLI_TEST_EVERY_ENGINE=1 (the nightly way: every test on
# every engine, about twice the time).
ON_EVERY_ENGINE = frozenset(
    {
        "tests/coordinator/test_database.py",
        "tests/coordinator/test_database_flag.py",
        "tests/coordinator/test_ledger.py",
        "tests/coordinator/test_tlog.py",
        "tests/coordinator/test_tlog_audit.py",
        "tests/coordinator/test_tlog_rotation_and_cli.py",
        "tests/coordinator/test_vouchers.py",
        "tests/coordinator/test_receipt_acceptance.py",
        "tests/coordinator/test_accounts.py",
        "tests/coordinator/test_billing.py",
        "tests/adversarial/test_rogue_agent_billing.py",
        "tests/adversarial/test_rogue_coordinator.py",
        "tests/adversarial/test_log_key_rotation.py",
        "tests/adversarial/test_rogue_enterprise_races.py",
        "tests/adversarial/test_reservations.py",
        "tests/integration/test_end_to_end.py",
        "tests/integration/test_simulation.py",
        "tests/integration/test_tlog_coordinator.py",
        "tests/integration/test_migrate.py",
        "tests/integration/test_kill9.py",
        "tests/integration/test_registry_credentials.py",
        "tests/test_readme.py",
        "tests/client/test_job_quote.py",
        "tests/client/test_job_labels.py",
    }
)
EVERY_TEST_ON_EVERY_ENGINE = os.environ.get("SUANLI_TEST_EVERY_ENGINE", "") == "1"


def runs_on(module: str, engine: str) -> bool:
    """Whether a test module's engine-parametrised tests run on `engine` in this run."""
    return engine == "sqlite" or EVERY_TEST_ON_EVERY_ENGINE or module in ON_EVERY_ENGINE


def engine_params() -> list[Any]:
    return [pytest.param(engine, id=engine) for engine in ENGINES]


def rows(location: str | Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Read rows straight from a coordinator's database (as an auditor or an attacker would),
    whichever engine it is on; `?` placeholders on both."""
    text = str(location)
    if is_postgres_url(text):
        import psycopg

        with psycopg.connect(text, autocommit=True) as conn:
            return [tuple(row) for row in conn.execute(translate(sql), params).fetchall()]
    with sqlite3.connect(f"file:{text}?mode=ro", uri=True) as conn:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]


def dump(location: str | Path) -> str:
    """Every row of every table, as text: what someone who copied the database could read."""
    text = str(location)
    if not is_postgres_url(text):
        with sqlite3.connect(f"file:{text}?mode=ro", uri=True) as conn:
            return "\n".join(conn.iterdump())
    tables = rows(
        text,
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() ORDER BY table_name",
    )
    return "\n".join(
        f"{table} {row!r}" for (table,) in tables for row in rows(text, f'SELECT * FROM "{table}"')
    )


def write(location: str | Path, sql: str, params: Sequence[Any] = ()) -> None:
    """Change a coordinator's database behind its back (a tampering test's attacker)."""
    text = str(location)
    if is_postgres_url(text):
        import psycopg

        with psycopg.connect(text, autocommit=True) as conn:
            conn.execute(translate(sql), params)
        return
    with sqlite3.connect(text) as conn:
        conn.execute(sql, params)


def drop_refusals(db: Session, table: str) -> None:
    """An attacker holding the database lifts the triggers that make `table` immutable (and,
    on PostgreSQL, its other triggers with them)."""
    if db.engine == "postgresql":
        db.conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        return
    for kind in ("update", "delete"):
        db.conn.execute(f"DROP TRIGGER IF EXISTS {table}_no_{kind}")


def disable_foreign_keys(db: Session) -> None:
    """This connection stops checking foreign keys (and, on PostgreSQL, every trigger), as an
    attacker editing rows behind the coordinator's back would."""
    if db.engine == "postgresql":
        db.conn.execute("SET session_replication_role = replica")
    else:
        db.conn.execute("PRAGMA foreign_keys = OFF")


@pytest.fixture(params=engine_params())
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_location(engine_name: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database on each engine in turn."""
    yield new_database(engine_name, tmp_path)
