"""The log key's rotations as the auditor follows them, and the auditor's other commands: auction
replay, the single-receipt proof and the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest
from databases import closed_after_the_test
from log_story import (  # noqa: F401 - fixtures among them
    Story,
    codes,
    log_key,
    rotated,
    serving,
    story,
    verify,
    write_log,
)
from log_tampering import (
    missing_receipt,
    rigged_auction,
)

from coordinator import tlog
from coordinator.client import audit
from coordinator.storage import connect
from shared import log_entries as L
from shared.checkpoint import open_checkpoint
from shared.identity import PrivateKey, load_private_key, parse_verifier_key, verifier_key


async def test_a_rotated_log_is_followed_from_the_old_key_and_the_new_one_is_pinned(
    tmp_path: Path, database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path, state = database_location, tmp_path / "audit.json"
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
    tmp_path: Path, database_location: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from coordinator.cli import main

    key_path = tmp_path / "log.key"
    config = tmp_path / "coordinator.toml"
    config.write_text(f"[coordinator]\nlog_key_file = {json.dumps(str(key_path))}\n")
    admin = ["admin", "--db", database_location, "--config", str(config), "rotate-log-key"]
    assert main(admin) == 0
    assert "log key rotated at entry 0" in capsys.readouterr().out
    assert main([*admin, "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    retired = sorted(tmp_path.glob("log.key.*.retired"))
    assert len(retired) == 2 and all(p.stat().st_mode & 0o777 == 0o600 for p in retired)
    db = closed_after_the_test(connect(database_location))
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


async def test_replay_auctions_alone(
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path = database_location
    write_log(path, log_key, rigged_auction(story))
    async with serving(path, log_key) as url:
        report = await audit.replay_auctions(url, None)
    assert codes(report) == {"auction_mismatch"}
    assert report.auctions_replayed == 1 and report.receipts == 0
    assert "replaying its inputs gives winner" in report.discrepancies[0].detail


async def test_one_receipt_is_proven_to_be_in_the_log(
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path = database_location
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
    tmp_path: Path,
    database_location: str,
    story: Story,
    log_key: PrivateKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def options(parser: argparse.ArgumentParser, top: bool) -> None:
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(prog="suanli")
    parser.add_argument("--json", action="store_true", default=False)
    audit.add_commands(parser.add_subparsers(), options)
    path, state = database_location, tmp_path / "audit.json"
    write_log(path, log_key, story.honest())
    async with serving(path, log_key) as url:
        args = parser.parse_args(["audit", "verify", "--state", str(state)])
        assert await asyncio.to_thread(audit.main, args, url) == audit.EXIT_OK
        out = capsys.readouterr().out
        assert "auctions replayed" in out and "¥0.60" in out and "verified" in out
    write_log(path, log_key, missing_receipt(story))
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
