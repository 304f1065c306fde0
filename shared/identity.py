"""Ed25519 identities: key generation, 0600 key files, key ids, agent ids and C2SP verifier keys."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import KeyMaterialError

PUBLIC_KEY_SIZE = 32
PRIVATE_KEY_SIZE = 32
SIGNATURE_SIZE = 64
KEY_ID_SIZE = 32
NOTE_KEY_HASH_SIZE = 4
_ALG_ED25519 = b"\x01"
_PEM_HEADER = b"-----BEGIN PRIVATE KEY-----"


class PrivateKey:
    """An Ed25519 signing key with its public half and key id computed once."""

    __slots__ = ("_key", "public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = PublicKey(
            key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> PrivateKey:
        if not isinstance(seed, bytes) or len(seed) != PRIVATE_KEY_SIZE:
            raise KeyMaterialError(f"an Ed25519 seed is {PRIVATE_KEY_SIZE} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seed(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


class PublicKey:
    """An Ed25519 verifying key; equal keys compare and hash equal."""

    __slots__ = ("raw", "key_id", "agent_id", "_key")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != PUBLIC_KEY_SIZE:
            raise KeyMaterialError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
        try:
            self._key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise KeyMaterialError("the bytes are not a valid Ed25519 public key") from exc
        self.raw = raw
        self.key_id = hashlib.sha256(raw).digest()
        self.agent_id = self.key_id.hex()

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.key_id.hex()[:16]}…)"


def agent_id_for(public_key: bytes) -> str:
    """agent_id: lowercase hex SHA-256 of the raw 32-byte public key."""
    return PublicKey(public_key).agent_id


def save_private_key(path: Path, key: PrivateKey) -> None:
    """Write the key as PKCS#8 PEM, created with mode 0600; never overwrites an existing key."""
    pem = key._key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyMaterialError(f"{path} already exists; refusing to overwrite a key") from exc
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_private_key(path: Path) -> PrivateKey:
    """Read a key written by save_private_key, refusing a file others can read or write."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise KeyMaterialError(f"no key file at {path}") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyMaterialError(
            f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; a private key must be 0600 "
            f"(chmod 600 {path})"
        )
    data = path.read_bytes()
    if not data.startswith(_PEM_HEADER):
        raise KeyMaterialError(f"{path} is not a PKCS#8 PEM private key")
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise KeyMaterialError(f"{path} is not a readable private key") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyMaterialError(f"{path} holds a key that is not Ed25519")
    return PrivateKey(loaded)


# C2SP signed-note verifier keys: name+hex(keyhash)+base64(0x01 || pubkey)


@dataclass(frozen=True)
class VerifierKey:
    """A C2SP signed-note verifier key: the signer's name, its 4-byte key hash and public key."""

    name: str
    key_hash: bytes
    public: PublicKey

    def __str__(self) -> str:
        encoded = base64.b64encode(_ALG_ED25519 + self.public.raw).decode()
        return f"{self.name}+{self.key_hash.hex()}+{encoded}"


def check_note_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise KeyMaterialError("a signer name must be a non-empty string")
    if "+" in name or any(ch.isspace() for ch in name) or not name.isprintable():
        raise KeyMaterialError(
            f"signer name {name!r} must be printable and contain no spaces or '+'"
        )


def note_key_hash(name: str, public: PublicKey) -> bytes:
    """C2SP key hash: the first 4 bytes of SHA-256(name || 0x0A || 0x01 || pubkey)."""
    check_note_name(name)
    digest = hashlib.sha256(name.encode() + b"\n" + _ALG_ED25519 + public.raw).digest()
    return digest[:NOTE_KEY_HASH_SIZE]


def verifier_key(name: str, public: PublicKey) -> VerifierKey:
    return VerifierKey(name, note_key_hash(name, public), public)


def parse_verifier_key(text: str) -> VerifierKey:
    """Parse `name+hex8+base64(0x01||pubkey)`, checking the key hash against name and key."""
    if not isinstance(text, str):
        raise KeyMaterialError("a verifier key is a string")
    name, plus, rest = text.strip().partition("+")
    hash_hex, plus_again, key_b64 = rest.partition("+")
    if not plus or not plus_again:
        raise KeyMaterialError("a verifier key has the form name+keyhash+base64key")
    check_note_name(name)
    if len(hash_hex) != 2 * NOTE_KEY_HASH_SIZE or hash_hex != hash_hex.lower():
        raise KeyMaterialError("a verifier key's hash is 8 lowercase hex digits")
    try:
        key_hash = bytes.fromhex(hash_hex)
        blob = base64.b64decode(key_b64, validate=True)
    except ValueError as exc:
        raise KeyMaterialError("a verifier key's hash or key is not valid hex/base64") from exc
    if len(blob) != 1 + PUBLIC_KEY_SIZE or blob[:1] != _ALG_ED25519:
        raise KeyMaterialError("a verifier key must hold an Ed25519 key (0x01 and 32 bytes)")
    public = PublicKey(blob[1:])
    if note_key_hash(name, public) != key_hash:
        raise KeyMaterialError("the verifier key's hash does not match its name and key")
    return VerifierKey(name, key_hash, public)
