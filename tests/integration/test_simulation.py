"""The deterministic simulation (tests/simulation.py): many seeds hold every invariant, runs replay
exactly, and the checker catches a planted ledger bug."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import simulation
from databases import ENGINES, new_database

from coordinator import billing

SEEDS = 200
STEPS = 150
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(SEEDS))
def test_every_invariant_holds_for_the_seed(seed: int) -> None:
    simulation.run(seed, STEPS)


POSTGRES_SEEDS = 5


@pytest.mark.slow
@pytest.mark.skipif("postgresql" not in ENGINES, reason="PostgreSQL is not among the engines")
@pytest.mark.parametrize("seed", range(POSTGRES_SEEDS))
def test_every_invariant_holds_for_the_seed_on_postgresql(seed: int) -> None:
    """A few seeds with the coordinator's database on PostgreSQL: crashes between commits, lost
    and duplicated requests, the same invariants and the same trace as on SQLite."""
    database = new_database("postgresql", Path())
    on_postgresql = simulation.run(seed, STEPS, database=database)
    assert on_postgresql.digest == simulation.run(seed, STEPS).digest


def test_the_simulation_exercises_the_faults_it_claims_to() -> None:
    totals: dict[str, int] = {}
    for seed in range(20):
        for name, count in simulation.run(seed, 300).stats.items():
            totals[name] = totals.get(name, 0) + count
    for name in (
        "coordinator_crash",
        "agent_crash",
        "net_drop",
        "net_duplicate",
        "net_long_delay",
        "request_timeout",
        "receipts_acked",
        "start_failed",
    ):
        assert totals.get(name, 0) > 0, (name, totals)
    # honest receipts bill inside their windows, which reservations hold credit for
    assert totals.get("rejected:credit_exceeded", 0) == 0, totals


def test_the_same_seed_gives_the_same_trace() -> None:
    first, second = simulation.run(11, 200), simulation.run(11, 200)
    assert first.trace == second.trace
    assert first.digest == second.digest
    assert simulation.run(12, 200).digest != first.digest


def test_the_trace_does_not_depend_on_string_hashing() -> None:
    code = "import simulation; print(simulation.run(11, 200).digest)"
    env = {
        **os.environ,
        "PYTHONHASHSEED": "12345",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == simulation.run(11, 200).digest


def test_a_posting_of_the_wrong_amount_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = billing.post_usages

    def post_double(db, usages, **fields):  # type: ignore[no-untyped-def]
        return real(db, [replace(u, amount=u.amount * 2) for u in usages], **fields)

    monkeypatch.setattr(billing, "post_usages", post_double)
    with pytest.raises(simulation.InvariantViolation) as caught:
        for seed in range(5):
            simulation.run(seed, STEPS)
    assert "posted" in caught.value.what or "ledger" in caught.value.what


def test_an_acknowledgement_the_coordinator_forgets_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # plant a lost write: accepted receipts are acknowledged but never stored
    from coordinator.receipts.store import ReceiptStore, Stored

    def forgetful(self, db, batches):  # type: ignore[no-untyped-def]
        return [
            Stored([replace(v, acknowledgement=b"signed, never stored") for v in batch.verdicts])
            for batch in batches
        ]

    monkeypatch.setattr(ReceiptStore, "store", forgetful)
    with pytest.raises(simulation.InvariantViolation) as caught:
        for seed in range(5):
            simulation.run(seed, STEPS)
    assert "does not have" in caught.value.what or "neither accepted" in caught.value.what
