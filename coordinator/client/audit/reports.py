"""What an audit reports: every discrepancy it found, each with a stable code, and what it saw."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Discrepancy:
    """One thing that did not verify: a stable code, the entry (if any) and a sentence."""

    code: str
    detail: str
    index: int | None = None

    def line(self) -> str:
        return f"entry {self.index}: {self.detail}" if self.index is not None else self.detail

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "index": self.index, "detail": self.detail}


class _Findings:
    """What both reports share: the discrepancies found, and `ok` when there is none."""

    discrepancies: list[Discrepancy]

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def problem(self, code: str, detail: str, index: int | None = None) -> None:
        self.discrepancies.append(Discrepancy(code, detail, index))


@dataclass
class AuditReport(_Findings):
    """What an audit saw and every discrepancy it found; `ok` when there is none."""

    coordinator: str
    origin: str = ""
    log_key: str = ""
    key_trust: str = ""  # "given", "pinned" or "first use"
    size: int = 0
    root_hash: str = ""
    previous_size: int | None = None
    entries_by_kind: Counter[str] = field(default_factory=Counter)
    receipts: int = 0
    acknowledgements: int = 0
    leases: int = 0
    agents: int = 0
    enterprises: int = 0
    auctions_replayed: int = 0
    charged: int = 0
    voucher: int = 0
    deferred: int = 0
    accounts: dict[str, dict[str, int]] = field(default_factory=dict)
    balances_compared: int | None = None
    discrepancies: list[Discrepancy] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    state_saved: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "coordinator": self.coordinator,
            "origin": self.origin,
            "log_key": self.log_key,
            "key_trust": self.key_trust,
            "size": self.size,
            "root_hash": self.root_hash,
            "previous_size": self.previous_size,
            "entries": sum(self.entries_by_kind.values()),
            "entries_by_kind": dict(sorted(self.entries_by_kind.items())),
            "receipts": self.receipts,
            "acknowledgements": self.acknowledgements,
            "leases": self.leases,
            "agents": self.agents,
            "enterprises": self.enterprises,
            "auctions_replayed": self.auctions_replayed,
            "charged_micro_yuan": self.charged,
            "voucher_micro_yuan": self.voucher,
            "deferred_micro_yuan": self.deferred,
            "accounts": {name: dict(sums) for name, sums in sorted(self.accounts.items())},
            "balances_compared": self.balances_compared,
            "discrepancies": [d.to_json() for d in self.discrepancies],
            "notes": list(self.notes),
            "state_saved": self.state_saved,
        }


@dataclass
class ReceiptReport(_Findings):
    """Whether one receipt is in the log, proven against a signed checkpoint, and what it says."""

    coordinator: str
    digest: str
    index: int | None = None
    size: int = 0
    root_hash: str = ""
    agent_id: str = ""
    lease_id: str = ""
    seq: int = 0
    amount: int = 0
    delta: int = 0
    charged: int = 0
    accepted_at_ms: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "coordinator": self.coordinator,
            "digest": self.digest,
            "index": self.index,
            "size": self.size,
            "root_hash": self.root_hash,
            "agent_id": self.agent_id,
            "lease_id": self.lease_id,
            "seq": self.seq,
            "amount_micro_yuan": self.amount,
            "delta_micro_yuan": self.delta,
            "charged_micro_yuan": self.charged,
            "accepted_at_ms": self.accepted_at_ms,
            "discrepancies": [d.to_json() for d in self.discrepancies],
            "notes": list(self.notes),
        }
