"""The auditor against logs a coordinator rewrote, forked, padded or filled with bad contents:
every way must be caught."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from databases import drop_refusals
from log_story import (  # noqa: F401 - fixtures among them
    T0,
    Story,
    codes,
    log_key,
    open_db,
    story,
    usage_postings,
    verify,
    write_log,
)
from log_tampering import (
    double_posting,
    drop_agent,
    inflated_postings,
    missing_receipt,
    no_auction,
    posted_too_early,
    rigged_auction,
    tampered_receipt,
    unposted_usage,
)

from coordinator import tlog
from coordinator.client import audit
from shared import log_entries as L
from shared.identity import PrivateKey


async def test_an_honest_log_verifies_and_later_runs_check_it_only_grew(
    tmp_path: Path, database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path, state = database_location, tmp_path / "audit.json"
    leaves = story.honest()
    write_log(path, log_key, leaves)
    report = await verify(path, log_key, state)
    assert report.ok, report.discrepancies
    assert report.key_trust == "first use" and "first use" in report.notes[0]
    assert (
        report.size,
        report.receipts,
        report.leases,
        report.agents,
        report.enterprises,
        report.auctions_replayed,
    ) == (12, 3, 1, 2, 1, 1)
    assert (report.charged, report.voucher, report.deferred) == (600_000, 300_000, 300_000)
    assert report.accounts["earnings:prov-1"] == {"debits": 0, "credits": 600_000}
    assert report.accounts["receivable:ent-1"] == {"debits": 300_000, "credits": 100_000}
    assert report.state_saved
    saved = json.loads(state.read_text())
    assert saved["log_key"] == report.log_key

    leaves += story.receipts(2)
    write_log(path, log_key, leaves)
    again = await verify(path, log_key, state)
    assert again.ok, again.discrepancies
    assert (again.key_trust, again.previous_size, again.size, again.receipts) == (
        "pinned",
        12,
        14,
        5,
    )
    assert json.loads(state.read_text())["checkpoint"] != saved["checkpoint"]
    same = await verify(path, log_key, state, log_key=again.log_key)
    assert same.ok and same.key_trust == "given" and same.previous_size == 14


async def test_an_entry_changed_in_the_database_is_caught(
    tmp_path: Path, database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path, state = database_location, tmp_path / "audit.json"
    leaves = story.honest()
    write_log(path, log_key, leaves)
    assert (await verify(path, log_key, state)).ok
    before = state.read_text()
    inflated = story.receipt_entry(
        story.sealed[1], postings=usage_postings(story.sealed[1].digest, 2_000_000)
    )
    db = open_db(path)
    drop_refusals(db, "log_entries")
    db.conn.execute("UPDATE log_entries SET data = ? WHERE idx = 6", [inflated])
    db.conn.close()
    report = await verify(path, log_key, state)
    assert {"root_mismatch", "postings_mismatch"} <= codes(report)
    assert any(d.index == 6 for d in report.discrepancies)
    assert not report.state_saved and state.read_text() == before


@pytest.mark.parametrize("padding", [0, 3], ids=["shrunk", "padded-to-grow"])
async def test_a_removed_entry_is_caught_even_when_the_tree_is_rebuilt_and_re_signed(
    tmp_path: Path, database_location: str, story: Story, log_key: PrivateKey, padding: int
) -> None:
    path, state = database_location, tmp_path / "audit.json"
    leaves = story.honest()
    write_log(path, log_key, leaves)
    assert (await verify(path, log_key, state)).ok
    before = state.read_text()
    rewritten = (
        leaves[:6] + leaves[7:] + [story.agent_entry(PrivateKey.generate()) for _ in range(padding)]
    )
    write_log(path, log_key, rewritten)
    report = await verify(path, log_key, state)
    assert "inconsistent_history" in codes(report)
    assert "root_mismatch" not in codes(report)  # the attacker's checkpoint is self-consistent
    assert not report.state_saved and state.read_text() == before
    assert "inconsistent_history" in codes(await verify(path, log_key, state))


async def test_a_forked_history_re_signed_with_the_same_key_is_caught(
    tmp_path: Path, database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path, state = database_location, tmp_path / "audit.json"
    leaves = story.honest()
    write_log(path, log_key, leaves)
    assert (await verify(path, log_key, state)).ok
    fork = list(leaves)
    fork[0] = L.encode_entry(L.VOUCHER_POLICY, T0, {"coverage_bps": 9000, "fiscal_year": 2025})
    fork += story.receipts(2)
    write_log(path, log_key, fork)
    report = await verify(path, log_key, state)
    assert codes(report) == {"inconsistent_history"}
    # a fresh auditor, without the saved checkpoint, could not tell: that is what --state is for
    assert (await verify(path, log_key)).ok


async def test_a_coordinator_presenting_another_key_is_caught(
    tmp_path: Path, database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path, state = database_location, tmp_path / "audit.json"
    write_log(path, log_key, story.honest())
    assert (await verify(path, log_key, state)).ok
    impostor = PrivateKey.generate()
    write_log(path, impostor, story.honest())
    report = await verify(path, impostor, state)
    assert {"log_key_changed", "checkpoint_signature"} <= codes(report)
    with pytest.raises(audit.AuditUsageError, match="pinned"):
        await verify(
            path,
            impostor,
            state,
            log_key=tlog.verifier_key_text(impostor, tlog.default_origin(impostor)),
        )


@pytest.mark.parametrize(
    ("build", "code", "index"),
    [
        (drop_agent, "unregistered_agent", 4),
        (tampered_receipt, "bad_receipt", 6),
        (rigged_auction, "auction_mismatch", 4),
        (inflated_postings, "postings_mismatch", 6),
        (unposted_usage, "unposted_usage", 7),
        (posted_too_early, "postings_mismatch", 5),
        (missing_receipt, "receipt_chain", 6),
        (double_posting, "duplicate_transfer", 7),
        (no_auction, "unawarded_lease", 4),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_a_self_consistent_log_with_bad_contents_fails(
    database_location: str, story: Story, log_key: PrivateKey, build: Any, code: str, index: int
) -> None:
    path = database_location
    write_log(path, log_key, build(story))
    report = await verify(path, log_key)
    assert not report.ok
    assert code in codes(report), report.discrepancies
    assert any(d.code == code and d.index == index for d in report.discrepancies)
    assert "root_mismatch" not in codes(report)


async def test_a_lease_posted_once_for_a_batch_of_receipts_passes(
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    leaves = story.honest()
    total = story.sealed[2].receipt.amount
    leaves[5] = story.receipt_entry(story.sealed[0], postings=())
    leaves[6] = story.receipt_entry(story.sealed[1], postings=())
    leaves[7] = story.receipt_entry(
        story.sealed[2], postings=usage_postings(story.sealed[2].digest, total)
    )
    path = database_location
    write_log(path, log_key, leaves)
    report = await verify(path, log_key)
    assert report.ok, report.discrepancies
    assert (report.receipts, report.charged) == (3, total)


async def test_the_logged_acknowledgements_must_match_the_receipts(
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path = database_location
    write_log(path, log_key, story.honest() + [story.acknowledgement_entry()])
    report = await verify(path, log_key)
    assert report.ok, report.discrepancies
    assert report.acknowledgements == 1
    for bad in (
        story.acknowledgement_entry(key=PrivateKey.generate()),  # not the log's key
        story.acknowledgement_entry(amount=1),  # says another amount than the receipt
        story.acknowledgement_entry(log_index=4),  # places them at other entries
        story.acknowledgement_entry(transfer_ids=()),
    ):  # names no transfers
        write_log(path, log_key, story.honest() + [bad])
        report = await verify(path, log_key)
        assert codes(report) == {"bad_acknowledgement"}, report.discrepancies
        assert {d.index for d in report.discrepancies} == {12}
