"""Usage receipts: the payload an agent signs for a lease, and the checks that need no state.

A receipt is cumulative (a lost receipt loses nothing) and chained: receipt `seq` n > 1
carries the SHA-256 of receipt n-1's envelope as `prev`; receipt 1 carries 32 zero bytes.
The payload is a positional array in the order of `Receipt`'s fields, after a version.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from shared import canonical
from shared.envelope import Opened, envelope_digest, open_envelope, seal, unverified_payload
from shared.errors import EncodingError, EnvelopeError, ReceiptError, ReceiptRuleError, SuanliError
from shared.identity import PrivateKey, PublicKey
from shared.money import usage_amount

RECEIPT_VERSION = 1
KIND = "receipt"
HASH_SIZE = 32
GENESIS_PREV = bytes(HASH_SIZE)
MAX_ID_LENGTH = 64
MAX_UUID_LENGTH = 96
MAX_GPUS = 64
_COUNTER_MAX = 2**63 - 1
_EXIT_MIN, _EXIT_MAX = -(2**31), 2**31 - 1


class Rule(StrEnum):
    """Names of the receipt acceptance rules, as reported to agents and auditors."""

    MALFORMED = "malformed"
    SIGNATURE = "signature"
    LEASE = "lease"
    TIME_WINDOW = "time_window"
    SEQ = "seq"
    PREV = "prev"
    AFTER_FINAL = "after_final"
    COUNTERS = "counters_decreased"
    NOT_STARTED = "lease_not_started"
    BILLABLE_WINDOW = "outside_billable_window"
    GPU_UUIDS = "gpu_uuids"
    PRICE = "price"
    AMOUNT = "amount"
    ENERGY = "energy_bounds"


class Receipt(NamedTuple):
    lease_id: str
    job_id: str
    agent_id: str
    seq: int
    prev: bytes
    issued_at_ms: int
    gpu_uuids: tuple[str, ...]
    gpu_ms: int
    energy_mj: int
    utilization_pct: int
    peak_memory_bytes: int
    price_per_gpu_hour: int
    amount: int
    final: bool
    exit_code: int | None

    def to_payload(self) -> list[object]:
        return [RECEIPT_VERSION, *self]

    @classmethod
    def from_payload(cls, payload: object) -> Receipt:
        if type(payload) is not list or len(payload) != len(cls._fields) + 1:
            raise ReceiptError(f"a receipt payload is an array of {len(cls._fields) + 1} values")
        if payload[0] != RECEIPT_VERSION or type(payload[0]) is not int:
            raise ReceiptError(f"receipt version {payload[0]!r} is not supported")
        values = payload[1:]
        uuids = values[_UUIDS_AT]
        if type(uuids) is not list:
            raise ReceiptError("gpu_uuids must be an array of strings")
        values[_UUIDS_AT] = tuple(uuids)
        receipt = cls._make(values)
        receipt.validate()
        return receipt

    def validate(self) -> None:
        """Check every field's type and range; raises ReceiptError naming the field."""
        for index in _ID_FIELDS:
            value = self[index]
            if type(value) is not str or not 0 < len(value) <= MAX_ID_LENGTH:
                raise ReceiptError(
                    f"{self._fields[index]} must be a string of 1 to {MAX_ID_LENGTH} characters"
                )
        for index in _COUNTER_FIELDS:
            value = self[index]
            if type(value) is not int or not 0 <= value <= _COUNTER_MAX:
                raise ReceiptError(f"{self._fields[index]} must be a non-negative 64-bit integer")
        if self.seq < 1:
            raise ReceiptError("seq starts at 1")
        if type(self.prev) is not bytes or len(self.prev) != HASH_SIZE:
            raise ReceiptError(f"prev must be {HASH_SIZE} bytes")
        if self.seq == 1 and self.prev != GENESIS_PREV:
            raise ReceiptError("the first receipt of a lease has prev = 32 zero bytes")
        if type(self.utilization_pct) is not int or not 0 <= self.utilization_pct <= 100:
            raise ReceiptError("utilization_pct must be an integer from 0 to 100")
        uuids = self.gpu_uuids
        if type(uuids) is not tuple or not 0 < len(uuids) <= MAX_GPUS:
            raise ReceiptError(f"gpu_uuids must list 1 to {MAX_GPUS} GPUs")
        for uuid in uuids:
            if type(uuid) is not str or not 0 < len(uuid) <= MAX_UUID_LENGTH:
                raise ReceiptError(
                    f"each GPU UUID must be a string of 1 to {MAX_UUID_LENGTH} characters"
                )
        if len(set(uuids)) != len(uuids):
            raise ReceiptError("gpu_uuids must not repeat a GPU")
        if type(self.final) is not bool:
            raise ReceiptError("final must be a boolean")
        if self.final:
            if type(self.exit_code) is not int or not _EXIT_MIN <= self.exit_code <= _EXIT_MAX:
                raise ReceiptError("a final receipt carries the job's exit code as an integer")
        elif self.exit_code is not None:
            raise ReceiptError("only a final receipt carries an exit code")


_UUIDS_AT = Receipt._fields.index("gpu_uuids")
_ID_FIELDS = tuple(Receipt._fields.index(name) for name in ("lease_id", "job_id", "agent_id"))
_COUNTER_FIELDS = tuple(
    Receipt._fields.index(name)
    for name in (
        "seq",
        "issued_at_ms",
        "gpu_ms",
        "energy_mj",
        "peak_memory_bytes",
        "price_per_gpu_hour",
        "amount",
    )
)


class SealedReceipt(NamedTuple):
    """A receipt with the exact envelope bytes it travelled in and their hash."""

    receipt: Receipt
    envelope: bytes
    digest: bytes


def seal_receipt(receipt: Receipt, key: PrivateKey) -> SealedReceipt:
    receipt.validate()
    envelope = seal(KIND, receipt.to_payload(), key)
    return SealedReceipt(receipt, envelope, envelope_digest(envelope))


def open_receipt(envelope: bytes, key: PublicKey) -> SealedReceipt:
    """Verify the signature, decode and validate; a bad one raises ReceiptRuleError(rule=...)."""
    try:
        opened: Opened = open_envelope(envelope, KIND, key)
    except EncodingError as exc:
        raise ReceiptRuleError(Rule.MALFORMED, exc.detail) from exc
    except EnvelopeError as exc:
        raise ReceiptRuleError(Rule.SIGNATURE, exc.detail) from exc
    try:
        receipt = Receipt.from_payload(opened.payload)
    except (ReceiptError, TypeError) as exc:
        raise ReceiptRuleError(Rule.MALFORMED, str(exc)) from exc
    if receipt.agent_id != key.agent_id:
        raise ReceiptRuleError(Rule.SIGNATURE, "the receipt names another agent than its signer")
    return SealedReceipt(receipt, envelope, opened.digest)


def check_amount(receipt: Receipt) -> None:
    expected = usage_amount(receipt.gpu_ms, receipt.price_per_gpu_hour)
    if receipt.amount != expected:
        raise ReceiptRuleError(
            Rule.AMOUNT,
            f"amount is {receipt.amount} µ¥ but gpu_ms × price // 3,600,000 is {expected} µ¥",
        )


def check_first(receipt: Receipt) -> None:
    if receipt.seq != 1:
        raise ReceiptRuleError(
            Rule.SEQ, f"the lease has no accepted receipt yet; seq {receipt.seq} is not 1"
        )
    if receipt.prev != GENESIS_PREV:
        raise ReceiptRuleError(Rule.PREV, "the first receipt's prev must be 32 zero bytes")


_CUMULATIVE = ("gpu_ms", "energy_mj", "peak_memory_bytes", "amount", "issued_at_ms")


def check_successor(previous: SealedReceipt, receipt: Receipt) -> None:
    """The pure chain rules between a lease's previous accepted receipt and the next one."""
    before = previous.receipt
    if (receipt.lease_id, receipt.job_id, receipt.agent_id) != (
        before.lease_id,
        before.job_id,
        before.agent_id,
    ):
        raise ReceiptRuleError(
            Rule.LEASE, "the receipt names another lease, job or agent than its chain"
        )
    if before.final:
        raise ReceiptRuleError(Rule.AFTER_FINAL, "the lease's final receipt was already accepted")
    if receipt.seq != before.seq + 1:
        raise ReceiptRuleError(Rule.SEQ, f"seq {receipt.seq} does not follow {before.seq}")
    if receipt.prev != previous.digest:
        raise ReceiptRuleError(Rule.PREV, "prev is not the hash of the previous accepted receipt")
    for name in _CUMULATIVE:
        if getattr(receipt, name) < getattr(before, name):
            raise ReceiptRuleError(
                Rule.COUNTERS,
                f"{name} went down from {getattr(before, name)} to {getattr(receipt, name)}",
            )
    if receipt.gpu_uuids != before.gpu_uuids:
        raise ReceiptRuleError(
            Rule.GPU_UUIDS, "the receipt's GPUs differ from the previous receipt's"
        )
    if receipt.price_per_gpu_hour != before.price_per_gpu_hour:
        raise ReceiptRuleError(
            Rule.PRICE, "the receipt's price differs from the previous receipt's"
        )


def check_pure(previous: SealedReceipt | None, receipt: Receipt) -> None:
    """Every check that needs no coordinator state: amount arithmetic and the chain link."""
    if previous is None:
        check_first(receipt)
    else:
        check_successor(previous, receipt)
    check_amount(receipt)


def claimed_id(envelope: bytes) -> tuple[str | None, int | None]:
    """The (lease_id, seq) a receipt claims, unverified: only to address a reply about it."""
    try:
        payload = canonical.decode(unverified_payload(envelope, KIND))
        lease_id, seq = payload[1], payload[4]
    except (SuanliError, IndexError, TypeError, KeyError):
        return None, None
    return (lease_id if type(lease_id) is str else None, seq if type(seq) is int else None)
