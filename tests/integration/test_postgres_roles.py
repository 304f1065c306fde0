"""A coordinator serving as a least-privilege PostgreSQL role: it runs the market, and a host
taken over with that role's password still cannot rewrite the ledger or the log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest
from coordinator_harness import BIN, UNHURRIED_SETTINGS, Api, CoordinatorProcess
from databases import new_database

PROTECTED_WRITES = [
    "UPDATE ledger_transfers SET amount = amount + 1",
    "DELETE FROM log_entries",
    "TRUNCATE ledger_postings",
    "ALTER TABLE ledger_transfers DISABLE TRIGGER ALL",
    "DROP TRIGGER ledger_transfers_no_update ON ledger_transfers",
    "CREATE OR REPLACE FUNCTION suanli_refuse() RETURNS trigger LANGUAGE plpgsql "
    "AS $$ BEGIN RETURN NULL; END $$",
    "SET session_replication_role = replica",
    "CREATE TABLE ledger_shadow (id BIGINT)",
]


def _as(url: str, role: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)


@pytest.fixture
def owned_database(tmp_path: Path) -> tuple[str, str]:
    """A database owned by `suanli_owner`, migrated by it, and `suanli` granted what serve
    needs (the README's steps)."""
    admin_url = new_database("postgresql", tmp_path)
    name = admin_url.split("/")[3].split("?")[0]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for role in ("suanli_owner", "suanli"):
            conn.execute(
                f"DO $$ BEGIN CREATE ROLE {role} LOGIN; "
                "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            )
        conn.execute(f'ALTER DATABASE "{name}" OWNER TO suanli_owner')
        conn.execute("ALTER SCHEMA public OWNER TO suanli_owner")
    owner_url = _as(admin_url, "suanli_owner")
    migrated = subprocess.run(
        [BIN / "suanli-coordinator", "admin", "--db", owner_url, "list"],
        capture_output=True,
        text=True,
    )
    assert migrated.returncode == 0, migrated.stderr
    grants = subprocess.run(
        [BIN / "suanli-coordinator", "admin", "postgres-grants"]
        + ["--role", "suanli", "--owner", "suanli_owner"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(grants.encode())
    return owner_url, _as(admin_url, "suanli")


async def test_the_service_role_runs_the_market_and_cannot_rewrite_it(
    tmp_path: Path, owned_database: tuple[str, str], cleanup: list
) -> None:
    _, service_url = owned_database
    coordinator = CoordinatorProcess(
        tmp_path, settings=dict(UNHURRIED_SETTINGS), database=service_url
    ).start()
    try:
        api = Api(coordinator.url, coordinator.add_enterprise(1))
        cleanup.append(api)
        status, job = await api.submit()
        assert status == 201, job
        assert coordinator.rows("SELECT COUNT(*) FROM log_entries")[0][0] > 0
    finally:
        coordinator.stop()
    with psycopg.connect(service_url, autocommit=True) as conn:
        for statement in PROTECTED_WRITES:
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(statement)
            assert isinstance(
                refused.value, psycopg.errors.InsufficientPrivilege | psycopg.IntegrityError
            ), (statement, refused.value)
        assert conn.execute("SELECT COUNT(*) FROM log_entries").fetchone() != (0,)


def test_grants_for_a_badly_named_role_are_refused_naming_the_flag() -> None:
    refused = subprocess.run(
        [BIN / "suanli-coordinator", "admin", "postgres-grants"]
        + ["--role", "suanli; DROP TABLE x", "--owner", "o"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2
    assert "--role 'suanli; DROP TABLE x'" in refused.stderr
