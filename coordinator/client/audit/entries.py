"""The auditor's walk of the log: every entry re-verified in log order with the coordinator's
own rules from `shared` (agent keys, enterprises, receipts and their chains, postings against
what each lease's receipts added, acknowledgements, payments, statements), the auctions
replayed (`AuctionAudit`) and every receipt held to its lease's billable window
(`WindowAudit`)."""

from __future__ import annotations

from coordinator.client.audit.auctions import AuctionAudit
from coordinator.client.audit.key_chain import KeyChain
from coordinator.client.audit.reports import AuditReport
from coordinator.client.audit.windows import WindowAudit
from shared import ledger_names
from shared import log_entries as L
from shared.envelope import peek_key_id
from shared.errors import ReceiptRuleError, SuanliError
from shared.identity import PublicKey, verifier_key
from shared.money import format_money
from shared.receipts import SealedReceipt, check_pure, open_receipt
from shared.uscc import validate_uscc


class EntryAuditor:
    """Re-verifies the entries in log order, keeping what later entries are checked against."""

    def __init__(self, report: AuditReport, chain: KeyChain, auctions_only: bool) -> None:
        self.report = report
        self.chain = chain
        self.auctions_only = auctions_only
        self.agents: dict[str, PublicKey] = {}
        self.usccs: dict[str, str] = {}
        self.chains: dict[str, SealedReceipt] = {}
        self.receipts: set[bytes] = set()
        self.posted: dict[str, int] = {}  # lease -> the cumulative amount its postings charged
        # log index -> the receipt there, as an acknowledgement names it
        self.logged_receipts: dict[int, L.AcknowledgedReceipt] = {}
        self.last_receipt_index: dict[str, int] = {}
        self.transfers: dict[bytes, int] = {}
        self.auctions = AuctionAudit(self.problem)
        self.windows = WindowAudit(self.agents, self.problem)

    def run(self, data: list[bytes]) -> None:
        for index, raw in enumerate(data):
            try:
                entry = L.decode_entry(raw)
            except L.LogEntryError as exc:
                self.report.problem("bad_entry", exc.detail, index)
                continue
            self.report.entries_by_kind[entry.kind] += 1
            if isinstance(entry.body, L.AuctionRoundEntry):
                self.auctions.round(index, entry.body)
            elif self.auctions_only:
                continue
            elif isinstance(entry.body, L.AgentKey):
                self.agent_key(index, entry.body)
            elif isinstance(entry.body, L.EnterpriseEntry):
                self.enterprise(index, entry.body)
            elif isinstance(entry.body, L.ReceiptEntry):
                self.receipt(index, entry.body, entry.at_ms)
            elif isinstance(entry.body, L.LeaseAwardEntry):
                self.lease_award(index, entry.body, entry.at_ms)
            elif isinstance(entry.body, L.LeaseEventEntry):
                self.windows.event(index, entry.at_ms, entry.body)
            elif isinstance(entry.body, L.PaymentEntry):
                self.payment(index, entry.body)
            elif isinstance(entry.body, L.PeriodCloseEntry):
                self.period_close(index, entry.body)
            elif isinstance(entry.body, L.AcknowledgementEntry):
                self.acknowledgement(index, entry.body)
        self.finish()
        self.report.agents = len(self.agents)
        self.report.enterprises = len(self.usccs)
        self.report.leases = len(self.chains)
        self.report.auctions_replayed = self.auctions.replayed

    def problem(self, code: str, detail: str, index: int) -> None:
        self.report.problem(code, detail, index)

    def agent_key(self, index: int, body: L.AgentKey) -> None:
        key = PublicKey(body.public_key)
        known = self.agents.get(body.agent_id)
        if known is not None and known != key:
            self.problem(
                "agent_key_changed",
                f"agent {body.agent_id} is registered again with another key",
                index,
            )
            return
        self.agents[body.agent_id] = key

    def enterprise(self, index: int, body: L.EnterpriseEntry) -> None:
        try:
            validate_uscc(body.uscc)
        except SuanliError as exc:
            self.problem("bad_uscc", f"enterprise {body.enterprise_id}: {exc.detail}", index)
        holder = self.usccs.get(body.uscc)
        if holder is not None and holder != body.enterprise_id:
            self.problem(
                "duplicate_uscc",
                f"enterprise {body.enterprise_id} is registered under "
                f"USCC {body.uscc}, which enterprise {holder} already holds; one voucher "
                "entitlement per USCC",
                index,
            )
            return
        self.usccs[body.uscc] = body.enterprise_id

    def lease_award(self, index: int, body: L.LeaseAwardEntry, at_ms: int) -> None:
        self.auctions.awarded(
            index,
            f"lease {body.lease_id} gives",
            body.job_id,
            body.agent_id,
            body.price_per_gpu_hour,
            body.gpu_uuids,
        )
        self.windows.award(index, at_ms, body)

    def receipt(self, index: int, body: L.ReceiptEntry, at_ms: int) -> None:
        digest = body.digest
        if digest in self.receipts:
            self.problem("duplicate_receipt", f"receipt {digest.hex()[:16]} is logged twice", index)
            return
        try:
            agent_id = peek_key_id(body.envelope, "receipt").hex()
        except SuanliError as exc:
            self.problem("bad_receipt", f"the receipt envelope is malformed: {exc.detail}", index)
            return
        key = self.agents.get(agent_id)
        if key is None:
            self.problem(
                "unregistered_agent",
                f"the receipt is signed by agent {agent_id}, whose "
                "key no earlier agent_key entry of the log registers",
                index,
            )
            return
        try:
            sealed = open_receipt(body.envelope, key)
        except ReceiptRuleError as exc:
            self.problem("bad_receipt", f"the receipt fails rule {exc.rule}: {exc.detail}", index)
            return
        receipt = sealed.receipt
        self.receipts.add(digest)
        self.report.receipts += 1
        previous = self.chains.get(receipt.lease_id)
        where = f"lease {receipt.lease_id} seq {receipt.seq}"
        try:
            check_pure(previous, receipt)
        except ReceiptRuleError as exc:
            self.problem("receipt_chain", f"{where} breaks rule {exc.rule}: {exc.detail}", index)
        self.chains[receipt.lease_id] = sealed
        self.windows.receipt(index, at_ms, receipt)
        if previous is None:
            self.auctions.awarded(
                index,
                f"{where} bills",
                receipt.job_id,
                receipt.agent_id,
                receipt.price_per_gpu_hour,
                receipt.gpu_uuids,
            )
        charge = 0
        for posting in body.postings:
            if not posting.code.startswith(ledger_names.USAGE_PREFIX):
                self.problem(
                    "postings_mismatch",
                    f"{where} has a posting with code {posting.code}, which is not a usage code",
                    index,
                )
            if posting.code in ledger_names.USAGE_CHARGE_CODES:
                charge += posting.amount
            if posting.code == ledger_names.USAGE_VOUCHER:
                self.report.voucher += posting.amount
            elif posting.code == ledger_names.USAGE_DEFERRED:
                self.report.deferred += posting.amount
            self.post(index, posting)
        self.report.charged += charge
        # a lease's receipts of one batch are posted together, on the last of them
        unposted = receipt.amount - self.posted.get(receipt.lease_id, 0)
        if body.postings:
            if charge != unposted:
                self.problem(
                    "postings_mismatch",
                    f"{where}: the postings charge "
                    f"{format_money(charge)} but the lease's receipts added "
                    f"{format_money(unposted)} since its last posting",
                    index,
                )
            self.posted[receipt.lease_id] = receipt.amount
        self.last_receipt_index[receipt.lease_id] = index
        delta = receipt.amount - (previous.receipt.amount if previous is not None else 0)
        self.logged_receipts[index] = L.AcknowledgedReceipt(
            digest,
            receipt.lease_id,
            receipt.seq,
            receipt.amount,
            delta,
            index,
            tuple(p.transfer_id for p in body.postings),
        )

    def acknowledgement(self, index: int, body: L.AcknowledgementEntry) -> None:
        """The coordinator's word to an agent must match the receipts the log holds."""
        key = self.chain.at(index)
        try:
            acknowledgement = L.open_acknowledgement(body.envelope, key)
        except SuanliError as exc:
            self.problem(
                "bad_acknowledgement",
                f"the acknowledgement does not verify with the "
                f"log key in force at entry {index}, "
                f"{verifier_key(self.chain.origin, key)}: {exc.detail}",
                index,
            )
            return
        self.report.acknowledgements += 1
        for said in acknowledgement.receipts:
            logged = self.logged_receipts.get(said.log_index) if said.log_index < index else None
            if logged is None:
                self.problem(
                    "bad_acknowledgement",
                    f"the acknowledgement names entry "
                    f"{said.log_index} for receipt {said.digest.hex()[:16]}, but no "
                    "verified receipt of the log before it is there",
                    index,
                )
            elif said != logged:
                self.problem(
                    "bad_acknowledgement",
                    f"the acknowledgement says of entry "
                    f"{said.log_index} (lease {said.lease_id} seq {said.seq}) amount "
                    f"{said.amount} delta {said.delta} and {len(said.transfer_ids)} "
                    f"transfers, but the log holds amount {logged.amount} delta "
                    f"{logged.delta} and {len(logged.transfer_ids)} transfers",
                    index,
                )

    def finish(self) -> None:
        """What only the whole log shows: usage accepted but never posted, and receipts that
        bill outside their lease's window (which later entries may close)."""
        self.windows.finish()
        for lease_id, sealed in self.chains.items():
            unposted = sealed.receipt.amount - self.posted.get(lease_id, 0)
            if unposted > 0:
                self.problem(
                    "unposted_usage",
                    f"lease {lease_id}'s receipts add "
                    f"{format_money(unposted)} after its last posting, but no "
                    "posting of the log charges it",
                    self.last_receipt_index[lease_id],
                )

    def payment(self, index: int, body: L.PaymentEntry) -> None:
        if not body.postings:
            self.problem("bad_payment", f"payment {body.reference} has no postings", index)
        for posting in body.postings:
            if posting.amount != body.amount:
                self.problem(
                    "bad_payment",
                    f"payment {body.reference} of "
                    f"{format_money(body.amount)} has a posting of "
                    f"{format_money(posting.amount)}",
                    index,
                )
            self.post(index, posting)

    def period_close(self, index: int, body: L.PeriodCloseEntry) -> None:
        for s in body.statements:
            if s.total != s.voucher + s.deferred:
                self.problem(
                    "bad_statement",
                    f"the {body.period} statement of {s.party_kind} "
                    f"{s.party_id} totals {format_money(s.total)}, not its voucher "
                    f"{format_money(s.voucher)} plus deferred {format_money(s.deferred)}",
                    index,
                )

    def post(self, index: int, posting: L.Posting) -> None:
        first = self.transfers.setdefault(posting.transfer_id, index)
        if first != index:
            self.problem(
                "duplicate_transfer",
                f"transfer {posting.transfer_id.hex()[:16]} was "
                f"already logged in entry {first}; money moved twice",
                index,
            )
            return
        accounts = self.report.accounts
        accounts.setdefault(posting.debit_account, {"debits": 0, "credits": 0})
        accounts.setdefault(posting.credit_account, {"debits": 0, "credits": 0})
        accounts[posting.debit_account]["debits"] += posting.amount
        accounts[posting.credit_account]["credits"] += posting.amount
