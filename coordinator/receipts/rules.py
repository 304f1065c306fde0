"""Receipt acceptance rules, checked with the same shared/ code auditors run.

The accepted receipts of a batch share one countersigned acknowledgement; a rejected receipt
is stored with the rule it broke. The same receipt sent twice gets the same answer. The usage
a receipt adds (its amount minus the lease's previous accepted receipt's) goes to the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordinator.jobs import Lease
from coordinator.market import Agent
from shared.billing_window import check_window
from shared.errors import ReceiptRuleError, SuanliError
from shared.receipts import Rule, SealedReceipt, check_pure

# a GPU whose power limit was never reported is bounded by the largest board made today
DEFAULT_POWER_LIMIT_MW = 1_500_000
MAX_BATCH = 500
# rules whose refusal a retry may overturn: a gap in seq, a time ahead of its arrival, a receipt
# that arrived before its lease's start report
RETRYABLE_RULES = (Rule.SEQ.value, Rule.TIME_WINDOW.value, Rule.NOT_STARTED.value)
RETRYABLE_SQL = ", ".join(f"'{rule}'" for rule in RETRYABLE_RULES)  # for `rule NOT IN (...)`


@dataclass(frozen=True)
class Verdict:
    lease_id: str | None
    seq: int | None
    accepted: bool
    rule: str | None = None
    detail: str | None = None
    acknowledgement: bytes | None = None
    sealed: SealedReceipt | None = None
    delta: int = 0
    envelope: bytes = b""
    already_stored: bool = False

    def to_wire(self, acknowledgements: dict[bytes, int]) -> dict[str, Any]:
        if self.accepted:
            assert self.acknowledgement is not None
            return {
                "lease_id": self.lease_id,
                "seq": self.seq,
                "status": "accepted",
                "acknowledgement": acknowledgements[self.acknowledgement],
            }
        return {
            "lease_id": self.lease_id,
            "seq": self.seq,
            "status": "rejected",
            "rule": self.rule,
            "detail": self.detail,
        }


def check_receipt(
    sealed: SealedReceipt,
    agent: Agent,
    lease: Lease | None,
    previous: SealedReceipt | None,
    power_limits_mw: dict[str, int],
    now_ms: int,
) -> None:
    """Every rule after the signature (`shared.receipts.open_receipt`, run by the receipt
    workers): lease, chain, GPUs, price, the billable window (`shared.billing_window`) and
    energy bounds; raises ReceiptRuleError naming the first one broken. `now_ms` is the
    receipt's acceptance time."""
    receipt = sealed.receipt
    if lease is None or lease.agent_id != agent.agent_id or lease.job_id != receipt.job_id:
        raise ReceiptRuleError(
            Rule.LEASE,
            f"lease {receipt.lease_id} is not this agent's lease for job {receipt.job_id}",
        )
    check_pure(previous, receipt)
    if receipt.gpu_uuids != lease.gpu_uuids and sorted(receipt.gpu_uuids) != sorted(
        lease.gpu_uuids
    ):
        raise ReceiptRuleError(Rule.GPU_UUIDS, "the receipt names GPUs other than the leased ones")
    if receipt.price_per_gpu_hour != lease.price_per_gpu_hour:
        raise ReceiptRuleError(
            Rule.PRICE,
            f"the price is {receipt.price_per_gpu_hour} µ¥/GPU-h but the lease's is "
            f"{lease.price_per_gpu_hour}",
        )
    window = lease.window()
    check_window(window, receipt, now_ms)
    elapsed = window.billable_gpu_ms(receipt.issued_at_ms, now_ms) // len(lease.gpu_uuids)
    energy_bound_mj = (
        sum(power_limits_mw.get(uuid) or DEFAULT_POWER_LIMIT_MW for uuid in lease.gpu_uuids)
        * elapsed
        // 1000
    )
    if receipt.energy_mj > energy_bound_mj:
        raise ReceiptRuleError(
            Rule.ENERGY,
            f"{receipt.energy_mj} mJ is more than the GPUs' power limits allow "
            f"in {elapsed} ms ({energy_bound_mj} mJ)",
        )


def answer(verdicts: list[Verdict]) -> dict[str, Any]:
    """The reply to a batch: a result per receipt, in order, and the acknowledgements that the
    accepted ones name by position (one for this batch, and the earlier ones retries got)."""
    acknowledgements: dict[bytes, int] = {}
    for verdict in verdicts:
        if verdict.accepted and verdict.acknowledgement is not None:
            acknowledgements.setdefault(verdict.acknowledgement, len(acknowledgements))
    return {
        "results": [v.to_wire(acknowledgements) for v in verdicts],
        "acknowledgements": list(acknowledgements),
    }


def rejection(envelope: bytes, exc: SuanliError, lease_id: str | None, seq: int | None) -> Verdict:
    rule = exc.rule if isinstance(exc, ReceiptRuleError) else Rule.MALFORMED
    return Verdict(lease_id, seq, False, str(rule), exc.detail, envelope=envelope)
