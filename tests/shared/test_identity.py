"""Identities: key files, key ids, agent ids and C2SP verifier keys."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from shared.errors import KeyMaterialError
from shared.identity import (
    PrivateKey,
    PublicKey,
    agent_id_for,
    load_private_key,
    parse_verifier_key,
    save_private_key,
    verifier_key,
)

SPEC_VERIFIER_KEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"


def test_key_file_is_written_0600_and_loads_back(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    path = tmp_path / "agent.key"
    save_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_private_key(path).public == key.public


def test_key_file_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        save_private_key(tmp_path / "k", PrivateKey.generate())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700 | 0o004])
def test_group_or_world_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "agent.key"
    save_private_key(path, PrivateKey.generate())
    path.chmod(mode)
    with pytest.raises(KeyMaterialError, match="must be 0600"):
        load_private_key(path)


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    first = PrivateKey.generate()
    save_private_key(path, first)
    with pytest.raises(KeyMaterialError, match="refusing to overwrite"):
        save_private_key(path, PrivateKey.generate())
    assert load_private_key(path).public == first.public


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "not a PKCS#8"), (b"-----BEGIN PRIVATE KEY-----\ngarbage\n", "not a readable")],
)
def test_bad_key_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "agent.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyMaterialError, match=message):
        load_private_key(path)


def test_missing_key_file_says_where(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="no key file at"):
        load_private_key(tmp_path / "absent.key")


def test_agent_id_is_hex_sha256_of_raw_public_key() -> None:
    key = PrivateKey.generate()
    expected = hashlib.sha256(key.public.raw).hexdigest()
    assert key.public.agent_id == expected == agent_id_for(key.public.raw)
    assert key.public.key_id == bytes.fromhex(expected)


def test_public_keys_compare_by_value() -> None:
    key = PrivateKey.generate()
    assert PublicKey(key.public.raw) == key.public
    assert len({PublicKey(key.public.raw), key.public}) == 1


@pytest.mark.parametrize("raw", [b"", bytes(31), bytes(33), "x" * 32])
def test_public_key_length_is_checked(raw: object) -> None:
    with pytest.raises(KeyMaterialError, match="32 bytes"):
        PublicKey(raw)  # type: ignore[arg-type]


def test_spec_verifier_key_parses_and_round_trips() -> None:
    vkey = parse_verifier_key(SPEC_VERIFIER_KEY)
    assert vkey.name == "example.com/foo"
    assert vkey.key_hash == bytes.fromhex("530d903a")
    assert str(vkey) == SPEC_VERIFIER_KEY


def test_our_verifier_keys_round_trip() -> None:
    key = PrivateKey.generate()
    vkey = verifier_key("suanli.example/log", key.public)
    assert parse_verifier_key(str(vkey)) == vkey


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("example.com/foo+530d903a", "form name"),
        ("example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "does not match"),
        ("example.com/bar+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "does not match"),
        ("example.com/foo+530D903A+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "lowercase hex"),
        ("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2", "hex/base64"),
        ("example.com/foo+530d903a+AkyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "hex/base64"),
        ("example.com/foo+530d903a+AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "Ed25519"),
        ("+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "non-empty"),
        ("a b+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "no spaces"),
    ],
)
def test_bad_verifier_keys_are_refused(text: str, message: str) -> None:
    with pytest.raises(KeyMaterialError, match=message):
        parse_verifier_key(text)


def test_verifier_keys_whose_base64_holds_plus_and_slash_round_trip() -> None:
    texts = [
        str(verifier_key("log", PrivateKey.from_seed(bytes([i]) * 32).public)) for i in range(64)
    ]
    assert any("+" in text.split("+", 2)[2] for text in texts)
    for text in texts:
        assert str(parse_verifier_key(text)) == text
