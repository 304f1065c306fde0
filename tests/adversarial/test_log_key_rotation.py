"""Attacks on the log key's rotation: whoever cannot sign with the key in force cannot move the
log to a key of their own, and a checkpoint signed by a key the chain does not reach is refused,
however self-consistent the log it covers."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest
from log_story import Story, codes, log_key, rotated, serving, story, verify, write_log  # noqa: F401 - fixtures

from coordinator import tlog
from coordinator.client import audit
from coordinator.tlog import routes
from shared.identity import PrivateKey


async def _pinned(
    tmp_path: Path, database_location: str, story: Story, log_key: PrivateKey
) -> tuple[Path, Path, str]:
    """An auditor who verified the honest log once and pinned its key."""
    path, state = database_location, tmp_path / "audit.json"
    write_log(path, log_key, story.honest())
    assert (await verify(path, log_key, state)).ok
    return path, state, state.read_text()


async def test_a_rotation_signed_by_another_key_than_the_one_in_force_fails_the_audit(
    tmp_path: Path,
    database_location: str,
    story: Story,
    log_key: PrivateKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, state, before = await _pinned(tmp_path, database_location, story, log_key)
    origin = tlog.default_origin(log_key)
    thief, forger = PrivateKey.generate(), PrivateKey.generate()
    # names the log's key as the old one, but the forger signed it
    write_log(path, thief, rotated(story, thief, signer=forger), origin)
    report = await verify(path, thief, state, origin=origin)
    assert {"log_key_signature", "checkpoint_signature"} <= codes(report)
    assert any(d.code == "log_key_signature" and d.index == 13 for d in report.discrepancies)
    assert not report.state_saved and state.read_text() == before
    # an auditor who trusts the thief's key on first use: the chain does not reach it
    fresh = await verify(path, thief, None, origin=origin)
    assert codes(fresh) == {"log_key_signature", "untrusted_log_key"}
    # `suanli audit verify` exits 3 naming what failed
    parser = argparse.ArgumentParser(prog="suanli")
    parser.add_argument("--json", action="store_true", default=False)
    audit.add_commands(
        parser.add_subparsers(),
        lambda leaf, top: leaf.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS
        ),
    )
    args = parser.parse_args(["audit", "verify", "--state", str(state), "--json"])
    async with serving(path, thief, origin=origin) as url:
        assert await asyncio.to_thread(audit.main, args, url) == audit.EXIT_DISCREPANCY
    failed = json.loads(capsys.readouterr().out)["discrepancies"]
    assert any(
        d["code"] == "log_key_signature" and "not signed by the key in force" in d["detail"]
        for d in failed
    )
    assert state.read_text() == before


async def test_a_rotation_from_a_key_the_log_never_had_fails_the_audit(
    tmp_path: Path, database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path, state, before = await _pinned(tmp_path, database_location, story, log_key)
    origin = tlog.default_origin(log_key)
    thief, accomplice = PrivateKey.generate(), PrivateKey.generate()
    # a chain of its own: the first rotation says the log's first key was the thief's
    leaves = story.honest() + [
        story.acknowledgement_entry(),
        story.rotation_entry(accomplice, old_key=thief),
    ]
    write_log(path, accomplice, leaves, origin)
    report = await verify(path, accomplice, state, origin=origin)
    assert codes(report) == {"untrusted_log_key"}  # and nothing signed by the thieves is believed
    assert str(tlog.verifier_key_text(log_key, origin)) in next(
        d.detail for d in report.discrepancies if d.code == "untrusted_log_key"
    )
    assert not report.state_saved and state.read_text() == before


async def test_a_rotation_signed_by_a_retired_key_fails_the_audit(
    tmp_path: Path, database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path, state, _ = await _pinned(tmp_path, database_location, story, log_key)
    origin = tlog.default_origin(log_key)
    successor, thief = PrivateKey.generate(), PrivateKey.generate()
    # whoever kept the old key after it was rotated out tries to rotate again with it
    leaves = rotated(story, successor) + [story.rotation_entry(thief)]
    write_log(path, thief, leaves, origin)
    report = await verify(path, thief, state, origin=origin)
    assert {"log_key_signature", "checkpoint_signature"} <= codes(report)
    assert [d.index for d in report.discrepancies if d.code == "log_key_signature"] == [17]
    assert "another key than the one expected" in next(
        d.detail for d in report.discrepancies if d.code == "log_key_signature"
    )


async def test_a_checkpoint_signed_by_an_unchained_key_fails_the_audit(
    tmp_path: Path, database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path, state, before = await _pinned(tmp_path, database_location, story, log_key)
    origin = tlog.default_origin(log_key)
    successor, stranger = PrivateKey.generate(), PrivateKey.generate()
    # an honest rotation in the log, but the coordinator signs with neither key
    write_log(path, stranger, rotated(story, successor), origin)
    report = await verify(path, stranger, state, origin=origin)
    assert codes(report) == {"checkpoint_signature", "log_key_changed"}
    detail = next(d.detail for d in report.discrepancies if d.code == "checkpoint_signature")
    assert tlog.verifier_key_text(successor, origin) in detail and "in force" in detail
    assert not report.state_saved and state.read_text() == before
    # the old key after the rotation is no better: the chain has moved on from it
    write_log(path, log_key, rotated(Story(log_key), successor), origin)
    assert "checkpoint_signature" in codes(await verify(path, log_key, state, origin=origin))
    # and with no rotation at all, a key swapped under the auditor is refused as before
    write_log(path, stranger, story.honest(), origin)
    assert "checkpoint_signature" in codes(await verify(path, stranger, state, origin=origin))
    assert state.read_text() == before


async def test_an_acknowledgement_by_the_old_key_after_the_rotation_fails_the_audit(
    tmp_path: Path, database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path, state, _ = await _pinned(tmp_path, database_location, story, log_key)
    origin = tlog.default_origin(log_key)
    successor = PrivateKey.generate()
    leaves = rotated(story, successor) + [story.acknowledgement_entry()]  # by the retired key
    write_log(path, successor, leaves, origin)
    report = await verify(path, successor, state, origin=origin)
    assert codes(report) == {"bad_acknowledgement"}
    assert [d.index for d in report.discrepancies] == [17]


async def test_one_receipt_is_refused_against_a_checkpoint_the_chain_does_not_reach(
    database_location: str, story: Story, log_key: PrivateKey
) -> None:
    path = database_location
    origin = tlog.default_origin(log_key)
    thief, forger = PrivateKey.generate(), PrivateKey.generate()
    write_log(path, thief, rotated(story, thief, signer=forger), origin)
    trusted = tlog.verifier_key_text(log_key, origin)
    async with serving(path, thief, origin=origin) as url:
        report = await audit.check_receipt(url, story.sealed[1].envelope, trusted, wait_s=0)
    assert {"log_key_signature", "checkpoint_signature"} <= codes(report)


async def test_a_rotation_hidden_from_a_receipt_holder_leaves_the_checkpoint_unverified(
    database_location: str, story: Story, log_key: PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = database_location
    origin = tlog.default_origin(log_key)
    successor = PrivateKey.generate()
    write_log(path, successor, rotated(story, successor), origin)
    trusted = tlog.verifier_key_text(log_key, origin)
    async with serving(path, successor, origin=origin) as url:
        honest = await audit.check_receipt(url, story.sealed[3].envelope, trusted, wait_s=0)
        assert honest.ok, honest.discrepancies
        # the coordinator lists no rotation, hoping the receipt is judged by the old key alone
        monkeypatch.setattr(routes, "log_key_changes", lambda db: [])
        report = await audit.check_receipt(url, story.sealed[3].envelope, trusted, wait_s=0)
    assert "checkpoint_signature" in codes(report)
