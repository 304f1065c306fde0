"""Receipts: building, sealing, opening, hashing and the checks that need no coordinator."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import canonical
from shared.envelope import envelope_digest, seal
from shared.errors import ReceiptError, ReceiptRuleError
from shared.identity import PrivateKey
from shared.money import usage_amount
from shared.receipts import (
    GENESIS_PREV,
    Receipt,
    Rule,
    SealedReceipt,
    check_pure,
    open_receipt,
    seal_receipt,
)

KEY = PrivateKey.from_seed(b"\x07" * 32)
OTHER = PrivateKey.from_seed(b"\x08" * 32)
PRICE = 12_000_000
GPUS = ("GPU-11111111-2222-3333-4444-555555555555", "GPU-66666666-7777-8888-9999-000000000000")


def first(**changes: object) -> Receipt:
    gpu_ms = 2 * 60_000
    receipt = Receipt(
        lease_id="lease-1",
        job_id="job-1",
        agent_id=KEY.public.agent_id,
        seq=1,
        prev=GENESIS_PREV,
        issued_at_ms=1_790_000_060_000,
        gpu_uuids=GPUS,
        gpu_ms=gpu_ms,
        energy_mj=2 * 60 * 300_000,
        utilization_pct=87,
        peak_memory_bytes=40 << 30,
        price_per_gpu_hour=PRICE,
        amount=usage_amount(gpu_ms, PRICE),
        final=False,
        exit_code=None,
    )
    return receipt._replace(**changes)


def successor(previous: SealedReceipt, minutes: int = 1, **changes: object) -> Receipt:
    before = previous.receipt
    gpu_ms = before.gpu_ms + minutes * 2 * 60_000
    receipt = before._replace(
        seq=before.seq + 1,
        prev=previous.digest,
        issued_at_ms=before.issued_at_ms + minutes * 60_000,
        gpu_ms=gpu_ms,
        energy_mj=before.energy_mj + minutes * 2 * 60 * 300_000,
        amount=usage_amount(gpu_ms, before.price_per_gpu_hour),
    )
    return receipt._replace(**changes)


def test_seal_open_round_trip_and_hash() -> None:
    sealed = seal_receipt(first(), KEY)
    opened = open_receipt(sealed.envelope, KEY.public)
    assert opened == sealed
    assert opened.digest == envelope_digest(sealed.envelope)
    assert opened.receipt.gpu_uuids == GPUS


def test_a_chain_of_receipts_passes_the_pure_checks() -> None:
    previous = None
    sealed = seal_receipt(first(), KEY)
    for _ in range(5):
        check_pure(previous, open_receipt(sealed.envelope, KEY.public).receipt)
        previous, sealed = sealed, seal_receipt(successor(sealed), KEY)
    final = seal_receipt(successor(previous, final=True, exit_code=0), KEY)  # type: ignore[arg-type]
    check_pure(previous, final.receipt)


def test_signature_by_another_key_is_rule_signature() -> None:
    sealed = seal_receipt(first(agent_id=OTHER.public.agent_id), OTHER)
    with pytest.raises(ReceiptRuleError) as caught:
        open_receipt(sealed.envelope, KEY.public)
    assert caught.value.rule == Rule.SIGNATURE


def test_receipt_naming_another_agent_than_its_signer_is_refused() -> None:
    sealed = seal_receipt(first(agent_id=OTHER.public.agent_id), KEY)
    with pytest.raises(ReceiptRuleError, match="another agent") as caught:
        open_receipt(sealed.envelope, KEY.public)
    assert caught.value.rule == Rule.SIGNATURE


def test_tampered_receipt_is_rule_signature() -> None:
    envelope = bytearray(seal_receipt(first(), KEY).envelope)
    envelope[20] ^= 1
    with pytest.raises(ReceiptRuleError) as caught:
        open_receipt(bytes(envelope), KEY.public)
    assert caught.value.rule == Rule.SIGNATURE


@pytest.mark.parametrize(
    ("payload_change", "message"),
    [
        (lambda p: p[:-1], "array of 16"),
        (lambda p: [2, *p[1:]], "version 2"),
        (lambda p: [p[0], "", *p[2:]], "lease_id"),
        (lambda p: [p[0], "x" * 65, *p[2:]], "lease_id"),
        (lambda p: [*p[:4], 0, *p[5:]], "seq starts at 1"),
        (lambda p: [*p[:4], -1, *p[5:]], "seq must be"),
        (lambda p: [*p[:5], b"\x01" * 32, *p[6:]], "32 zero bytes"),
        (lambda p: [*p[:5], b"\x00" * 31, *p[6:]], "prev must be 32"),
        (lambda p: [*p[:7], [], *p[8:]], "1 to 64 GPUs"),
        (lambda p: [*p[:7], ["a", "a"], *p[8:]], "repeat"),
        (lambda p: [*p[:7], "GPU-a", *p[8:]], "array of strings"),
        (lambda p: [*p[:7], [1], *p[8:]], "UUID"),
        (lambda p: [*p[:8], True, *p[9:]], "gpu_ms"),
        (lambda p: [*p[:10], 101, *p[11:]], "utilization_pct"),
        (lambda p: [*p[:14], 1, *p[15:]], "final must be"),
        (lambda p: [*p[:14], False, 0], "only a final"),
        (lambda p: [*p[:14], True, None], "exit code"),
        (lambda p: {"seq": 1}, "array of 16"),
    ],
)
def test_malformed_payloads_are_rule_malformed(payload_change: object, message: str) -> None:
    payload = payload_change(first().to_payload())  # type: ignore[operator]
    envelope = seal("receipt", payload, KEY)
    with pytest.raises(ReceiptRuleError, match=message) as caught:
        open_receipt(envelope, KEY.public)
    assert caught.value.rule == Rule.MALFORMED


def test_validate_refuses_bad_fields_before_sealing() -> None:
    with pytest.raises(ReceiptError, match="utilization_pct"):
        seal_receipt(first(utilization_pct=-1), KEY)


BROKEN_SUCCESSORS = [
    ("wrong seq", lambda prev: successor(prev, seq=prev.receipt.seq + 2), Rule.SEQ),
    ("same seq", lambda prev: successor(prev, seq=prev.receipt.seq), Rule.SEQ),
    ("broken prev", lambda prev: successor(prev, prev=b"\x01" * 32), Rule.PREV),
    ("gpu_ms down", lambda prev: successor(prev, gpu_ms=0, amount=0), Rule.COUNTERS),
    ("energy down", lambda prev: successor(prev, energy_mj=0), Rule.COUNTERS),
    ("peak memory down", lambda prev: successor(prev, peak_memory_bytes=1), Rule.COUNTERS),
    ("time backwards", lambda prev: successor(prev, issued_at_ms=1), Rule.COUNTERS),
    ("other GPUs", lambda prev: successor(prev, gpu_uuids=GPUS[:1]), Rule.GPU_UUIDS),
    ("other lease", lambda prev: successor(prev, lease_id="lease-2"), Rule.LEASE),
    ("other job", lambda prev: successor(prev, job_id="job-2"), Rule.LEASE),
    (
        "wrong amount",
        lambda prev: successor(prev)._replace(amount=successor(prev).amount + 1),
        Rule.AMOUNT,
    ),
]


@pytest.mark.parametrize(
    ("name", "make", "rule"), BROKEN_SUCCESSORS, ids=[b[0] for b in BROKEN_SUCCESSORS]
)
def test_each_broken_successor_fails_its_rule(name: str, make: object, rule: Rule) -> None:
    previous = seal_receipt(first(), KEY)
    receipt = make(previous)  # type: ignore[operator]
    with pytest.raises(ReceiptRuleError) as caught:
        check_pure(previous, receipt)
    assert caught.value.rule == rule


def test_price_change_fails_the_price_rule() -> None:
    previous = seal_receipt(first(), KEY)
    receipt = successor(previous, price_per_gpu_hour=PRICE + 1)
    receipt = receipt._replace(amount=usage_amount(receipt.gpu_ms, PRICE + 1))
    with pytest.raises(ReceiptRuleError) as caught:
        check_pure(previous, receipt)
    assert caught.value.rule == Rule.PRICE


def test_nothing_follows_a_final_receipt() -> None:
    final = seal_receipt(first(final=True, exit_code=0), KEY)
    with pytest.raises(ReceiptRuleError) as caught:
        check_pure(final, successor(final, final=False, exit_code=None))
    assert caught.value.rule == Rule.AFTER_FINAL


@pytest.mark.parametrize(
    ("changes", "rule"),
    [({"seq": 2, "prev": b"\x01" * 32}, Rule.SEQ), ({"amount": 1}, Rule.AMOUNT)],
)
def test_first_receipt_rules(changes: dict[str, object], rule: Rule) -> None:
    with pytest.raises(ReceiptRuleError) as caught:
        check_pure(None, first(**changes))
    assert caught.value.rule == rule


@given(st.integers(0, 10**11), st.integers(0, 10**9), st.booleans())
def test_any_valid_receipt_round_trips_canonically(gpu_ms: int, price: int, final: bool) -> None:
    receipt = first(
        gpu_ms=gpu_ms,
        price_per_gpu_hour=price,
        amount=usage_amount(gpu_ms, price),
        final=final,
        exit_code=137 if final else None,
    )
    sealed = seal_receipt(receipt, KEY)
    opened = open_receipt(sealed.envelope, KEY.public)
    assert opened.receipt == receipt
    assert canonical.encode(opened.receipt.to_payload()) == canonical.encode(receipt.to_payload())
    check_pure(None, opened.receipt)
