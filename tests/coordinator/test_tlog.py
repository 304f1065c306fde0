"""The transparency log: entries, the tree in the database, checkpoints and the public API."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from log_story import (  # noqa: F401 - fixtures among them
    T0,
    USCC,
    Story,
    log_key,
    open_db,
    serving,
    story,
    usage_postings,
    write_log,
)

from coordinator import accounts, tlog
from coordinator.client import audit
from coordinator.errors import NotFound, Unprocessable
from coordinator.storage import Database, IntegrityError, Session, transaction
from coordinator.tlog import proofs
from shared import canonical, merkle
from shared import log_entries as L
from shared.checkpoint import open_checkpoint
from shared.identity import PrivateKey, parse_verifier_key, verifier_key


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
    database_location: str, story: Story
) -> None:
    path = database_location
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


def test_a_malformed_entry_appends_nothing(database_location: str, story: Story) -> None:
    db = open_db(database_location)
    with transaction(db):
        tlog.append_entries(db, story.opening())
    with pytest.raises(L.LogEntryError), transaction(db):
        tlog.append_entries(db, [story.agent_entry(story.agent), b"\x93junk"])
    assert tlog.size(db) == 5
    assert db.conn.execute("SELECT COUNT(*) FROM log_entries").fetchone()[0] == 5


def test_registrations_made_before_the_log_are_logged_once(database_location: str) -> None:
    db = open_db(database_location)
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


def test_an_idempotent_command_retried_logs_once(database_location: str, story: Story) -> None:
    db = open_db(database_location)
    payment, close = story.closing()
    with transaction(db):
        assert tlog.append_unless_logged(db, payment) == 0
        assert tlog.append_unless_logged(db, payment) is None
        assert tlog.append_unless_logged(db, close) == 1
        assert tlog.append_unless_logged(db, close) is None
    assert tlog.size(db) == 2


def test_the_voucher_policy_is_logged_when_it_changes(database_location: str) -> None:
    db = open_db(database_location)
    policy = {"coverage_bps": 5000, "fiscal_year": 2025, "providers_may_be_subsidised": True}
    with transaction(db):
        assert tlog.log_voucher_policy(db, policy, T0)
        assert not tlog.log_voucher_policy(db, dict(policy), T0 + 1)
        assert tlog.log_voucher_policy(db, {**policy, "coverage_bps": 4000}, T0 + 2)
    assert tlog.size(db) == 2


def test_logged_entries_cannot_be_updated_or_deleted(database_location: str, story: Story) -> None:
    db = open_db(database_location)
    with transaction(db):
        tlog.append_entries(db, story.opening())
    for statement in (
        "UPDATE log_entries SET data = data || data WHERE idx = 1",
        "DELETE FROM log_entries WHERE idx = 4",
        *(["TRUNCATE log_entries"] if db.engine == "postgresql" else []),
    ):
        with pytest.raises(IntegrityError, match="append-only"):
            db.conn.execute(statement)


def test_inclusion_and_consistency_proofs_verify(database_location: str, story: Story) -> None:
    db = open_db(database_location)
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
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    db = open_db(database_location)
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
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path = database_location
    open_db(path).conn.close()
    database = Database(path)
    database.start()
    origin = tlog.default_origin(log_key)
    loop = asyncio.create_task(tlog.checkpoint_loop(database, log_key, origin, 0.01))
    try:
        for batch in (story.opening(), story.receipts(2)):

            def append(db: Session, batch: list[bytes] = batch) -> int:
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

        def signed(db: Session) -> int:
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
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path = database_location
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
    database_location: str, story: Story, log_key: PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proofs, "MAX_PAGE", 4)
    path = database_location
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
    database_location: str,
    story: Story,
    log_key: PrivateKey,
    route: str,
    query: dict[str, str],
    status: int,
    words: str,
) -> None:
    path = database_location
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
