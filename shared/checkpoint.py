"""C2SP tlog checkpoints (https://c2sp.org/tlog-checkpoint): the signed tree head of our log."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from shared.errors import NoteError
from shared.identity import PrivateKey, VerifierKey
from shared.note import check_text, decode_base64, open_note, sign_note

ROOT_HASH_SIZE = 32
MAX_TREE_SIZE = (1 << 64) - 1  # sizes are uint64 in every other implementation
_TREE_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: who (origin), how many leaves (size) and the RFC 6962 root hash."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "the origin")
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise NoteError("the tree size must be an integer")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise NoteError(f"the tree size must be between 0 and {MAX_TREE_SIZE}")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != ROOT_HASH_SIZE:
            raise NoteError(f"the root hash must be {ROOT_HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple):
            raise NoteError("the extension lines must be a tuple of strings")
        for number, extension in enumerate(self.extensions, start=1):
            _check_line(extension, f"extension line {number}")
        check_text(self.body())

    def body(self) -> str:
        """The note text: origin, size, base64 root hash, extension lines; each ends in newline."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        return "".join(line + "\n" for line in [*lines, *self.extensions])


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Parse checkpoint note text strictly: one spelling per checkpoint, or NoteError."""
    check_text(text)
    lines = text.split("\n")[:-1]
    if len(lines) < 3:
        raise NoteError("a checkpoint has at least three lines: origin, tree size and root hash")
    for number, line in enumerate(lines, start=1):
        if not line:
            raise NoteError(f"line {number} of the checkpoint is empty; every line must have text")
    origin, size_text, root_text, *extensions = lines
    if not _TREE_SIZE.fullmatch(size_text):
        raise NoteError(
            f"the tree size {size_text[:40]!r} must be ASCII decimal digits without leading zeros"
        )
    root_hash = decode_base64(root_text, "the root hash")
    return Checkpoint(origin, int(size_text), root_hash, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, name: str, key: PrivateKey) -> str:
    """Sign a checkpoint as `name` (by convention the log's origin), returning the signed note."""
    return sign_note(cp.body(), name, key)


def open_checkpoint(
    note: str | bytes, verifier: VerifierKey, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint against the log's key and, if given, its expected origin."""
    checkpoint = parse_checkpoint_body(open_note(note, [verifier]).text)
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(f"the checkpoint is for the log {checkpoint.origin!r}, not {origin!r}")
    return checkpoint


def _check_line(line: str, what: str) -> None:
    if not isinstance(line, str) or not line:
        raise NoteError(f"{what} must be a non-empty string")
    if "\n" in line:
        raise NoteError(f"{what} must be a single line")
