"""C2SP signed notes and tlog checkpoints: the published vectors, tampering, and strict parsing."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.checkpoint import (
    Checkpoint,
    open_checkpoint,
    parse_checkpoint_body,
    sign_checkpoint,
)
from shared.errors import KeyMaterialError, NoteError
from shared.identity import PrivateKey, VerifierKey, parse_verifier_key, verifier_key
from shared.note import (
    MAX_NOTE_SIZE,
    MAX_SIGNATURES,
    NoteSignature,
    add_signature,
    open_note,
    parse_note,
    sign_note,
)

# From c2sp.org/signed-note's history and golang.org/x/mod/sumdb/note's documentation.
SPEC_VERIFIER = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_TEXT = "This is an example message.\n"
SPEC_NOTE = (
    SPEC_TEXT + "\n"
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3"
    "mFXmRKuwHjG1Yu72IneyaQM=\n"
)
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n"
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngo"
    "tpRZb6KE6RyyBwJnAM=\n"
)

KEY_A = PrivateKey.from_seed(b"\x0a" * 32)
KEY_B = PrivateKey.from_seed(b"\x0b" * 32)
KEY_C = PrivateKey.from_seed(b"\x0c" * 32)
LOG = "log.suanli.example/main"
ROOT = bytes(range(32))


def verifier(name: str, key: PrivateKey) -> VerifierKey:
    return verifier_key(name, key.public)


# --- the published examples ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("vkey", "note", "text"),
    [(SPEC_VERIFIER, SPEC_NOTE, SPEC_TEXT), (GO_VERIFIER, GO_NOTE, GO_TEXT)],
    ids=["c2sp", "go-sumdb-note"],
)
def test_published_examples_verify(vkey: str, note: str, text: str) -> None:
    trusted = parse_verifier_key(vkey)
    opened = open_note(note, [trusted])
    assert opened.text == text
    assert opened.verified_by == (trusted,)
    assert open_note(note.encode(), [trusted]).text == text


@pytest.mark.parametrize("mask", [0x01, 0x02, 0x03, 0x20, 0x80, 0xFF])
def test_spec_example_with_any_byte_changed_is_rejected(mask: int) -> None:
    trusted = parse_verifier_key(SPEC_VERIFIER)
    original = SPEC_NOTE.encode()
    for position in range(len(original)):
        tampered = bytearray(original)
        tampered[position] ^= mask
        with pytest.raises(NoteError):
            open_note(bytes(tampered), [trusted])


@settings(max_examples=300)
@given(data=st.data())
def test_spec_example_with_any_byte_replaced_is_rejected(data: st.DataObject) -> None:
    original = SPEC_NOTE.encode()
    position = data.draw(st.integers(0, len(original) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != original[position]))
    tampered = original[:position] + bytes([value]) + original[position + 1 :]
    with pytest.raises(NoteError):
        open_note(tampered, [parse_verifier_key(SPEC_VERIFIER)])


def test_noncanonical_base64_of_the_same_signature_is_rejected() -> None:
    # 'M' and 'N' differ only in the two padding bits of the last character, so a lenient
    # decoder reads the same signature; the note's bytes changed and it must not open.
    tampered = SPEC_NOTE.replace("aQM=", "aQN=")
    assert base64.b64decode(tampered.split()[-1]) == base64.b64decode(SPEC_NOTE.split()[-1])
    with pytest.raises(NoteError, match="canonical"):
        open_note(tampered, [parse_verifier_key(SPEC_VERIFIER)])


def test_spec_example_opened_with_another_key_is_rejected() -> None:
    with pytest.raises(NoteError, match="not signed by any trusted key"):
        open_note(SPEC_NOTE, [verifier("example.com/foo", KEY_A)])


# --- signing and opening ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "hello\n",
        "\n",
        "two\nlines\n",
        "a blank line\n\ninside\n",
        "ends in a blank line\n\n",
        "算力 — em dash mid-line and \u00a0 non-ASCII\n",
        "\u2014not followed by a space\n",
    ],
)
def test_signed_note_round_trips(text: str) -> None:
    note = sign_note(text, LOG, KEY_A)
    assert note.startswith(text + "\n\u2014 " + LOG + " ")
    opened = open_note(note, [verifier(LOG, KEY_A)])
    assert opened.text == text
    parsed_text, signatures = parse_note(note)
    assert parsed_text == text
    assert [(s.name, s.key_hash, len(s.signature)) for s in signatures] == [
        (LOG, verifier(LOG, KEY_A).key_hash, 64)
    ]


@settings(max_examples=50)
@given(st.text(st.characters(codec="utf-8", min_codepoint=0x20), max_size=40))
def test_any_permitted_text_round_trips(line: str) -> None:
    text = line.replace("\u2014 ", "\u2014") + "\n"
    assert open_note(sign_note(text, LOG, KEY_A), [verifier(LOG, KEY_A)]).text == text


def test_note_signed_by_a_does_not_open_with_b() -> None:
    note = sign_note("hello\n", LOG, KEY_A)
    with pytest.raises(NoteError, match="not signed by any trusted key"):
        open_note(note, [verifier(LOG, KEY_B)])
    with pytest.raises(NoteError, match="not signed by any trusted key"):
        open_note(note, [])


def test_unknown_signers_are_ignored() -> None:
    note = sign_note("hello\n", LOG, KEY_A)
    note = add_signature(note, "witness.example/w1", KEY_C)
    # Same name as a trusted key with another key hash, and a short non-Ed25519 signature.
    note += "\u2014 " + LOG + " " + base64.b64encode(b"\x00\x01\x02\x03" + b"x" * 5).decode() + "\n"
    opened = open_note(note, [verifier(LOG, KEY_A)])
    assert opened.text == "hello\n"
    assert opened.verified_by == (verifier(LOG, KEY_A),)


def test_same_key_hash_under_another_name_is_ignored() -> None:
    signed = sign_note("hello\n", LOG, KEY_A)
    renamed = signed.replace("\u2014 " + LOG + " ", "\u2014 other.example/log ")
    with pytest.raises(NoteError, match="not signed by any trusted key"):
        open_note(renamed, [verifier(LOG, KEY_A)])


def test_note_with_only_unknown_signers_is_rejected() -> None:
    note = add_signature(sign_note("hello\n", "a.example", KEY_A), "b.example", KEY_B)
    with pytest.raises(NoteError, match=r"not signed by any trusted key \(it is signed by a\.exa"):
        open_note(note, [verifier("c.example", KEY_C)])


def test_cosigned_note_opens_with_each_and_both_keys() -> None:
    note = add_signature(sign_note("hello\n", LOG, KEY_A), "witness.example/w1", KEY_B)
    va, vb = verifier(LOG, KEY_A), verifier("witness.example/w1", KEY_B)
    assert open_note(note, [va]).verified_by == (va,)
    assert open_note(note, [vb]).verified_by == (vb,)
    assert open_note(note, [vb, va]).verified_by == (va, vb)
    with pytest.raises(NoteError, match="already carries a signature by"):
        add_signature(note, LOG, KEY_A)


def test_bad_signature_from_a_known_key_rejects_the_whole_note() -> None:
    note = add_signature(sign_note("hello\n", LOG, KEY_A), "witness.example/w1", KEY_B)
    text, signatures = parse_note(note)
    bad = signatures[1]._replace(signature=bytes(64))
    tampered = text + "\n" + signatures[0].line() + bad.line()
    va, vb = verifier(LOG, KEY_A), verifier("witness.example/w1", KEY_B)
    assert open_note(tampered, [va]).verified_by == (va,)
    with pytest.raises(NoteError, match="by witness.example/w1 .* does not verify"):
        open_note(tampered, [va, vb])


def test_known_key_with_a_wrong_length_signature_is_rejected() -> None:
    va = verifier(LOG, KEY_A)
    line = NoteSignature(LOG, va.key_hash, b"\x01" * 63).line()
    with pytest.raises(NoteError, match="does not verify"):
        open_note("hello\n\n" + line, [va])


def test_trusting_two_keys_with_one_name_and_hash_is_refused() -> None:
    va = verifier(LOG, KEY_A)
    clash = VerifierKey(LOG, va.key_hash, KEY_B.public)
    with pytest.raises(KeyMaterialError, match="cannot be told apart"):
        open_note(sign_note("hello\n", LOG, KEY_A), [va, clash])


def test_at_least_sixteen_and_at_most_a_hundred_signatures() -> None:
    note = sign_note("hello\n", LOG, KEY_A)
    filler = NoteSignature("other.example", b"\x00\x00\x00\x00", b"\x00" * 64).line()
    assert open_note(note + filler * 15, [verifier(LOG, KEY_A)]).text == "hello\n"
    assert open_note(note + filler * (MAX_SIGNATURES - 1), [verifier(LOG, KEY_A)])
    with pytest.raises(NoteError, match=f"at most {MAX_SIGNATURES} signatures"):
        open_note(note + filler * MAX_SIGNATURES, [verifier(LOG, KEY_A)])
    with pytest.raises(NoteError, match=f"at most {MAX_SIGNATURES} signatures"):
        add_signature(note + filler * (MAX_SIGNATURES - 1), "b.example", KEY_B)


SIG = NoteSignature(LOG, b"\x01\x02\x03\x04", b"\x05" * 64).line()
SIG_B64 = SIG.split()[-1]
URLSAFE = base64.urlsafe_b64encode(b"\x01\x02\x03\x04" + b"\xff" * 64).decode()

BAD_NOTES: list[tuple[str, str | bytes, str]] = [
    ("empty", "", "must end in a newline"),
    ("no final newline", "hello\n\n" + SIG[:-1], "must end in a newline"),
    ("no blank line", "hello\n" + SIG, "needs a blank line"),
    ("no signatures", "hello\n\n", "at least one signature line"),
    ("trailing blank line", "hello\n\n" + SIG + "\n", "at least one signature line"),
    ("carriage return", "hello\r\n\n" + SIG, "control character U+000D on line 1"),
    ("tab", "a\tb\n\n" + SIG, "control character U+0009"),
    ("NUL in signature", "hello\n\n" + SIG[:-1] + "\x00\n", "control character U+0000 on line 3"),
    ("invalid UTF-8", b"hel\xfflo\n\n" + SIG.encode(), "valid UTF-8"),
    ("lone surrogate", "hel\udc80lo\n\n" + SIG, "valid UTF-8"),
    ("hyphen not em dash", "hello\n\n- " + SIG[2:], "must start with an em dash"),
    ("en dash", "hello\n\n\u2013 " + SIG[2:], "must start with an em dash"),
    ("em dash without space", "hello\n\n\u2014" + SIG[2:], "must start with an em dash"),
    ("no signature after name", f"hello\n\n\u2014 {LOG}\n", "must be '\u2014 <name>"),
    ("empty name", f"hello\n\n\u2014  {SIG_B64}\n", "non-empty"),
    ("plus in name", f"hello\n\n\u2014 a+b {SIG_B64}\n", "no spaces or '+'"),
    ("two spaces", f"hello\n\n\u2014 {LOG}  {SIG_B64}\n", "not valid base64"),
    ("unpadded base64", f"hello\n\n\u2014 {LOG} {SIG_B64.rstrip('=')}\n", "not valid base64"),
    ("urlsafe base64", f"hello\n\n\u2014 {LOG} {URLSAFE}\n", "not valid base64"),
    ("empty signature", f"hello\n\n\u2014 {LOG} \n", "4-byte key hash and a signature"),
    ("key hash only", f"hello\n\n\u2014 {LOG} AQIDBA==\n", "4-byte key hash and a signature"),
    ("signature-like text line", "\u2014 x\n\n" + SIG, "line 1 of the note text starts with"),
    ("oversized", "x" * MAX_NOTE_SIZE + "\n\n" + SIG, f"at most {MAX_NOTE_SIZE} bytes"),
    ("oversized bytes", b"x" * MAX_NOTE_SIZE + b"\n\n" + SIG.encode(), "at most"),
]


@pytest.mark.parametrize(
    ("note", "error"), [c[1:] for c in BAD_NOTES], ids=[c[0] for c in BAD_NOTES]
)
def test_malformed_notes_are_rejected(note: str | bytes, error: str) -> None:
    with pytest.raises(NoteError) as caught:
        parse_note(note)
    assert error in str(caught.value)
    with pytest.raises(NoteError):
        open_note(note, [verifier(LOG, KEY_A)])


@pytest.mark.parametrize(
    ("text", "name", "error"),
    [
        ("hello", LOG, "must end in a newline"),
        ("", LOG, "must end in a newline"),
        ("a\rb\n", LOG, "control character U+000D"),
        ("ok\n\u2014 forged.example AAAA\n", LOG, "line 2 of the note text starts with"),
        ("hello\n", "", "non-empty"),
        ("hello\n", "two words", "no spaces or '+'"),
        ("hello\n", "a+b", "no spaces or '+'"),
        ("x" * MAX_NOTE_SIZE + "\n", LOG, "at most"),
    ],
)
def test_sign_note_refuses_what_it_could_not_open(text: str, name: str, error: str) -> None:
    with pytest.raises(NoteError, match=error.replace("+", r"\+")):
        sign_note(text, name, KEY_A)


# --- checkpoints ---------------------------------------------------------------------------

line_text = st.text(st.characters(codec="utf-8", min_codepoint=0x20), min_size=1, max_size=30)
lines = line_text.filter(lambda s: not s.startswith("\u2014 "))
checkpoints = st.builds(
    Checkpoint,
    origin=lines,
    size=st.integers(0, (1 << 64) - 1),
    root_hash=st.binary(min_size=32, max_size=32),
    extensions=st.lists(lines, max_size=3).map(tuple),
)


@settings(max_examples=200)
@given(checkpoints)
def test_checkpoint_body_round_trips(cp: Checkpoint) -> None:
    body = cp.body()
    assert body.endswith("\n") and "\n\n" not in body
    assert parse_checkpoint_body(body) == cp
    assert parse_checkpoint_body(body).body() == body


def test_spec_checkpoint_body_parses() -> None:
    body = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = parse_checkpoint_body(body)
    assert (cp.origin, cp.size, cp.extensions) == ("example.com/behind-the-sofa", 20852163, ())
    assert base64.b64encode(cp.root_hash).decode() == body.split("\n")[2]


R = base64.b64encode(ROOT).decode()
BAD_BODIES = [
    ("empty", "", "must end in a newline"),
    ("no final newline", f"{LOG}\n5\n{R}", "must end in a newline"),
    ("two lines", f"{LOG}\n5\n", "at least three lines"),
    ("empty origin", f"\n5\n{R}\n", "line 1 of the checkpoint is empty"),
    ("empty size", f"{LOG}\n\n{R}\n", "line 2 of the checkpoint is empty"),
    ("empty root", f"{LOG}\n5\n\n", "line 3 of the checkpoint is empty"),
    ("empty extension", f"{LOG}\n5\n{R}\n\n", "line 4 of the checkpoint is empty"),
    ("empty extension mid", f"{LOG}\n5\n{R}\na\n\nb\n", "line 5 of the checkpoint is empty"),
    ("leading zero", f"{LOG}\n05\n{R}\n", "without leading zeros"),
    ("double zero", f"{LOG}\n00\n{R}\n", "without leading zeros"),
    ("negative", f"{LOG}\n-5\n{R}\n", "without leading zeros"),
    ("plus sign", f"{LOG}\n+5\n{R}\n", "decimal digits"),
    ("space", f"{LOG}\n 5\n{R}\n", "decimal digits"),
    ("underscore", f"{LOG}\n1_000\n{R}\n", "decimal digits"),
    ("arabic-indic digits", f"{LOG}\n\u0665\n{R}\n", "decimal digits"),
    ("hex", f"{LOG}\n0x5\n{R}\n", "decimal digits"),
    ("too large", f"{LOG}\n{1 << 64}\n{R}\n", "tree size must be between"),
    ("far too large", f"{LOG}\n{'9' * 5000}\n{R}\n", "decimal digits"),
    ("short root", f"{LOG}\n5\n{base64.b64encode(ROOT[:31]).decode()}\n", "32 bytes"),
    ("long root", f"{LOG}\n5\n{base64.b64encode(ROOT + b'x').decode()}\n", "32 bytes"),
    ("unpadded root", f"{LOG}\n5\n{R.rstrip('=')}\n", "not valid base64"),
    ("root not base64", f"{LOG}\n5\n{'!' * 44}\n", "not valid base64"),
    ("hex root", f"{LOG}\n5\n{ROOT.hex()}\n", "32 bytes"),
    ("noncanonical root", f"{LOG}\n5\n{R[:-2]}x=\n", "canonical"),
    ("control character", f"{LOG}\t\n5\n{R}\n", "control character U+0009"),
    ("CRLF", f"{LOG}\r\n5\r\n{R}\r\n", "control character U+000D"),
]


@pytest.mark.parametrize(
    ("body", "error"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
def test_malformed_checkpoint_bodies_are_rejected(body: str, error: str) -> None:
    with pytest.raises(NoteError) as caught:
        parse_checkpoint_body(body)
    assert error in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"origin": ""}, "origin must be a non-empty"),
        ({"origin": "a\nb"}, "origin must be a single line"),
        ({"origin": "\u2014 log"}, "starts with an em dash"),
        ({"size": -1}, "between 0 and"),
        ({"size": True}, "must be an integer"),
        ({"root_hash": b"\x00" * 31}, "32 bytes"),
        ({"extensions": ("",)}, "extension line 1 must be a non-empty"),
        ({"extensions": ["x"]}, "tuple"),
    ],
)
def test_checkpoint_refuses_fields_it_could_not_write(
    fields: dict[str, object], error: str
) -> None:
    values: dict[str, object] = {"origin": LOG, "size": 1, "root_hash": ROOT, **fields}
    with pytest.raises(NoteError, match=error):
        Checkpoint(**values)  # type: ignore[arg-type]


def test_signed_checkpoint_round_trips() -> None:
    cp = Checkpoint(LOG, 12345, ROOT, ("extension one",))
    note = sign_checkpoint(cp, LOG, KEY_A)
    assert note.startswith(cp.body() + "\n\u2014 " + LOG + " ")
    assert open_checkpoint(note, verifier(LOG, KEY_A)) == cp
    assert open_checkpoint(note.encode(), verifier(LOG, KEY_A), origin=LOG) == cp


def test_changed_checkpoint_does_not_open() -> None:
    cp = Checkpoint(LOG, 12345, ROOT)
    note = sign_checkpoint(cp, LOG, KEY_A)
    other_root = base64.b64encode(bytes(32)).decode()
    for tampered in [
        note.replace("\n12345\n", "\n12346\n"),
        note.replace(R, other_root),
        note.replace(LOG + "\n", "log.suanli.example/other\n", 1),
        note.replace("\n\n", "\nextension\n\n"),
    ]:
        assert tampered != note
        with pytest.raises(NoteError, match="does not verify"):
            open_checkpoint(tampered, verifier(LOG, KEY_A))


def test_checkpoint_from_another_log_or_key_does_not_open() -> None:
    note = sign_checkpoint(Checkpoint(LOG, 1, ROOT), LOG, KEY_A)
    with pytest.raises(NoteError, match="not 'log.suanli.example/other'"):
        open_checkpoint(note, verifier(LOG, KEY_A), origin="log.suanli.example/other")
    with pytest.raises(NoteError, match="not signed by any trusted key"):
        open_checkpoint(note, verifier(LOG, KEY_B))


def test_signed_note_that_is_not_a_checkpoint_does_not_open_as_one() -> None:
    note = sign_note("hello\n", LOG, KEY_A)
    with pytest.raises(NoteError, match="at least three lines"):
        open_checkpoint(note, verifier(LOG, KEY_A))
