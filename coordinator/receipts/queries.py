"""Receipts read back from the database: a lease's last accepted receipt, the answer a receipt
already got (so a retry gets the same one), and the receipts refused for good."""

from __future__ import annotations

from coordinator.jobs import Lease
from coordinator.market import Agent
from coordinator.receipts.rules import RETRYABLE_SQL, Verdict
from coordinator.state import State
from coordinator.storage import Database, Session
from shared.receipts import Rule, SealedReceipt, open_receipt


class ReceiptQueries:
    def __init__(self, state: State, database: Database) -> None:
        self.state = state
        self.database = database

    async def previous(self, lease: Lease, agent: Agent) -> SealedReceipt | None:
        """The lease's last accepted receipt (remembered in the state once read)."""
        if lease.id in self.state.last_receipts:
            return self.state.last_receipts[lease.id]
        rows = await self.database.run(
            lambda db: list(
                db.query(
                    "SELECT envelope FROM receipts WHERE lease_id = ? ORDER BY seq DESC LIMIT 1",
                    [lease.id],
                )
            )
        )
        previous = open_receipt(rows[0]["envelope"], agent.public_key) if rows else None
        self.state.last_receipts[lease.id] = previous
        return previous

    async def stored_answer(
        self, lease_id: str | None, seq: int | None, envelope: bytes
    ) -> Verdict | None:
        """The answer already given to this receipt, so a retry gets the same one."""
        if lease_id is None or seq is None:
            return None
        rows = await self.database.run(
            lambda db: list(
                db.query(
                    "SELECT r.envelope, a.envelope AS acknowledgement FROM receipts r JOIN "
                    "receipt_acknowledgements a ON a.id = r.acknowledgement_id "
                    "WHERE r.lease_id = ? AND r.seq = ?",
                    [lease_id, seq],
                )
            )
        )
        if rows and rows[0]["envelope"] == envelope:
            return Verdict(
                lease_id, seq, True, acknowledgement=rows[0]["acknowledgement"], already_stored=True
            )
        if rows:
            return Verdict(
                lease_id,
                seq,
                False,
                str(Rule.SEQ),
                f"seq {seq} of this lease was already accepted for another receipt",
            )
        # a refusal that retrying cannot change is the answer to every retry; a gap in seq or a
        # time ahead of the window may be fine once the missing receipt or the moment arrives
        refused = await self.database.run(
            lambda db: list(
                db.query(
                    "SELECT rule, detail FROM receipt_rejections WHERE lease_id = ? AND seq = ? "
                    f"AND envelope = ? AND rule NOT IN ({RETRYABLE_SQL}) ORDER BY id LIMIT 1",
                    [lease_id, seq, envelope],
                )
            )
        )
        if refused:
            return Verdict(
                lease_id, seq, False, refused[0]["rule"], refused[0]["detail"], already_stored=True
            )
        return None


def refused_for_good(db: Session, state: State) -> set[tuple[str, int]]:
    """The (lease, seq) pairs refused by a rule no retry can overturn, of known leases."""
    refused: set[tuple[str, int]] = set()
    for row in db.query(
        "SELECT DISTINCT lease_id, seq FROM receipt_rejections WHERE rule NOT IN "
        f"({RETRYABLE_SQL}) AND seq IS NOT NULL"
    ):
        # an ended lease's receipts may still arrive, so its refusals are remembered too
        if row["lease_id"] in state.leases:
            refused.add((row["lease_id"], row["seq"]))
    return refused
