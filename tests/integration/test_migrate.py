"""Moving a live market from SQLite to PostgreSQL: `suanli-coordinator admin migrate`.

A real market on SQLite (a coordinator process, a fake agent's signed receipts accepted, one
job succeeded and one still running, checkpoints signed, an auditor's `suanli audit verify
--state` saved) is stopped and moved; served from PostgreSQL with the same log key, the
auditor's saved state verifies, the ledger is the same to the µ¥, and the running job's next
receipt gets the next row. The move refuses a non-empty target, a served source and a source
at another schema version, and a failure half-way leaves the target without a row.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from coordinator_harness import (
    BIN,
    UNHURRIED_SETTINGS,
    Api,
    CoordinatorProcess,
    FakeAgent,
    clean_env,
    lease_receipt,
)
from databases import new_database, rows

from agent.coordinator_client import CoordinatorClient
from coordinator.storage.copy import CopyFailed, copy_database, source_database, target_database
from coordinator.storage.migrations import MIGRATIONS
from shared.identity import PrivateKey
from shared.receipts import SealedReceipt

PRICE = 36_000_000  # µ¥ per GPU-hour
BALANCES = (
    "SELECT id, debits_pending, debits_posted, credits_pending, credits_posted "
    "FROM ledger_accounts ORDER BY id"
)


@dataclass
class Market:
    """A stopped SQLite market: its file and key, the auditor's saved state, and the lease
    still running, with the agent that holds it."""

    workdir: Path
    db: Path
    state: Path
    auditor_token: str
    agent_key: PrivateKey
    running: dict[str, Any]
    last_receipt: SealedReceipt


async def _lease_for(agent: FakeAgent, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for lease in await agent.leases(wait_ms=500):
            if lease["job_id"] == job_id:
                return dict(lease)
    raise AssertionError(f"no lease for {job_id}")


async def _receipt(agent: FakeAgent, sealed: SealedReceipt) -> dict[str, Any]:
    answer = await agent.client.signed("/v1/agent/receipts", {"receipts": [sealed.envelope]})
    assert answer["results"][0]["status"] == "accepted", answer
    return dict(answer)


async def _trade(coordinator: CoordinatorProcess) -> tuple[FakeAgent, dict[str, Any], Any]:
    agent = FakeAgent(coordinator.url, ["GPU-m0", "GPU-m1"], PRICE)
    api = Api(coordinator.url, coordinator.add_enterprise(2))
    try:
        await agent.enrol(coordinator.add_provider(1))
        await agent.heartbeat()
        agent.keep_alive()
        leases = []
        for key in ("done", "running"):
            status, job = await api.submit(
                max_price_per_gpu_hour_micro_yuan=PRICE, idempotency_key=key
            )
            assert status == 201, job
            lease = await _lease_for(agent, job["id"])
            await agent.client.status(lease["lease_id"], "started")
            leases.append(lease)
        await asyncio.sleep(0.3)  # GPU time must fit in the leases' elapsed time
        done, running = leases
        first = lease_receipt(agent, done, 100)
        await _receipt(agent, first)
        await _receipt(agent, lease_receipt(agent, done, 200, first, final=True))
        await agent.client.status(done["lease_id"], "exited", exit_code=0)
        finished = await api.wait_for(done["job_id"], lambda job: job["state"] == "succeeded")
        assert finished["charged_micro_yuan"] > 0
        last = lease_receipt(agent, running, 100)
        await _receipt(agent, last)
        return agent, running, last
    finally:
        await agent.close()
        await api.close()


def _audit(url: str, state: Path, token: str | None = None) -> dict[str, Any]:
    command = [str(BIN / "suanli"), "audit", "verify", "--coordinator", url]
    command += ["--state", str(state), "--json"]
    if token:
        command[2:2] = ["--token", token]
    result = subprocess.run(command, capture_output=True, text=True, env=clean_env(), check=False)
    assert result.returncode in (0, 3), result.stdout + result.stderr
    return {"returncode": result.returncode, **json.loads(result.stdout)}


def _audited(url: str, state: Path, token: str, receipts: int) -> dict[str, Any]:
    """The auditor's verification once a checkpoint covers `receipts` receipts."""
    deadline = time.monotonic() + 30
    while True:
        report = _audit(url, state, token)
        if report["receipts"] >= receipts or time.monotonic() > deadline:
            assert report["returncode"] == 0 and report["ok"], report
            assert report["receipts"] == receipts, report
            return report
        time.sleep(0.3)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    workdir = tmp_path_factory.mktemp("market")
    coordinator = CoordinatorProcess(workdir, settings=dict(UNHURRIED_SETTINGS))
    coordinator.start()
    try:
        auditor = coordinator.admin_json("add-auditor", "--name", "Finance bureau")["token"]
        agent, running, last = asyncio.run(_trade(coordinator))
        state = workdir / "audit.json"
        _audited(coordinator.url, state, auditor, receipts=3)
    finally:
        coordinator.stop()
    return Market(workdir, Path(coordinator.db), state, auditor, agent.key, running, last)


def _copy_of(market: Market, directory: Path) -> Path:
    """The market's file (and its key) copied, for a test that changes or serves it."""
    directory.mkdir(exist_ok=True)
    copy = directory / "coordinator.db"
    with sqlite3.connect(market.db) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    shutil.copy(f"{market.db}.key", f"{copy}.key")
    return copy


def _migrate(source: Path | str, target: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "suanli-coordinator"), "admin", *extra, "migrate"]
        + ["--from", f"sqlite:{source}", "--to", target, "--json"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )


def _tables(location: str) -> list[str]:
    return [
        str(name)
        for (name,) in rows(
            location,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema() AND table_type = 'BASE TABLE' AND table_name <> 'suanli_schema'",
        )
    ]


def _rows_held(location: str) -> dict[str, int]:
    """Rows per table of a PostgreSQL database, leaving out the fresh schema's log size 0."""
    held = {}
    for name in _tables(location):
        where = " WHERE size <> 0" if name == "log_meta" else ""
        (count,) = rows(location, f'SELECT COUNT(*) FROM "{name}"{where}')[0]
        if count:
            held[name] = int(count)
    return held


async def test_a_moved_market_verifies_against_the_auditors_saved_state(
    market: Market, tmp_path: Path
) -> None:
    target = new_database("postgresql", tmp_path)
    moved = _migrate(market.db, target)
    assert moved.returncode == 0, moved.stderr
    summary = json.loads(moved.stdout)
    source = str(market.db)
    for table, count in summary["tables"].items():
        assert rows(source, f'SELECT COUNT(*) FROM "{table}"')[0][0] == count, table
        assert rows(target, f'SELECT COUNT(*) FROM "{table}"')[0][0] == count, table
    assert set(summary["tables"]) == set(_tables(target))
    log = summary["log"]
    assert (
        log["size_before"] == log["size_after"] == rows(source, "SELECT size FROM log_meta")[0][0]
    )
    assert log["root_before"] == log["root_after"] and log["size_after"] > 0
    saved = json.loads(market.state.read_text())
    assert summary["ledger"] == {"ok": True, "problems": []}
    assert (summary["log_key_file"], summary["log_key_found"]) == (f"{market.db}.key", True)
    assert rows(target, BALANCES) == rows(source, BALANCES)
    copied_acknowledgements = rows(source, "SELECT MAX(id) FROM receipt_acknowledgements")[0][0]
    assert summary["sequences"]["receipt_acknowledgements.id"] == copied_acknowledgements + 1

    served = CoordinatorProcess(
        tmp_path,
        settings={**UNHURRIED_SETTINGS, "log_key_file": f"{market.db}.key"},
        database=target,
    ).start()
    try:
        check = served.admin("check-ledger", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        state = tmp_path / "audit.json"
        shutil.copy(market.state, state)
        report = _audit(served.url, state, market.auditor_token)
        assert report["returncode"] == 0 and report["ok"], report
        assert report["key_trust"] == "pinned" and report["log_key"] == saved["log_key"]
        saved_size = int(saved["checkpoint"].split("\n")[1])
        assert report["previous_size"] == saved_size > 0 and report["receipts"] == 3
        assert report["balances_compared"], "the auditor's token was moved too"

        # the running job carries on: its next receipt is the next acknowledgement's row
        agent = FakeAgent(served.url, ["GPU-m0", "GPU-m1"], PRICE)
        await agent.client.close()
        agent.key = market.agent_key
        agent.client = CoordinatorClient(served.url, market.agent_key)
        try:
            await agent.heartbeat()
            gpu_ms = market.last_receipt.receipt.gpu_ms + 100
            await _receipt(agent, lease_receipt(agent, market.running, gpu_ms, market.last_receipt))
        finally:
            await agent.close()
        ids = served.rows("SELECT id FROM receipt_acknowledgements ORDER BY id")
        assert ids[-1][0] == copied_acknowledgements + 1 and len(ids) == copied_acknowledgements + 1
        after = await asyncio.to_thread(_audited, served.url, state, market.auditor_token, 4)
        assert after["previous_size"] >= report["size"]
    finally:
        served.stop()


def test_a_closed_period_moves_with_the_postings_made_before_its_close(
    market: Market, tmp_path: Path
) -> None:
    # the target refuses a posting into a closed period, so the postings must go in first
    source = _copy_of(market, tmp_path / "closed")
    ((period,),) = rows(str(source), "SELECT DISTINCT period FROM ledger_postings")
    admin = CoordinatorProcess(source.parent)  # never started: its admin tasks only
    closed = admin.admin("close-period", period, "--early", check=False)
    assert closed.returncode == 0, closed.stderr
    target = new_database("postgresql", tmp_path)
    moved = _migrate(source, target)
    assert moved.returncode == 0, moved.stderr
    tables = json.loads(moved.stdout)["tables"]
    assert tables["ledger_period_closes"] == 1 and tables["ledger_statements"] >= 2
    assert tables["ledger_postings"] == 3
    assert rows(target, "SELECT period FROM ledger_period_closes") == [(period,)]


def test_the_move_refuses_a_database_that_holds_rows(market: Market, tmp_path: Path) -> None:
    target = new_database("postgresql", tmp_path)
    used = CoordinatorProcess(tmp_path, database=target)
    used.admin("add-auditor", "--name", "Someone else's")
    held = _rows_held(target)
    refused = _migrate(market.db, target)
    assert refused.returncode == 1, refused.stdout
    assert "already holds rows (in auditors" in refused.stderr and "empty" in refused.stderr
    assert _rows_held(target) == held  # nothing written

    again = new_database("postgresql", tmp_path)
    assert _migrate(market.db, again).returncode == 0
    twice = _migrate(market.db, again)
    assert twice.returncode == 1 and "already holds rows" in twice.stderr


def test_the_move_refuses_a_file_a_coordinator_is_serving(market: Market, tmp_path: Path) -> None:
    source = _copy_of(market, tmp_path / "served")
    serving = CoordinatorProcess(source.parent, settings=dict(UNHURRIED_SETTINGS)).start()
    target = new_database("postgresql", tmp_path)
    try:
        refused = _migrate(source, target)
    finally:
        serving.stop()
    assert refused.returncode == 1
    assert f"a suanli-coordinator is serving {source}: stop it" in refused.stderr
    assert _tables(target) == []  # the target was not touched, not even its schema
    assert _migrate(source, target).returncode == 0  # once stopped, it moves


def test_a_row_the_target_refuses_half_way_leaves_it_empty(market: Market, tmp_path: Path) -> None:
    source = _copy_of(market, tmp_path / "broken")
    with sqlite3.connect(source) as db:  # foreign keys unenforced, as a damaged file has them
        db.execute(
            "INSERT INTO ledger_statements VALUES ('2099-01', 'enterprise', 'ent-none', "
            "0, 0, 0, '[]', 0, NULL, NULL)"
        )
    target = new_database("postgresql", tmp_path)
    failed = _migrate(source, target)
    assert failed.returncode == 1
    assert "copying ledger_statements failed: " in failed.stderr, failed.stderr
    assert "foreign key" in failed.stderr and "nothing was written" in failed.stderr
    assert _rows_held(target) == {}  # the tables copied before it were rolled back with it
    assert _migrate(market.db, target).returncode == 0


def test_a_target_that_loses_its_connection_before_the_commit_keeps_nothing(
    market: Market, tmp_path: Path
) -> None:
    target = new_database("postgresql", tmp_path)

    def connection_lost(source: Any, db: Any) -> None:
        assert _rows_held(target) == {}  # the copy is not visible outside its transaction
        db.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with source_database(market.db) as source, target_database(target) as copy:
        with pytest.raises(CopyFailed, match="nothing was written"):
            copy_database(source, copy, connection_lost)
    assert _rows_held(target) == {}
    assert _tables(target)  # the schema's migrations are the only thing the move left


def test_a_log_whose_stored_hashes_disagree_with_its_entries_is_not_moved(
    market: Market, tmp_path: Path
) -> None:
    source = _copy_of(market, tmp_path / "tampered")
    ((size,),) = rows(str(source), "SELECT size FROM log_meta")
    with sqlite3.connect(source) as db:  # the root's largest subtree, as a forger rewrites it
        db.execute(
            "UPDATE log_hashes SET hash = zeroblob(32) WHERE level = ? AND idx = 0",
            [size.bit_length() - 1],
        )
    target = new_database("postgresql", tmp_path)
    refused = _migrate(source, target)
    assert refused.returncode == 1
    assert "stored hashes in the SQLite file do not match its entries" in refused.stderr
    assert _rows_held(target) == {}


def test_an_admin_command_writing_the_source_holds_the_move_off(
    market: Market, tmp_path: Path
) -> None:
    source = _copy_of(market, tmp_path / "busy")
    target = new_database("postgresql", tmp_path)
    writer = sqlite3.connect(source, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        refused = _migrate(source, target)
    finally:
        writer.close()
    assert refused.returncode == 1
    assert f"another process is writing {source}" in refused.stderr
    assert _tables(target) == []


def test_a_source_at_another_schema_version_is_refused_unchanged(
    market: Market, tmp_path: Path
) -> None:
    source = _copy_of(market, tmp_path / "old")
    older = len(MIGRATIONS) - 1
    with sqlite3.connect(source) as db:
        db.execute(f"PRAGMA user_version = {older}")
    target = new_database("postgresql", tmp_path)
    refused = _migrate(source, target)
    assert refused.returncode == 1
    assert f"schema version {older} and this suanli's is {len(MIGRATIONS)}" in refused.stderr
    assert f"admin --db {source} check-ledger" in refused.stderr
    assert rows(str(source), "PRAGMA user_version") == [(older,)]  # the source was only read
    assert _tables(target) == []


@pytest.mark.parametrize(
    ("flags", "status", "named"),
    [
        (["--from", "{target}", "--to", "{target}"], 2, "argument --from: postgresql://"),
        (["--from", "{source}", "--to", "mysql://x/market"], 2, "argument --to: mysql://..."),
        (["--from", "{source}", "--to", "{source}"], 2, "argument --to: {source}: "),
        (["--from", "{source}"], 2, "the following arguments are required: --to"),
        (["--from", "{missing}", "--to", "{target}"], 1, "--from {missing}: no SQLite database"),
        (["--from", "{source}", "--to", "{target}"], 1, "cannot connect to {target}: "),
    ],
)
def test_bad_input_is_one_sentence_naming_the_flag(
    market: Market, tmp_path: Path, flags: list[str], status: int, named: str
) -> None:
    values = {
        "target": "postgresql://suanli@127.0.0.1:1/market",  # nothing listens on port 1
        "source": market.db,
        "missing": tmp_path / "missing.db",
    }
    result = subprocess.run(
        [str(BIN / "suanli-coordinator"), "admin", "migrate"]
        + [word.format(**values) for word in flags],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    assert result.returncode == status, result.stderr
    assert named.format(**values) in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no lock is made beside a missing file


def test_admins_db_is_refused_beside_from_and_to(market: Market, tmp_path: Path) -> None:
    target = new_database("postgresql", tmp_path)
    result = _migrate(market.db, target, "--db", str(market.db))
    assert result.returncode == 1 and "not admin's --db" in result.stderr
    with pytest.raises(psycopg.Error):  # nothing was made there either
        rows(target, "SELECT 1 FROM log_meta")
