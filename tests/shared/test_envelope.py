"""Signed envelopes: RFC 8032 through our signing code, domain separation, tampering, limits."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import canonical
from shared.envelope import KINDS, max_envelope_bytes, open_envelope, peek_key_id, seal
from shared.errors import EncodingError, EnvelopeError, SignatureError
from shared.identity import PrivateKey

RFC8032_TEST1_SEED = bytes.fromhex(
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
)
RFC8032_TEST1_PUBLIC = bytes.fromhex(
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
)
RFC8032_TEST1_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
    "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)

KEY = PrivateKey.from_seed(bytes(range(32)))
OTHER = PrivateKey.from_seed(bytes(range(1, 33)))

payloads = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=canonical.INT_MIN, max_value=canonical.INT_MAX)
    | st.binary(max_size=40)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


def test_rfc8032_test1_through_our_signing_code() -> None:
    key = PrivateKey.from_seed(RFC8032_TEST1_SEED)
    assert key.public.raw == RFC8032_TEST1_PUBLIC
    assert key.sign(b"") == RFC8032_TEST1_SIGNATURE
    assert key.public.verify(RFC8032_TEST1_SIGNATURE, b"")
    assert not key.public.verify(RFC8032_TEST1_SIGNATURE, b"\x00")


@settings(max_examples=200)
@given(payloads)
def test_round_trip(payload: object) -> None:
    envelope = seal("heartbeat", payload, KEY)
    opened = open_envelope(envelope, "heartbeat", KEY.public)
    assert opened.payload_bytes == canonical.encode(payload)
    assert canonical.encode(opened.payload) == opened.payload_bytes
    assert opened.key_id == KEY.public.key_id
    assert peek_key_id(envelope, "heartbeat") == KEY.public.key_id


@settings(max_examples=60)
@given(st.data())
def test_flipping_any_byte_is_rejected(data: st.DataObject) -> None:
    envelope = seal("receipt", ["lease-1", 7, b"\x01\x02", True, None], KEY)
    position = data.draw(st.integers(0, len(envelope) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = bytearray(envelope)
    tampered[position] ^= flip
    with pytest.raises(EnvelopeError):
        open_envelope(bytes(tampered), "receipt", KEY.public)


def test_every_single_byte_flip_is_rejected() -> None:
    envelope = seal("receipt", {"gpu_ms": 3_600_000, "lease": "L-1"}, KEY)
    for position in range(len(envelope)):
        tampered = bytearray(envelope)
        tampered[position] ^= 0x01
        with pytest.raises(EnvelopeError):
            open_envelope(bytes(tampered), "receipt", KEY.public)


def test_a_receipt_signature_never_verifies_as_another_kind() -> None:
    envelope = seal("receipt", [1, 2, 3], KEY)
    for kind in KINDS:
        if kind != "receipt":
            with pytest.raises(SignatureError, match="signature does not verify"):
                open_envelope(envelope, kind, KEY.public)


def test_wrong_key_is_refused_by_key_id_and_by_signature() -> None:
    envelope = seal("heartbeat", [1], KEY)
    with pytest.raises(SignatureError, match="another key"):
        open_envelope(envelope, "heartbeat", OTHER.public)
    payload, _, signature = msgpack.unpackb(envelope)
    forged = msgpack.packb([payload, OTHER.public.key_id, signature], use_bin_type=True)
    with pytest.raises(SignatureError, match="does not verify"):
        open_envelope(forged, "heartbeat", OTHER.public)


def _resigned(payload_bytes: bytes, kind: str = "heartbeat") -> bytes:
    """An envelope whose signature is valid over arbitrary, possibly non-canonical, bytes."""
    signature = KEY.sign(f"suanli/{kind}/v1\n".encode() + payload_bytes)
    return msgpack.packb([payload_bytes, KEY.public.key_id, signature], use_bin_type=True)


BAD_PAYLOADS = [
    (msgpack.packb(1.5), EncodingError, "floats"),
    (msgpack.packb([1, 2.0]), EncodingError, "floats"),
    (msgpack.packb({"b": 1, "a": 2}), EncodingError, "sorted"),
    (b"\x82\xa1a\x01\xa1a\x02", EncodingError, "canonical"),
    (msgpack.packb({1: 2}), EncodingError, "not valid msgpack"),
    (b"\xcc\x01", EncodingError, "canonical"),
    (b"\xd9\x01a", EncodingError, "canonical"),
    (msgpack.packb(1) + b"\x00", EncodingError, "trailing"),
    (b"\x92\x01", EncodingError, "not valid msgpack"),
    (b"\xa2\xff\xfe", EncodingError, "UTF-8"),
    (b"\xc1", EncodingError, "not valid msgpack"),
    (b"\xd4\x05\x00", EncodingError, "extension"),
    (b"\xd6\xff\x00\x00\x00\x01", EncodingError, "Timestamp"),
    (b"\x91" * 40 + b"\xc0", EncodingError, "nests deeper"),
]


@pytest.mark.parametrize(("payload_bytes", "error", "message"), BAD_PAYLOADS)
def test_bad_payloads_are_refused_after_a_valid_signature(
    payload_bytes: bytes, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        open_envelope(_resigned(payload_bytes), "heartbeat", KEY.public)


BAD_ENVELOPES = [
    (b"", "msgpack array"),
    (b"\x92\xc4\x00\xc4\x00", "msgpack array"),
    (msgpack.packb(["text", bytes(32), bytes(64)]), "must be msgpack bin"),
    (b"\x93\xc5\x00\x01x" + b"\xc4\x20" + bytes(32) + b"\xc4\x40" + bytes(64), "not minimal"),
    (msgpack.packb([b"x", bytes(31), bytes(64)], use_bin_type=True), "truncated|key id"),
    (msgpack.packb([b"x", bytes(32), bytes(63)], use_bin_type=True), "truncated"),
    (msgpack.packb([b"x", bytes(32), bytes(64)], use_bin_type=True) + b"\x00", "trailing"),
    (msgpack.packb([b"x", bytes(32), bytes(64)], use_bin_type=True)[:-1], "truncated"),
    (b"\x93" + b"\xc6" + (1 << 17).to_bytes(4, "big"), "truncated"),
]


@pytest.mark.parametrize(("envelope", "message"), BAD_ENVELOPES)
def test_bad_envelopes_are_refused(envelope: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        open_envelope(envelope, "heartbeat", KEY.public)


def test_oversized_input_is_refused_before_any_work() -> None:
    limit = max_envelope_bytes("receipt")
    with pytest.raises(EnvelopeError, match=f"limit is {limit}"):
        open_envelope(b"\x93" + bytes(limit), "receipt", KEY.public)
    with pytest.raises(EnvelopeError, match="limit is"):
        seal("receipt", b"x" * (KINDS["receipt"] + 1), KEY)


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(EnvelopeError, match="unknown envelope kind"):
        seal("invoice", [1], KEY)
    envelope = seal("receipt", [1], KEY)
    with pytest.raises(EnvelopeError, match="unknown envelope kind"):
        open_envelope(envelope, "invoice", KEY.public)


def test_non_bytes_input_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="bytes"):
        open_envelope(bytearray(seal("receipt", [1], KEY)), "receipt", KEY.public)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (1.0, "floats"),
        ({1: "a"}, "keys"),
        (2**64, "64-bit"),
        (-(2**63) - 1, "64-bit"),
        ({"a": {1, 2}}, "set cannot"),
        (bytearray(b"x"), "bytearray cannot"),
    ],
)
def test_seal_refuses_what_cannot_be_canonical(payload: object, message: str) -> None:
    with pytest.raises(EncodingError, match=message):
        seal("heartbeat", payload, KEY)


def test_map_order_does_not_change_the_encoding() -> None:
    assert canonical.encode({"b": 1, "a": [{"d": 1, "c": 2}]}) == canonical.encode(
        {"a": [{"c": 2, "d": 1}], "b": 1}
    )
