"""Receipt intake: a batch verified in order, then stored, posted, logged and acknowledged in
one transaction; a retry gets the answer its receipt already got."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coordinator import billing, tlog
from coordinator.market import Agent
from coordinator.receipts import rules
from coordinator.receipts.queries import ReceiptQueries, refused_for_good
from coordinator.receipts.signature_workers import SignatureWorkers
from coordinator.receipts.store import Batch, ReceiptStore
from coordinator.settlement import Settlement
from coordinator.signals import Signals
from coordinator.state import State
from coordinator.state.rows import lease_row
from coordinator.storage import Database, Session
from coordinator.transitions import Transitions
from shared.errors import ReceiptRuleError, SuanliError
from shared.messages import agent_protocol as ap
from shared.receipts import SealedReceipt, claimed_id

Claim = tuple[str | None, int | None]


class ReceiptIntake:
    def __init__(
        self,
        state: State,
        database: Database,
        store: ReceiptStore,
        workers: SignatureWorkers,
        transitions: Transitions,
        settlement: Settlement,
        signals: Signals,
        clock: Callable[[], int],
    ) -> None:
        self.state = state
        self.database = database
        self.store = store
        self.workers = workers
        self.transitions = transitions
        self.settlement = settlement
        self.signals = signals
        self.clock = clock
        self.queries = ReceiptQueries(state, database)
        # (lease, seq) refused for good: a retry must be looked up, never re-verified
        self.refused = refused_for_good(database.db, state)

    async def accept_receipts(self, agent: Agent, body: ap.ReceiptBatch) -> dict[str, Any]:
        """Verify a batch in order, then store, post, log and acknowledge it in one transaction.

        Signatures are checked by the signature workers, then every rule in order here. A
        receipt the enterprise's credit cannot cover is rejected (rule credit_exceeded), so
        are the lease's later receipts in the batch, and the lease is revoked.
        """
        envelopes = body.receipts
        now = self.clock()
        # a retry is verified again before its stored answer is found: rare, and it keeps the
        # common path from decoding every receipt twice
        opened = await self.workers.open_all(agent.public_key, envelopes)
        claims: list[Claim] = [
            (o.receipt.lease_id, o.receipt.seq) if isinstance(o, SealedReceipt) else claimed_id(e)
            for o, e in zip(opened, envelopes, strict=True)
        ]
        answered = await self._answered_before(agent, claims, envelopes)
        verdicts: list[rules.Verdict] = []
        chain_before: dict[str, SealedReceipt | None] = {}
        power = {
            uuid: min(
                gpu.telemetry.power_limit_mw or rules.DEFAULT_POWER_LIMIT_MW,
                rules.DEFAULT_POWER_LIMIT_MW,
            )
            for uuid, gpu in agent.gpus.items()
            if gpu.telemetry is not None
        }
        for envelope, sealed, (lease_id, seq), answer in zip(
            envelopes, opened, claims, answered, strict=True
        ):
            if answer is not None:
                verdicts.append(answer)
                continue
            lease = self.state.leases.get(lease_id or "")
            try:
                if isinstance(sealed, ReceiptRuleError):
                    raise sealed
                previous = await self.queries.previous(lease, agent) if lease else None
                rules.check_receipt(sealed, agent, lease, previous, power, now)
            except SuanliError as exc:
                verdicts.append(rules.rejection(envelope, exc, lease_id, seq))
                continue
            assert lease is not None
            chain_before.setdefault(lease.id, previous)
            delta = sealed.receipt.amount - (previous.receipt.amount if previous else 0)
            self.state.last_receipts[lease.id] = sealed
            verdicts.append(
                rules.Verdict(lease.id, sealed.receipt.seq, True, sealed=sealed, delta=delta)
            )
        try:
            stored = await self.database.run_grouped(self.store.store, Batch(agent, verdicts, now))
        except BaseException:
            self.state.last_receipts.update(chain_before)
            raise
        self.refused.update(stored.refused)
        self._apply_postings(stored.verdicts, stored.postings, chain_before)
        return rules.answer(stored.verdicts)

    async def _answered_before(
        self, agent: Agent, claims: list[Claim], envelopes: list[bytes]
    ) -> list[rules.Verdict | None]:
        """For each receipt, the answer it already got (a retry), or None for one to verify.

        Memory alone clears a receipt that continues its lease's known chain (counting the
        batch's earlier receipts) and was never refused for good; the others are looked up."""
        next_seq: dict[str, int] = {}
        answers: list[rules.Verdict | None] = []
        for (lease_id, seq), envelope in zip(claims, envelopes, strict=True):
            lease = self.state.leases.get(lease_id or "")
            if lease is None or lease.agent_id != agent.agent_id:
                answers.append(None)
                continue
            assert lease_id is not None
            if lease_id not in next_seq:
                previous = await self.queries.previous(lease, agent)
                next_seq[lease_id] = previous.receipt.seq + 1 if previous is not None else 1
            if (
                seq is not None
                and seq == next_seq.get(lease_id)
                and (lease_id, seq) not in self.refused
            ):
                next_seq[lease_id] = seq + 1
                answers.append(None)
                continue
            answers.append(await self.queries.stored_answer(lease_id, seq, envelope))
        return answers

    def _apply_postings(
        self,
        verdicts: list[rules.Verdict],
        postings: list[billing.Posting],
        chain_before: dict[str, SealedReceipt | None],
    ) -> None:
        """After the commit: charges on jobs, and revocation of leases credit cannot cover."""
        state = self.state
        for posting in postings:
            job = state.jobs[posting.job_id]
            job.charged += posting.amount
            job.voucher += posting.voucher
            job.deferred += posting.deferred
        last_accepted: dict[str, SealedReceipt] = {}
        for verdict in verdicts:
            if verdict.accepted and verdict.sealed is not None:
                last_accepted[verdict.sealed.receipt.lease_id] = verdict.sealed
                state.leases[
                    verdict.sealed.receipt.lease_id
                ].charged = verdict.sealed.receipt.amount
        for lease_id, before in chain_before.items():
            state.last_receipts[lease_id] = last_accepted.get(lease_id, before)
        if any(
            sealed.receipt.final and self.settlement.waiting(sealed.receipt.job_id)
            for sealed in last_accepted.values()
        ):
            self.signals.wake_scheduler()  # a finished job's last receipt is in: settle it now
        for verdict in verdicts:
            if verdict.rule == "credit_exceeded" and verdict.lease_id in state.leases:
                lease = state.leases[verdict.lease_id]
                if lease.active and lease.stop_reason is None:
                    stop = self.transitions.request_stop(lease, "revoked", self.clock())
                    self.database.submit(_stop_writes(lease_row(lease), stop))
                    self.signals.notify(lease.agent_id)


def _stop_writes(row: dict[str, Any], stop: bytes) -> Callable[[Session], None]:
    def write(db: Session) -> None:
        db.table("leases").upsert(row, pk="id")
        tlog.append_entries(db, [stop])

    return write
