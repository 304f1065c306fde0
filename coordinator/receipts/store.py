"""Verified receipt batches written down: receipts, their usage on the ledger, the log, the answers.

The writer thread hands `ReceiptStore.store` every receipt batch queued at once (see
`Database.run_grouped`), so a burst of small batches shares one ledger pass, one log append
and one commit. Each lease's receipts of a batch are posted as one usage on the last of them:
receipts are cumulative, so that is the same money as one posting each. Only when the
enterprise's credit cannot cover the sum are they posted one by one, so the ones it covers
are still accepted and the rest refused. Each batch gets one countersigned acknowledgement
naming its accepted receipts with their cumulative amounts, deltas, log indices and transfers,
logged after them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator import billing, tlog
from coordinator.enterprises import Enterprises
from coordinator.market import Agent
from coordinator.receipts import rules as receipt_rules
from coordinator.state import State
from coordinator.storage import Session
from shared import log_entries
from shared.receipts import SealedReceipt

Rejection = tuple[str | None, int | None, str | None, str | None, bytes]


@dataclass
class Batch:
    """One agent's request: its receipts' verdicts as the event loop reached them."""

    agent: Agent
    verdicts: list[receipt_rules.Verdict]
    now: int


@dataclass
class Stored:
    """A batch as committed: final verdicts, the usage posted, and receipts refused for good."""

    verdicts: list[receipt_rules.Verdict]
    postings: list[billing.Posting] = field(default_factory=list)
    refused: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class _Accepted:
    batch: int
    position: int
    sealed: SealedReceipt
    delta: int
    transfer_ids: tuple[bytes, ...] = ()


class ReceiptStore:
    def __init__(
        self,
        log_key: tlog.LogKey,
        policy: billing.VoucherPolicy,
        state: State,
        enterprises: Enterprises,
        rejections_per_agent_per_day: int = 10_000,
    ) -> None:
        """The leases' jobs and enterprises are read from `state`. Rejections are kept for
        auditors up to `rejections_per_agent_per_day` rows per agent and UTC day: a rogue
        agent's flood of bad receipts is answered, counted, and not stored past it."""
        self.log_key = log_key
        self.rejection_limit = rejections_per_agent_per_day
        self.rejections_stored: dict[str, tuple[int, int]] = {}  # agent -> (day, rows stored)
        self.rejections_dropped = 0
        self.policy = policy
        self.state = state
        self.enterprises = enterprises

    def store(self, db: Session, batches: list[Batch]) -> list[Stored]:
        now = max(batch.now for batch in batches)
        stored = [Stored(list(batch.verdicts)) for batch in batches]
        rejected: list[tuple[str, Rejection]] = []
        accepted: list[_Accepted] = []
        for b, batch in enumerate(batches):
            for n, verdict in enumerate(batch.verdicts):
                if verdict.sealed is not None:
                    accepted.append(_Accepted(b, n, verdict.sealed, verdict.delta))
                elif not verdict.accepted and not verdict.already_stored:
                    if (
                        verdict.lease_id is not None
                        and verdict.seq is not None
                        and verdict.rule not in receipt_rules.RETRYABLE_RULES
                    ):
                        stored[b].refused.append((verdict.lease_id, verdict.seq))
                    rejected.append(
                        (
                            batch.agent.agent_id,
                            (
                                verdict.lease_id,
                                verdict.seq,
                                verdict.rule,
                                verdict.detail,
                                verdict.envelope,
                            ),
                        )
                    )
        if accepted:
            self._store_accepted(db, batches, stored, accepted, rejected, now)
        db.conn.executemany(
            "INSERT INTO receipt_rejections "
            "(agent_id, lease_id, seq, rule, detail, envelope, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(agent_id, *row, now) for agent_id, row in self._kept(rejected, now)],
        )
        return stored

    def _kept(self, rejected: list[tuple[str, Rejection]], now: int) -> list[tuple[str, Rejection]]:
        day = now // 86_400_000
        kept = []
        for agent_id, row in rejected:
            seen_day, count = self.rejections_stored.get(agent_id, (day, 0))
            count = count if seen_day == day else 0
            if count < self.rejection_limit:
                kept.append((agent_id, row))
                count += 1
            else:
                self.rejections_dropped += 1
            self.rejections_stored[agent_id] = (day, count)
        return kept

    def _store_accepted(
        self,
        db: Session,
        batches: list[Batch],
        stored: list[Stored],
        accepted: list[_Accepted],
        rejected: list[tuple[str, Rejection]],
        now: int,
    ) -> None:
        acknowledgement_ids = {
            b: _new_acknowledgement(db, batches[b].agent.agent_id, now)
            for b in sorted({a.batch for a in accepted})
        }
        db.conn.executemany(
            "INSERT INTO receipts (lease_id, seq, agent_id, envelope, digest, issued_at_ms, "
            "accepted_at_ms, gpu_ms, amount, delta, final, acknowledgement_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    a.sealed.receipt.lease_id,
                    a.sealed.receipt.seq,
                    batches[a.batch].agent.agent_id,
                    a.sealed.envelope,
                    a.sealed.digest,
                    a.sealed.receipt.issued_at_ms,
                    now,
                    a.sealed.receipt.gpu_ms,
                    a.sealed.receipt.amount,
                    a.delta,
                    int(a.sealed.receipt.final),
                    acknowledgement_ids[a.batch],
                )
                for a in accepted
            ],
        )
        outcome = self._post_usage(db, batches, accepted, now)
        logged: list[_Accepted] = []
        entries: list[tuple[bytes, log_entries.Entry]] = []
        refused_digests: list[bytes] = []
        for a in accepted:
            receipt = a.sealed.receipt
            result = outcome.get(a.sealed.digest)
            if isinstance(result, billing.CreditExceeded):
                stored[a.batch].verdicts[a.position] = receipt_rules.Verdict(
                    receipt.lease_id, receipt.seq, False, "credit_exceeded", result.detail
                )
                stored[a.batch].refused.append((receipt.lease_id, receipt.seq))
                rejected.append(
                    (
                        batches[a.batch].agent.agent_id,
                        (
                            receipt.lease_id,
                            receipt.seq,
                            "credit_exceeded",
                            result.detail,
                            a.sealed.envelope,
                        ),
                    )
                )
                refused_digests.append(a.sealed.digest)
                continue
            legs = result.legs if result is not None else ()
            if result is not None:
                stored[a.batch].postings.append(result)
            a.transfer_ids = tuple(t.id for t in legs)
            entries.append(
                log_entries.encode_receipt_entry(
                    now,
                    log_entries.ReceiptEntry(
                        a.sealed.envelope,
                        tuple(
                            log_entries.Posting(
                                t.id, t.debit_account, t.credit_account, t.amount, t.code
                            )
                            for t in legs
                        ),
                    ),
                )
            )
            logged.append(a)
        if refused_digests:
            db.conn.executemany(
                "DELETE FROM receipts WHERE digest = ?", [(d,) for d in refused_digests]
            )
        # the acknowledgements name the receipts' log indices and are logged right after them:
        # one append for both
        first = tlog.size(db)
        entries += self._acknowledge(db, batches, stored, logged, first, acknowledgement_ids, now)
        if entries:
            appended = tlog.append_entries(
                db, [data for data, _ in entries], [entry for _, entry in entries]
            )
            assert appended == first

    def _acknowledge(
        self,
        db: Session,
        batches: list[Batch],
        stored: list[Stored],
        logged: list[_Accepted],
        first: int,
        acknowledgement_ids: dict[int, int],
        now: int,
    ) -> list[tuple[bytes, log_entries.Entry]]:
        """Sign each batch's acknowledgement, the receipts logged from index `first` on; returns
        their log entries. A batch with nothing accepted after all has none."""
        by_batch: dict[int, list[tuple[int, _Accepted]]] = {}
        for index, a in enumerate(logged, start=first):
            by_batch.setdefault(a.batch, []).append((index, a))
        signed = []
        key = self.log_key.refresh(db)  # in this transaction: a rotation logged before it counts
        for b, acknowledgement_id in acknowledgement_ids.items():
            if b not in by_batch:
                db.conn.execute(
                    "DELETE FROM receipt_acknowledgements WHERE id = ?", [acknowledgement_id]
                )
                continue
            envelope = log_entries.seal_acknowledgement(
                log_entries.Acknowledgement(
                    batches[b].agent.agent_id,
                    now,
                    tuple(
                        log_entries.AcknowledgedReceipt(
                            a.sealed.digest,
                            a.sealed.receipt.lease_id,
                            a.sealed.receipt.seq,
                            a.sealed.receipt.amount,
                            a.delta,
                            index,
                            a.transfer_ids,
                        )
                        for index, a in by_batch[b]
                    ),
                ),
                key,
            )
            signed.append((envelope, acknowledgement_id))
            for _, a in by_batch[b]:
                stored[b].verdicts[a.position] = receipt_rules.Verdict(
                    a.sealed.receipt.lease_id,
                    a.sealed.receipt.seq,
                    True,
                    acknowledgement=envelope,
                    sealed=a.sealed,
                    delta=a.delta,
                )
        db.conn.executemany("UPDATE receipt_acknowledgements SET envelope = ? WHERE id = ?", signed)
        bodies = [log_entries.AcknowledgementEntry(envelope) for envelope, _ in signed]
        return [
            (
                log_entries.encode_entry(log_entries.ACKNOWLEDGEMENT, now, body),
                log_entries.Entry(log_entries.ACKNOWLEDGEMENT, now, body),
            )
            for body in bodies
        ]

    def _post_usage(
        self, db: Session, batches: list[Batch], accepted: list[_Accepted], now: int
    ) -> dict[bytes, billing.Posting | billing.CreditExceeded]:
        """Post each batch's usage, a lease's receipts together on the last of them, unless
        the credit cannot cover the sum (`post_usages` refuses what follows a refusal)."""
        runs: dict[tuple[int, str], list[_Accepted]] = {}
        for a in accepted:
            runs.setdefault((a.batch, a.sealed.receipt.lease_id), []).append(a)

        def usage(a: _Accepted, amount: int) -> billing.Usage:
            agent = batches[a.batch].agent
            job_id, enterprise_id = self.state.lease_party(a.sealed.receipt.lease_id)
            return billing.Usage(
                enterprise_id,
                agent.provider_id,
                self.enterprises.uscc(db, enterprise_id),
                agent.provider_uscc,
                a.sealed.receipt.lease_id,
                job_id,
                a.sealed.digest,
                amount,
            )

        together = [usage(run[-1], sum(a.delta for a in run)) for run in runs.values()]
        outcome: dict[bytes, billing.Posting | billing.CreditExceeded] = {}
        one_by_one: list[billing.Usage] = []
        for run, result in zip(
            runs.values(),
            billing.post_usages(db, together, policy=self.policy, now_ms=now),
            strict=True,
        ):
            if isinstance(result, billing.CreditExceeded) and len(run) > 1:
                one_by_one += [usage(a, a.delta) for a in run]
            else:
                outcome[run[-1].sealed.digest] = result
        if one_by_one:
            for single, result in zip(
                one_by_one,
                billing.post_usages(db, one_by_one, policy=self.policy, now_ms=now),
                strict=True,
            ):
                outcome[single.receipt_digest] = result
        return outcome


def _new_acknowledgement(db: Session, agent_id: str, now: int) -> int:
    """A batch's acknowledgement row, its envelope signed once its receipts are logged."""
    cursor = db.conn.execute(
        "INSERT INTO receipt_acknowledgements (agent_id, accepted_at_ms, envelope) "
        "VALUES (?, ?, ?) RETURNING id",
        [agent_id, now, b""],
    )
    return int(cursor.fetchone()[0])
