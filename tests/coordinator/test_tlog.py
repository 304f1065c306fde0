"""The transparency log: entries, the SQLite tree, checkpoints, the public API, and the auditor
that must catch every way a coordinator could rewrite, fork or pad its history."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlite_utils
from log_story import (  # noqa: F401 - fixtures among them
    T0,
    USCC,
    Story,
    codes,
    log_key,
    open_db,
    rotated,
    serving,
    story,
    usage_postings,
    verify,
    write_log,
)

from coordinator import accounts, tlog
from coordinator.client import audit
from coordinator.errors import NotFound, Unprocessable
from coordinator.storage import Database, connect, transaction
from coordinator.tlog import proofs
from shared import canonical, merkle
from shared import log_entries as L
from shared.checkpoint import open_checkpoint
from shared.errors import SuanliError
from shared.identity import PrivateKey, load_private_key, parse_verifier_key, verifier_key
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, SealedReceipt, seal_receipt


def test_every_kind_round_trips(story: Story) -> None:
    for data in story.honest():
        entry = L.decode_entry(data)
        assert entry.kind in L.KINDS
        assert L.encode_entry(entry.kind, entry.at_ms, entry.body) == data
    rotation = story.rotation_entry(PrivateKey.generate())
    entry = L.decode_entry(rotation)
    assert L.encode_entry(entry.kind, entry.at_ms, entry.body) == rotation
    kinds = [
        L.decode_entry(data).kind
        for data in story.honest() + [story.acknowledgement_entry(), rotation]
    ]
    assert set(kinds) == set(L.KINDS)


def test_the_receipt_fast_path_writes_what_the_general_encoder_would(story: Story) -> None:
    for sealed in [story.next_receipt() for _ in range(3)]:
        for postings in ((), usage_postings(sealed.digest, story.delta(sealed))):
            body = L.ReceiptEntry(sealed.envelope, postings)
            data, entry = L.encode_receipt_entry(T0 + 7, body)
            assert data == L.encode_entry(L.RECEIPT, T0 + 7, body)
            assert entry == L.decode_entry(data)
    bad = (
        [L.Posting(b"short", "a", "b", 1, "usage_voucher")],
        [L.Posting(bytes(32), "a", "b", 0, "c")],
        [L.Posting(bytes(32), "", "b", 1, "c")],
    )
    for postings in bad:
        with pytest.raises(L.LogEntryError):
            L.encode_receipt_entry(T0, L.ReceiptEntry(sealed.envelope, tuple(postings)))
    with pytest.raises(L.LogEntryError):
        L.encode_receipt_entry(T0, L.ReceiptEntry(b"", ()))
    with pytest.raises(L.LogEntryError):
        L.encode_receipt_entry(-1, L.ReceiptEntry(sealed.envelope, ()))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\xc1", "not canonical"),
        (canonical.encode([2, "enterprise", 0, ["e", USCC]]), "version 2"),
        (canonical.encode([1, "gossip", 0, []]), "kind 'gossip'"),
        (canonical.encode([1, "enterprise", -1, ["e", USCC]]), "at_ms"),
        (canonical.encode([1, "enterprise", 0, ["e"]]), "array of 2"),
        (canonical.encode([1, "agent_key", 0, ["ab" * 32, bytes(32), "p", USCC]]), "SHA-256"),
        (canonical.encode([1, "payment", 0, ["r", "p", 0, []]]), "amount"),
        (canonical.encode([1, "auction_round", 0, canonical.encode([1, [], [], []])]), "malformed"),
        (canonical.encode([1, "period_close", 0, ["2025-13", []]]), "YYYY-MM"),
    ],
)
def test_malformed_entries_are_refused_with_a_sentence(data: bytes, words: str) -> None:
    with pytest.raises(L.LogEntryError) as caught:
        L.decode_entry(data)
    assert words in caught.value.detail
    with pytest.raises(L.LogEntryError):
        tlog.append_entries(sqlite3.connect(":memory:"), [data])


# -- the tree in SQLite ------------------------------------------------------------------------


def test_roots_match_shared_merkle_across_batches_and_reopening(
    tmp_path: Path, story: Story
) -> None:
    path = tmp_path / "c.db"
    pool = story.honest() + story.receipts(30)
    appended: list[bytes] = []
    for batch in (1, 2, 1, 5, 0, 3, 8, 13, 7):
        db = open_db(path)
        chunk = pool[len(appended) : len(appended) + batch]
        with transaction(db):
            first = tlog.append_entries(db, chunk)
        assert first == len(appended)
        appended += chunk
        db.conn.close()
        db = open_db(path)
        assert tlog.size(db) == len(appended)
        assert tlog.tree(db).root() == merkle.root(appended)
        assert tlog.entries(db, 0, len(appended)) == appended if appended else True
        db.conn.close()
    assert len(appended) == 40


def test_a_malformed_entry_appends_nothing(tmp_path: Path, story: Story) -> None:
    db = open_db(tmp_path / "c.db")
    with transaction(db):
        tlog.append_entries(db, story.opening())
    with pytest.raises(L.LogEntryError), transaction(db):
        tlog.append_entries(db, [story.agent_entry(story.agent), b"\x93junk"])
    assert tlog.size(db) == 5
    assert db.conn.execute("SELECT COUNT(*) FROM log_entries").fetchone()[0] == 5


def test_registrations_made_before_the_log_are_logged_once(tmp_path: Path) -> None:
    db = open_db(tmp_path / "c.db")
    key = PrivateKey.generate()
    with transaction(db):
        provider_id, _ = accounts.add_provider(db, "GPU Farm", USCC, T0)
        db["agents"].insert(
            {
                "agent_id": key.public.agent_id,
                "provider_id": provider_id,
                "public_key": key.public.raw,
                "hostname": "h1",
                "enrolled_at_ms": T0 + 2,
                "penalty_ppm": 0,
                "penalty_at_ms": T0,
            }
        )
        enterprise_id, _ = accounts.add_enterprise(db, "Buyer", USCC, T0 + 1)
        assert tlog.log_registrations(db) == 2
        assert tlog.log_registrations(db) == 0
    first, second = (L.decode_entry(data) for data in tlog.entries(db, 0, 2))
    assert first.body == L.EnterpriseEntry(enterprise_id, USCC)
    assert second.body == L.AgentKey(key.public.agent_id, key.public.raw, provider_id, USCC)
    assert tlog.find_agent_key(db, key.public.key_id) == 1


def test_an_idempotent_command_retried_logs_once(tmp_path: Path, story: Story) -> None:
    db = open_db(tmp_path / "c.db")
    payment, close = story.closing()
    assert tlog.append_unless_logged(db, payment) == 0
    assert tlog.append_unless_logged(db, payment) is None
    assert tlog.append_unless_logged(db, close) == 1
    assert tlog.append_unless_logged(db, close) is None
    assert tlog.size(db) == 2


def test_the_voucher_policy_is_logged_when_it_changes(tmp_path: Path) -> None:
    db = open_db(tmp_path / "c.db")
    policy = {"coverage_bps": 5000, "fiscal_year": 2025, "providers_may_be_subsidised": True}
    assert tlog.log_voucher_policy(db, policy, T0)
    assert not tlog.log_voucher_policy(db, dict(policy), T0 + 1)
    assert tlog.log_voucher_policy(db, {**policy, "coverage_bps": 4000}, T0 + 2)
    assert tlog.size(db) == 2


def test_logged_entries_cannot_be_updated_or_deleted(tmp_path: Path, story: Story) -> None:
    db = open_db(tmp_path / "c.db")
    with transaction(db):
        tlog.append_entries(db, story.opening())
    for statement in (
        "UPDATE log_entries SET data = x'00' WHERE idx = 1",
        "DELETE FROM log_entries WHERE idx = 4",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.conn.execute(statement)


def test_inclusion_and_consistency_proofs_verify(tmp_path: Path, story: Story) -> None:
    db = open_db(tmp_path / "c.db")
    leaves = story.honest() + story.receipts(3)
    with transaction(db):
        tlog.append_entries(db, leaves)
    n = len(leaves)
    for size in range(1, n + 1):
        root = merkle.root(leaves[:size])
        for index in range(size):
            proof = tlog.inclusion(db, index, size)
            assert merkle.verify_inclusion(leaves[index], index, size, proof, root)
        for old in range(1, size + 1):
            proof = tlog.consistency(db, old, size)
            assert merkle.verify_consistency(old, size, merkle.root(leaves[:old]), root, proof)
    with pytest.raises(NotFound, match="beyond the log"):
        tlog.inclusion(db, 0, n + 1)
    with pytest.raises(Unprocessable):
        tlog.inclusion(db, 5, 5)
    with pytest.raises(Unprocessable):
        tlog.consistency(db, 0, 3)
    with pytest.raises(NotFound):
        tlog.entries(db, 0, n + 1)
    digest = story.sealed[1].digest
    assert tlog.find_receipt(db, digest) == 6
    assert tlog.find_agent_key(db, story.rival.public.key_id) == 3
    assert tlog.find_receipt(db, bytes(32)) is None


def test_checkpoints_verify_and_an_idle_log_is_not_re_signed(
    tmp_path: Path, story: Story, log_key: PrivateKey
) -> None:
    db = open_db(tmp_path / "c.db")
    origin = tlog.default_origin(log_key)
    vkey = parse_verifier_key(tlog.verifier_key_text(log_key, origin))
    assert tlog.latest_checkpoint(db) is None
    empty = tlog.sign_checkpoint(db, log_key, origin, T0)
    assert open_checkpoint(empty, vkey, origin).root_hash == merkle.EMPTY_ROOT
    leaves = story.honest()
    with transaction(db):
        tlog.append_entries(db, leaves)
    note = tlog.sign_checkpoint(db, log_key, origin, T0 + 1)
    checkpoint = open_checkpoint(note, vkey, origin)
    assert (checkpoint.size, checkpoint.root_hash) == (12, merkle.root(leaves))
    assert tlog.sign_checkpoint(db, log_key, origin, T0 + 2) == note
    assert tlog.latest_checkpoint(db) == note
    assert db.conn.execute("SELECT COUNT(*) FROM log_checkpoints").fetchone()[0] == 2
    # another key for the same log re-signs the same size rather than serve a stale signer
    other = PrivateKey.generate()
    renote = tlog.sign_checkpoint(db, other, tlog.default_origin(other), T0 + 3)
    assert renote != note
    open_checkpoint(renote, verifier_key(tlog.default_origin(other), other.public))


async def test_the_loop_signs_while_the_log_grows(
    tmp_path: Path, story: Story, log_key: PrivateKey
) -> None:
    path = tmp_path / "c.db"
    open_db(path).conn.close()
    database = Database(path)
    database.start()
    origin = tlog.default_origin(log_key)
    loop = asyncio.create_task(tlog.checkpoint_loop(database, log_key, origin, 0.01))
    try:
        for batch in (story.opening(), story.receipts(2)):

            def append(db: sqlite_utils.Database, batch: list[bytes] = batch) -> int:
                return tlog.append_entries(db, batch)

            await database.run(append)
            target = await database.run(tlog.size)
            for _ in range(200):
                note = await database.run(tlog.latest_checkpoint)
                vkey = verifier_key(origin, log_key.public)
                if note and open_checkpoint(note, vkey).size == target:
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail(f"no checkpoint of size {target} was signed")

        def signed(db: sqlite_utils.Database) -> int:
            return int(db.conn.execute("SELECT COUNT(*) FROM log_checkpoints").fetchone()[0])

        count = await database.run(signed)
        await asyncio.sleep(0.05)
        assert await database.run(signed) == count
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
        database.close()


# -- HTTP --------------------------------------------------------------------------------------


async def test_the_public_routes_serve_what_the_auditor_needs(
    tmp_path: Path, story: Story, log_key: PrivateKey
) -> None:
    path = tmp_path / "c.db"
    leaves = story.honest()
    write_log(path, log_key, leaves)
    async with serving(path, log_key) as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/v1/log/key") as response:
            vkey = parse_verifier_key((await response.text()).strip())
        async with http.get(url + "/v1/log/checkpoint") as response:
            assert response.content_type == "text/plain"
            checkpoint = open_checkpoint(await response.text(), vkey, vkey.name)
        assert (checkpoint.size, checkpoint.root_hash) == (12, merkle.root(leaves))
        async with http.get(url + "/v1/log/entries", params={"start": "2", "end": "7"}) as response:
            page = await response.json()
        assert page["start"] == 2 and page["end"] == 7
        assert [base64.b64decode(e) for e in page["entries"]] == leaves[2:7]
        async with http.get(
            url + "/v1/log/proof/inclusion", params={"index": "6", "size": "12"}
        ) as response:
            proof = [base64.b64decode(h) for h in (await response.json())["proof"]]
        assert merkle.verify_inclusion(leaves[6], 6, 12, proof, checkpoint.root_hash)
        async with http.get(
            url + "/v1/log/proof/consistency", params={"old": "3", "new": "12"}
        ) as response:
            proof = [base64.b64decode(h) for h in (await response.json())["proof"]]
        old_root = merkle.root(leaves[:3])
        assert merkle.verify_consistency(3, 12, old_root, checkpoint.root_hash, proof)
        async with http.get(
            url + "/v1/log/find", params={"digest": story.sealed[2].digest.hex()}
        ) as response:
            assert (await response.json())["index"] == 7
        async with http.get(
            url + "/v1/log/find", params={"agent_id": story.agent.public.agent_id}
        ) as response:
            assert (await response.json())["index"] == 2


async def test_entry_pages_are_bounded(
    tmp_path: Path, story: Story, log_key: PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proofs, "MAX_PAGE", 4)
    path = tmp_path / "c.db"
    leaves = story.honest()
    write_log(path, log_key, leaves)
    async with (
        serving(path, log_key) as url,
        aiohttp.ClientSession() as http,
        http.get(url + "/v1/log/entries", params={"start": "1", "end": "10"}) as response,
    ):
        page = await response.json()
    assert (page["start"], page["end"], len(page["entries"])) == (1, 5, 4)
    monkeypatch.setattr(proofs, "MAX_PAGE_BYTES", 1)
    async with serving(path, log_key) as url:
        async with (
            aiohttp.ClientSession() as http,
            http.get(url + "/v1/log/entries", params={"start": "1", "end": "10"}) as response,
        ):
            assert len((await response.json())["entries"]) == 1
        report = await audit.verify_log(url, None, None)
    assert report.ok and report.size == 12


@pytest.mark.parametrize(
    ("route", "query", "status", "words"),
    [
        ("entries", {"end": "3"}, 400, "start is required"),
        ("entries", {"start": "x", "end": "3"}, 400, "whole number"),
        ("entries", {"start": "-1", "end": "3"}, 400, "whole number"),
        ("entries", {"start": "1" * 30, "end": "3"}, 400, "at most 19 digits"),
        ("entries", {"start": "5", "end": "5"}, 422, "below end"),
        ("entries", {"start": "0", "end": "13"}, 404, "beyond the log, which has 12 entries"),
        ("proof/inclusion", {"index": "12", "size": "12"}, 422, "not an entry"),
        ("proof/inclusion", {"index": "0", "size": "13"}, 404, "beyond the log"),
        ("proof/inclusion", {"index": "0"}, 400, "size is required"),
        ("proof/consistency", {"old": "0", "new": "4"}, 422, "0 < old <= new"),
        ("proof/consistency", {"old": "5", "new": "4"}, 422, "0 < old <= new"),
        ("proof/consistency", {"old": "1", "new": "99"}, 404, "beyond the log"),
        ("find", {}, 400, "exactly one of"),
        ("find", {"digest": "zz" * 32}, 400, "64 hex digits"),
        ("find", {"digest": "00 " * 21 + "0"}, 400, "64 hex digits"),
        ("find", {"digest": "00" * 32}, 404, "no receipt with digest"),
        ("find", {"agent_id": "00" * 32}, 404, "no key of agent"),
    ],
)
async def test_bad_parameters_are_refused_with_a_sentence(
    tmp_path: Path,
    story: Story,
    log_key: PrivateKey,
    route: str,
    query: dict[str, str],
    status: int,
    words: str,
) -> None:
    path = tmp_path / "c.db"
    write_log(path, log_key, story.honest())
    async with (
        serving(path, log_key) as url,
        aiohttp.ClientSession() as http,
        http.get(f"{url}/v1/log/{route}", params=query) as response,
    ):
        body = await response.json()
        assert response.status == status, body
    assert set(body) == {"error", "detail"}
    assert words in body["detail"] and " " in body["detail"]


# -- the auditor -------------------------------------------------------------------------------


async def test_an_honest_log_verifies_and_later_runs_check_it_only_grew(
    tmp_path: Path, story: Story, log_key: PrivateKey
) -> None:
    path, state = tmp_path / "c.db", tmp_path / "audit.json"
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
    tmp_path: Path, story: Story, log_key: PrivateKey
) -> None:
    path, state = tmp_path / "c.db", tmp_path / "audit.json"
    leaves = story.honest()
    write_log(path, log_key, leaves)
    assert (await verify(path, log_key, state)).ok
    before = state.read_text()
    inflated = story.receipt_entry(
        story.sealed[1], postings=usage_postings(story.sealed[1].digest, 2_000_000)
    )
    db = open_db(path)
    db.conn.execute("DROP TRIGGER log_entries_no_update")
    db.conn.execute("UPDATE log_entries SET data = ? WHERE idx = 6", [inflated])
    db.conn.close()
    report = await verify(path, log_key, state)
    assert {"root_mismatch", "postings_mismatch"} <= codes(report)
    assert any(d.index == 6 for d in report.discrepancies)
    assert not report.state_saved and state.read_text() == before


@pytest.mark.parametrize("padding", [0, 3], ids=["shrunk", "padded-to-grow"])
async def test_a_removed_entry_is_caught_even_when_the_tree_is_rebuilt_and_re_signed(
    tmp_path: Path, story: Story, log_key: PrivateKey, padding: int
) -> None:
    path, state = tmp_path / "c.db", tmp_path / "audit.json"
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
    tmp_path: Path, story: Story, log_key: PrivateKey
) -> None:
    path, state = tmp_path / "c.db", tmp_path / "audit.json"
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
    tmp_path: Path, story: Story, log_key: PrivateKey
) -> None:
    path, state = tmp_path / "c.db", tmp_path / "audit.json"
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


def _drop_agent(story: Story) -> list[bytes]:
    leaves = story.honest()
    return leaves[:2] + leaves[3:]


def _tampered_receipt(story: Story) -> list[bytes]:
    leaves = story.honest()
    envelope = bytearray(story.sealed[1].envelope)
    envelope[10] ^= 0x01
    leaves[6] = story.receipt_entry(story.sealed[1], envelope=bytes(envelope))
    return leaves


def _rigged_auction(story: Story) -> list[bytes]:
    leaves = story.honest()
    leaves[4] = story.auction_entry(replace(story.outcome, price_per_gpu_hour=9_000_000))
    return leaves


def _inflated_postings(story: Story) -> list[bytes]:
    leaves = story.honest()
    leaves[6] = story.receipt_entry(
        story.sealed[1], postings=usage_postings(story.sealed[1].digest, 999_999)
    )
    return leaves


def _unposted_usage(story: Story) -> list[bytes]:
    leaves = story.honest()
    leaves[7] = story.receipt_entry(story.sealed[2], postings=())
    return leaves


def _posted_too_early(story: Story) -> list[bytes]:
    # the batch's first receipt carries the postings of all three: more than it adds so far
    leaves = story.honest()
    leaves[5] = story.receipt_entry(
        story.sealed[0],
        postings=usage_postings(story.sealed[0].digest, story.sealed[2].receipt.amount),
    )
    leaves[6] = story.receipt_entry(story.sealed[1], postings=())
    leaves[7] = story.receipt_entry(story.sealed[2], postings=())
    return leaves


def _missing_receipt(story: Story) -> list[bytes]:
    leaves = story.honest()
    return leaves[:6] + leaves[7:]


def _double_posting(story: Story) -> list[bytes]:
    leaves = story.honest()
    leaves[7] = story.receipt_entry(
        story.sealed[2],
        postings=usage_postings(
            story.sealed[1].digest, story.sealed[2].receipt.amount - story.sealed[1].receipt.amount
        ),
    )
    return leaves


def _no_auction(story: Story) -> list[bytes]:
    leaves = story.honest()
    return leaves[:4] + leaves[5:]


@pytest.mark.parametrize(
    ("build", "code", "index"),
    [
        (_drop_agent, "unregistered_agent", 4),
        (_tampered_receipt, "bad_receipt", 6),
        (_rigged_auction, "auction_mismatch", 4),
        (_inflated_postings, "postings_mismatch", 6),
        (_unposted_usage, "unposted_usage", 7),
        (_posted_too_early, "postings_mismatch", 5),
        (_missing_receipt, "receipt_chain", 6),
        (_double_posting, "duplicate_transfer", 7),
        (_no_auction, "unawarded_lease", 4),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_a_self_consistent_log_with_bad_contents_fails(
    tmp_path: Path, story: Story, log_key: PrivateKey, build: Any, code: str, index: int
) -> None:
    path = tmp_path / "c.db"
    write_log(path, log_key, build(story))
    report = await verify(path, log_key)
    assert not report.ok
    assert code in codes(report), report.discrepancies
    assert any(d.code == code and d.index == index for d in report.discrepancies)
    assert "root_mismatch" not in codes(report)


async def test_a_lease_posted_once_for_a_batch_of_receipts_passes(
    tmp_path: Path, story: Story, log_key: PrivateKey
) -> None:
    leaves = story.honest()
    total = story.sealed[2].receipt.amount
    leaves[5] = story.receipt_entry(story.sealed[0], postings=())
    leaves[6] = story.receipt_entry(story.sealed[1], postings=())
    leaves[7] = story.receipt_entry(
        story.sealed[2], postings=usage_postings(story.sealed[2].digest, total)
    )
    path = tmp_path / "c.db"
    write_log(path, log_key, leaves)
    report = await verify(path, log_key)
    assert report.ok, report.discrepancies
    assert (report.receipts, report.charged) == (3, total)


async def test_the_logged_acknowledgements_must_match_the_receipts(
    tmp_path: Path, story: Story, log_key: PrivateKey
) -> None:
    path = tmp_path / "c.db"
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


async def test_a_rotated_log_is_followed_from_the_old_key_and_the_new_one_is_pinned(
    tmp_path: Path, story: Story, log_key: PrivateKey
) -> None:
    path, state = tmp_path / "c.db", tmp_path / "audit.json"
    origin = tlog.default_origin(log_key)
    write_log(path, log_key, story.honest())
    assert (await verify(path, log_key, state)).ok
    old_pin = json.loads(state.read_text())["log_key"]
    new_key = PrivateKey.generate()
    write_log(path, new_key, rotated(story, new_key), origin)  # the log keeps its name
    report = await verify(path, new_key, state, origin=origin)
    assert report.ok, report.discrepancies
    assert (report.key_trust, report.previous_size, report.size) == ("pinned", 12, 17)
    assert report.acknowledgements == 2  # one by each key, each checked with the key of its time
    assert report.entries_by_kind[L.LOG_KEY] == 1
    assert any("rotated 1 time" in note for note in report.notes)
    new_pin = tlog.verifier_key_text(new_key, origin)
    assert report.log_key == new_pin and json.loads(state.read_text())["log_key"] == new_pin
    again = await verify(path, new_key, state, origin=origin)
    assert again.ok and again.key_trust == "pinned" and again.previous_size == 17
    # the old key, given as it was before the rotation, still leads to the key now pinned
    given_old = await verify(path, new_key, state, log_key=old_pin, origin=origin)
    assert given_old.ok and given_old.key_trust == "given", given_old.discrepancies
    pinned = state.read_text()
    stranger = await verify(
        path,
        new_key,
        state,
        origin=origin,
        log_key=tlog.verifier_key_text(PrivateKey.generate(), origin),
    )
    assert codes(stranger) == {"untrusted_log_key"} and state.read_text() == pinned
    # an auditor given the old key out of band, or the new one, follows the chain alike
    for given in (old_pin, new_pin):
        fresh = await verify(path, new_key, None, log_key=given, origin=origin)
        assert fresh.ok and fresh.key_trust == "given", fresh.discrepancies
    async with serving(path, new_key, origin=origin) as url:
        for sealed, index, key in ((story.sealed[1], 6, log_key), (story.sealed[3], 14, new_key)):
            proof = await audit.check_receipt(
                url,
                sealed.envelope,
                old_pin,
                wait_s=0,
                acknowledgement=story.acknowledgement(sealed, index, key),
            )
            assert proof.ok, proof.discrepancies
        stale = await audit.check_receipt(
            url,
            story.sealed[3].envelope,
            old_pin,
            wait_s=0,
            acknowledgement=story.acknowledgement(story.sealed[3], 14, log_key),
        )
        assert codes(stale) == {"bad_acknowledgement"}


def test_rotate_log_key_keeps_every_old_key_and_survives_an_interrupted_rotation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from coordinator.cli import main

    db_path = tmp_path / "coordinator.db"
    key_path = Path(f"{db_path}.key")
    assert main(["admin", "--db", str(db_path), "rotate-log-key"]) == 0
    assert "log key rotated at entry 0" in capsys.readouterr().out
    assert main(["admin", "--db", str(db_path), "rotate-log-key", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    retired = sorted(tmp_path.glob("coordinator.db.key.*.retired"))
    assert len(retired) == 2 and all(p.stat().st_mode & 0o777 == 0o600 for p in retired)
    db = connect(db_path)
    assert tlog.log_key_changes(db) == [0, 1] == [second["log_index"] - 1, second["log_index"]]
    first_key = next(
        load_private_key(p)
        for p in retired
        if tlog.verifier_key_text(load_private_key(p), second["origin"]) != second["old_log_key"]
    )
    assert second["origin"] == tlog.default_origin(first_key)  # the log keeps its first name
    loaded = tlog.LogKey.load(db, key_path)
    assert loaded.verifier_key == second["new_log_key"] and loaded.origin == second["origin"]
    chain = audit.KeyChain(verifier_key(second["origin"], first_key.public))
    report = audit.AuditReport(coordinator="test")
    chain.follow([(n, raw) for n, raw in enumerate(tlog.entries(db, 0, 2))], report)
    assert report.ok and str(chain.verifier_at(2)) == second["new_log_key"]
    note = tlog.latest_checkpoint(db)  # the rotation signed the new key's first checkpoint
    assert note is not None
    assert open_checkpoint(note, chain.verifier_at(2), second["origin"]).size == 2
    # interrupted after the entry committed, before the new key moved into place
    pending = tlog.pending_key_path(key_path, parse_verifier_key(second["new_log_key"]).public)
    key_path.rename(pending)
    old = next(p for p in retired if load_private_key(p).public != first_key.public)
    key_path.write_bytes(old.read_bytes())
    key_path.chmod(0o600)
    assert tlog.LogKey.load(db, key_path).verifier_key == second["new_log_key"]
    # a key file that the log never named is refused rather than signed with
    pending.unlink()
    with pytest.raises(tlog.LogKeyMissing):
        tlog.LogKey.load(db, key_path)


async def test_replay_auctions_alone(tmp_path: Path, story: Story, log_key: PrivateKey) -> None:
    path = tmp_path / "c.db"
    write_log(path, log_key, _rigged_auction(story))
    async with serving(path, log_key) as url:
        report = await audit.replay_auctions(url, None)
    assert codes(report) == {"auction_mismatch"}
    assert report.auctions_replayed == 1 and report.receipts == 0
    assert "replaying its inputs gives winner" in report.discrepancies[0].detail


async def test_one_receipt_is_proven_to_be_in_the_log(
    tmp_path: Path, story: Story, log_key: PrivateKey
) -> None:
    path = tmp_path / "c.db"
    write_log(path, log_key, story.honest())
    async with serving(path, log_key) as url:
        report = await audit.check_receipt(url, story.sealed[1].envelope, wait_s=0)
        assert report.ok, report.discrepancies
        assert (report.index, report.size, report.seq, report.charged) == (6, 12, 2, 200_000)
        acknowledged = await audit.check_receipt(
            url,
            story.sealed[1].envelope,
            wait_s=0,
            acknowledgement=story.acknowledgement(story.sealed[1], 6),
        )
        assert acknowledged.ok, acknowledged.discrepancies
        assert acknowledged.delta == 200_000
        misplaced = await audit.check_receipt(
            url,
            story.sealed[1].envelope,
            wait_s=0,
            acknowledgement=story.acknowledgement(story.sealed[1], 7),
        )
        assert codes(misplaced) == {"bad_acknowledgement"}
        forged = await audit.check_receipt(
            url,
            story.sealed[1].envelope,
            wait_s=0,
            acknowledgement=story.acknowledgement(story.sealed[1], 6, PrivateKey.generate()),
        )
        assert codes(forged) == {"bad_acknowledgement"}
        stranger = story.next_receipt()
        missing = await audit.check_receipt(url, stranger.envelope, wait_s=0)
        assert codes(missing) == {"receipt_not_logged"}


async def test_the_cli_exits_non_zero_naming_each_discrepancy(
    tmp_path: Path, story: Story, log_key: PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    def options(parser: argparse.ArgumentParser, top: bool) -> None:
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(prog="suanli")
    parser.add_argument("--json", action="store_true", default=False)
    audit.add_commands(parser.add_subparsers(), options)
    path, state = tmp_path / "c.db", tmp_path / "audit.json"
    write_log(path, log_key, story.honest())
    async with serving(path, log_key) as url:
        args = parser.parse_args(["audit", "verify", "--state", str(state)])
        assert await asyncio.to_thread(audit.main, args, url) == audit.EXIT_OK
        out = capsys.readouterr().out
        assert "auctions replayed" in out and "¥0.60" in out and "verified" in out
    write_log(path, log_key, _missing_receipt(story))
    async with serving(path, log_key) as url:
        args = parser.parse_args(["audit", "verify", "--state", str(state), "--json"])
        assert await asyncio.to_thread(audit.main, args, url) == audit.EXIT_DISCREPANCY
        result = json.loads(capsys.readouterr().out)
        assert not result["ok"] and "inconsistent_history" in {
            d["code"] for d in result["discrepancies"]
        }
        receipt_file = tmp_path / "r.bin"
        receipt_file.write_bytes(story.sealed[0].envelope)
        args = parser.parse_args(["audit", "receipt", str(receipt_file), "--json"])
        assert await asyncio.to_thread(audit.main, args, url) == audit.EXIT_OK
        assert json.loads(capsys.readouterr().out)["index"] == 5
        missing = parser.parse_args(
            [
                "audit",
                "receipt",
                str(receipt_file),
                "--acknowledgement",
                str(tmp_path / "no-such-ack.bin"),
            ]
        )
        assert await asyncio.to_thread(audit.main, missing, url) == audit.EXIT_USAGE
        assert (
            "cannot read" in capsys.readouterr().err
            and "no-such-ack.bin" in missing.acknowledgement.name
        )
        (tmp_path / "junk.bin").write_bytes(b"\x93 not an acknowledgement")
        junk = parser.parse_args(
            [
                "audit",
                "receipt",
                str(receipt_file),
                "--acknowledgement",
                str(tmp_path / "junk.bin"),
                "--json",
            ]
        )
        assert await asyncio.to_thread(audit.main, junk, url) == audit.EXIT_DISCREPANCY
        assert "bad_acknowledgement" in {
            d["code"] for d in json.loads(capsys.readouterr().out)["discrepancies"]
        }
    assert audit.main(args, None) == audit.EXIT_USAGE
    assert audit.main(args, "http://example.com") == audit.EXIT_USAGE
    assert "plain HTTP" in capsys.readouterr().err


# -- the coordinator itself --------------------------------------------------------------------


async def test_the_running_coordinator_logs_what_the_auditor_verifies(
    tmp_path: Path, coordinator: Any, cleanup: list[Any]
) -> None:
    from coordinator_harness import started_lease

    started = await started_lease(coordinator, cleanup, 6_000_000)
    agent, lease, job_id = started.agent, started.lease, started.job_id
    sealed: list[SealedReceipt] = []
    for seq in (1, 2, 3):
        gpu_ms = seq * 100
        receipt = Receipt(
            lease_id=lease["lease_id"],
            job_id=job_id,
            agent_id=agent.agent_id,
            seq=seq,
            prev=sealed[-1].digest if sealed else GENESIS_PREV,
            issued_at_ms=time.time_ns() // 1_000_000,
            gpu_uuids=tuple(lease["gpu_uuids"]),
            gpu_ms=gpu_ms,
            energy_mj=seq,
            utilization_pct=50,
            peak_memory_bytes=1 << 20,
            price_per_gpu_hour=lease["price_per_gpu_hour"],
            amount=usage_amount(gpu_ms, lease["price_per_gpu_hour"]),
            final=False,
            exit_code=None,
        )
        sealed.append(seal_receipt(receipt, agent.key))
    answer = await agent.client.signed(
        "/v1/agent/receipts", {"receipts": [s.envelope for s in sealed]}
    )
    assert [r["status"] for r in answer["results"]] == ["accepted"] * 3, answer
    state = tmp_path / "audit.json"
    for _ in range(100):
        report = await audit.verify_log(coordinator.url, None, state)
        if report.receipts == 3:
            break
        await asyncio.sleep(0.1)
    assert report.ok, report.discrepancies
    assert (report.receipts, report.leases, report.auctions_replayed) == (3, 1, 1)
    assert report.acknowledgements == 1  # one batch, one countersignature, logged after it
    assert report.agents == 2
    assert report.charged == sealed[-1].receipt.amount
    proof = await audit.check_receipt(
        coordinator.url,
        sealed[1].envelope,
        state_path=state,
        acknowledgement=answer["acknowledgements"][0],
    )
    assert proof.ok, proof.discrepancies
    assert proof.delta == sealed[1].receipt.amount - sealed[0].receipt.amount


async def test_a_running_coordinator_signs_with_a_rotated_key_and_the_auditor_follows(
    tmp_path: Path, coordinator: Any, cleanup: list[Any]
) -> None:
    from coordinator_harness import started_lease

    started = await started_lease(coordinator, cleanup, 6_000_000)
    agent, lease, job_id = started.agent, started.lease, started.job_id
    sealed: list[SealedReceipt] = []

    async def send(count: int) -> tuple[list[SealedReceipt], bytes]:
        batch = []
        for _ in range(count):
            seq = len(sealed) + 1
            gpu_ms = seq * 100
            receipt = Receipt(
                lease_id=lease["lease_id"],
                job_id=job_id,
                agent_id=agent.agent_id,
                seq=seq,
                prev=sealed[-1].digest if sealed else GENESIS_PREV,
                issued_at_ms=time.time_ns() // 1_000_000,
                gpu_uuids=tuple(lease["gpu_uuids"]),
                gpu_ms=gpu_ms,
                energy_mj=seq,
                utilization_pct=50,
                peak_memory_bytes=1 << 20,
                price_per_gpu_hour=lease["price_per_gpu_hour"],
                amount=usage_amount(gpu_ms, lease["price_per_gpu_hour"]),
                final=False,
                exit_code=None,
            )
            sealed.append(seal_receipt(receipt, agent.key))
            batch.append(sealed[-1])
        answer = await agent.client.signed(
            "/v1/agent/receipts", {"receipts": [s.envelope for s in batch]}
        )
        assert [r["status"] for r in answer["results"]] == ["accepted"] * count, answer
        return batch, bytes(answer["acknowledgements"][0])

    async def audited(receipts: int) -> audit.AuditReport:
        for _ in range(100):
            report = await audit.verify_log(coordinator.url, None, state)
            if report.receipts == receipts:
                break
            await asyncio.sleep(0.1)
        assert report.ok, report.discrepancies
        return report

    state = tmp_path / "audit.json"
    before, old_acknowledgement = await send(2)
    old_pin = (await audited(2)).log_key
    assert json.loads(state.read_text())["log_key"] == old_pin

    rotated = coordinator.admin_json("rotate-log-key")
    old_key, new_key = (
        parse_verifier_key(rotated["old_log_key"]),
        parse_verifier_key(rotated["new_log_key"]),
    )
    assert str(old_key) == old_pin and new_key.name == old_key.name  # the log keeps its name
    assert new_key.public != old_key.public
    archived = Path(rotated["archived_key"])
    assert archived.stat().st_mode & 0o777 == 0o600
    assert load_private_key(archived).public == old_key.public  # the old key is kept
    assert load_private_key(Path(f"{coordinator.db}.key")).public == new_key.public
    async with audit.LogClient(coordinator.url) as client:
        for _ in range(40):  # the server follows within a poll
            if (await client.text("/v1/log/key")).strip() == str(new_key):
                break
            await asyncio.sleep(0.05)
        assert (await client.text("/v1/log/key")).strip() == str(new_key)
        note = await client.text("/v1/log/checkpoint")
    checkpoint = open_checkpoint(note, new_key, new_key.name)
    assert checkpoint.size > rotated["log_index"]

    after, new_acknowledgement = await send(2)
    L.open_acknowledgement(new_acknowledgement, new_key.public)
    with pytest.raises(SuanliError):
        L.open_acknowledgement(new_acknowledgement, old_key.public)
    report = await audited(4)
    assert report.key_trust == "pinned" and report.acknowledgements == 2
    assert report.log_key == str(new_key) == json.loads(state.read_text())["log_key"]
    for receipt, acknowledgement in (
        (before[1], old_acknowledgement),
        (after[1], new_acknowledgement),
    ):
        proof = await audit.check_receipt(
            coordinator.url, receipt.envelope, old_pin, acknowledgement=acknowledgement
        )
        assert proof.ok, proof.discrepancies

    coordinator.restart()  # the new key, and the log's name, survive a restart
    async with audit.LogClient(coordinator.url) as client:
        assert (await client.text("/v1/log/key")).strip() == str(new_key)
    assert (await audit.verify_log(coordinator.url, old_pin, None)).ok
