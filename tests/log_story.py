"""A coordinator's story told as log entries, and the tools to serve and audit it: shared by the
transparency-log tests and the attacks on a rogue coordinator."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from databases import closed_after_the_test, drop_refusals

from coordinator import tlog
from coordinator.client import audit
from coordinator.storage import Database, Session, connect, transaction
from coordinator.storage.log_tables import LOG_TABLES
from shared import canonical
from shared import log_entries as L
from shared.auction import AgentOffer, GpuOffer, JobSpec, round_record, run_auction
from shared.envelope import seal
from shared.identity import PrivateKey
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, SealedReceipt, seal_receipt
from shared.signed_request import sign_request

USCC = "91350100M000100Y43"
T0 = 1_750_000_000_000
GPUS = ("GPU-a0", "GPU-a1")
STEP_GPU_MS = 2 * 60_000
STARTED = 10  # ms after T0: the lease's start report
MAX_DURATION_MS = 3_600_000


# -- building logs -----------------------------------------------------------------------------


def open_db(path: str | Path) -> Session:
    """A database (a SQLite file or a PostgreSQL URL), migrated."""
    return closed_after_the_test(connect(path))


def transfer(digest: bytes, leg: str) -> bytes:
    return hashlib.sha256(b"test-transfer\n" + digest + leg.encode()).digest()


def usage_postings(digest: bytes, delta: int) -> tuple[L.Posting, ...]:
    voucher = delta // 2
    deferred = delta - voucher
    legs = []
    if voucher:
        legs += [
            L.Posting(
                transfer(digest, "voucher"),
                "pool:2025",
                "earnings:prov-1",
                voucher,
                "usage_voucher",
            ),
            L.Posting(
                transfer(digest, "cap"),
                f"cap:2025:{USCC}",
                "entitlements_used:2025",
                voucher,
                "usage_cap",
            ),
        ]
    if deferred:
        legs += [
            L.Posting(
                transfer(digest, "deferred"),
                "receivable:ent-1",
                "earnings:prov-1",
                deferred,
                "usage_deferred",
            ),
            L.Posting(
                transfer(digest, "credit"), "credit:ent-1", "credit_used", deferred, "usage_credit"
            ),
        ]
    return tuple(legs)


class Story:
    """An honest log: a policy, an enterprise, two agents, an auction the first agent wins, its
    lease's chained receipts (each acknowledged and posted), a payment and a period close."""

    def __init__(self, log_key: PrivateKey) -> None:
        self.log_key = log_key
        self.agent = PrivateKey.generate()
        self.rival = PrivateKey.generate()
        job = JobSpec("job-1", 2, 40 << 30, (), 10_000_000)
        offers = [
            AgentOffer(
                self.agent.public.agent_id,
                5_000_000,
                1_000_000,
                tuple(GpuOffer(uuid, "H100", 80 << 30, True) for uuid in GPUS),
            ),
            AgentOffer(
                self.rival.public.agent_id,
                6_000_000,
                900_000,
                (
                    GpuOffer("GPU-b0", "H100", 80 << 30, True),
                    GpuOffer("GPU-b1", "H100", 80 << 30, True),
                ),
            ),
        ]
        self.job, self.offers = job, offers
        self.outcome = run_auction(job, offers)
        assert self.outcome.winner == self.agent.public.agent_id
        assert self.outcome.price_per_gpu_hour == 6_000_000
        self.price: int = self.outcome.price_per_gpu_hour
        self.sealed: list[SealedReceipt] = []
        self._honest: list[bytes] | None = None

    def auction_entry(self, outcome: Any = None) -> bytes:
        record = round_record(self.job, self.offers, outcome or self.outcome)
        body = L.AuctionRoundEntry(canonical.encode(record))
        return L.encode_entry(L.AUCTION_ROUND, T0 + 3, body)

    def agent_entry(self, key: PrivateKey) -> bytes:
        return L.encode_entry(
            L.AGENT_KEY, T0 + 1, L.AgentKey(key.public.agent_id, key.public.raw, "prov-1", USCC)
        )

    def next_receipt(self, signer: PrivateKey | None = None) -> SealedReceipt:
        previous = self.sealed[-1] if self.sealed else None
        seq = previous.receipt.seq + 1 if previous else 1
        gpu_ms = seq * STEP_GPU_MS
        receipt = Receipt(
            lease_id="lease-1",
            job_id="job-1",
            agent_id=(signer or self.agent).public.agent_id,
            seq=seq,
            prev=previous.digest if previous else GENESIS_PREV,
            issued_at_ms=T0 + STARTED + seq * 60_000,
            gpu_uuids=GPUS,
            gpu_ms=gpu_ms,
            energy_mj=seq * 1000,
            utilization_pct=90,
            peak_memory_bytes=1 << 30,
            price_per_gpu_hour=self.price,
            amount=usage_amount(gpu_ms, self.price),
            final=False,
            exit_code=None,
        )
        sealed = seal_receipt(receipt, signer or self.agent)
        self.sealed.append(sealed)
        return sealed

    def delta(self, sealed: SealedReceipt) -> int:
        index = next(n for n, s in enumerate(self.sealed) if s.digest == sealed.digest)
        return sealed.receipt.amount - (self.sealed[index - 1].receipt.amount if index else 0)

    def receipt_entry(
        self,
        sealed: SealedReceipt,
        *,
        postings: tuple[L.Posting, ...] | None = None,
        envelope: bytes | None = None,
    ) -> bytes:
        return L.encode_entry(
            L.RECEIPT,
            sealed.receipt.issued_at_ms + 5,
            L.ReceiptEntry(
                envelope or sealed.envelope,
                postings
                if postings is not None
                else usage_postings(sealed.digest, self.delta(sealed)),
            ),
        )

    def acknowledged(self, sealed: SealedReceipt, log_index: int) -> L.AcknowledgedReceipt:
        """How an acknowledgement names this receipt, posted on its own at `log_index`."""
        receipt = sealed.receipt
        ids = tuple(p.transfer_id for p in usage_postings(sealed.digest, self.delta(sealed)))
        return L.AcknowledgedReceipt(
            sealed.digest,
            receipt.lease_id,
            receipt.seq,
            receipt.amount,
            self.delta(sealed),
            log_index,
            ids,
        )

    def acknowledgement_entry(
        self, log_index: int = 5, key: PrivateKey | None = None, **changes: Any
    ) -> bytes:
        """The logged acknowledgement of the three receipts of `honest()` (entries 5-7), the
        last of them with `changes`."""
        acknowledged = [
            self.acknowledged(sealed, index)
            for index, sealed in enumerate(self.sealed[:3], start=log_index)
        ]
        acknowledged[-1] = acknowledged[-1]._replace(**changes)
        envelope = L.seal_acknowledgement(
            L.Acknowledgement(self.agent.public.agent_id, T0 + 10**6, tuple(acknowledged)),
            key or self.log_key,
        )
        return L.encode_entry(L.ACKNOWLEDGEMENT, T0 + 10**6, L.AcknowledgementEntry(envelope))

    def acknowledgement(
        self, sealed: SealedReceipt, log_index: int, key: PrivateKey | None = None
    ) -> bytes:
        """What the coordinator would have countersigned for this receipt alone."""
        return L.seal_acknowledgement(
            L.Acknowledgement(
                sealed.receipt.agent_id,
                sealed.receipt.issued_at_ms + 5,
                (self.acknowledged(sealed, log_index),),
            ),
            key or self.log_key,
        )

    def rotation_entry(
        self,
        new_key: PrivateKey,
        signer: PrivateKey | None = None,
        old_key: PrivateKey | None = None,
    ) -> bytes:
        """A log_key entry moving the log from `old_key` (the story's key) to `new_key`, signed
        by `signer` (the old key, as an honest rotation is)."""
        old = old_key or self.log_key
        change = L.LogKeyChange(
            tlog.default_origin(self.log_key), old.public.raw, new_key.public.raw
        )
        envelope = L.seal_log_key(change.origin, new_key.public, old)
        if signer is not None and signer is not old:
            envelope = seal("log_key", change.to_payload(), signer)
        return L.encode_entry(L.LOG_KEY, T0 + 3 * 10**6, L.LogKeyEntry(envelope))

    def receipts(self, count: int) -> list[bytes]:
        return [self.receipt_entry(self.next_receipt()) for _ in range(count)]

    def opening(self) -> list[bytes]:
        """Entries 0-4: policy, enterprise, both agents, the auction."""
        return [
            L.encode_entry(
                L.VOUCHER_POLICY,
                T0,
                {"coverage_bps": 5000, "fiscal_year": 2025, "self_dealing_allowed": False},
            ),
            L.encode_entry(L.ENTERPRISE, T0, L.EnterpriseEntry("ent-1", USCC)),
            self.agent_entry(self.agent),
            self.agent_entry(self.rival),
            self.auction_entry(),
        ]

    def closing(self) -> list[bytes]:
        pay = L.PaymentEntry(
            "pay-1",
            "ent-1",
            100_000,
            (
                L.Posting(
                    transfer(b"pay-1", "receivable"), "bank", "receivable:ent-1", 100_000, "payment"
                ),
                L.Posting(
                    transfer(b"pay-1", "credit"),
                    "credit_used",
                    "credit:ent-1",
                    100_000,
                    "payment_credit",
                ),
            ),
        )
        close = L.PeriodCloseEntry(
            "2025-06",
            (
                L.Statement("enterprise", "ent-1", 600_000, 300_000, 300_000, T0 + 30 * 86_400_000),
                L.Statement("provider", "prov-1", 600_000, 300_000, 300_000, None),
            ),
        )
        return [
            L.encode_entry(L.PAYMENT, T0 + 10**6, pay),
            L.encode_entry(L.PERIOD_CLOSE, T0 + 2 * 10**6, close),
        ]

    def lease_entries(self) -> list[bytes]:
        """The lease's award and the agent's signed start report (they fix its window)."""
        award = L.LeaseAwardEntry(
            "lease-1",
            "job-1",
            self.agent.public.agent_id,
            GPUS,
            self.price,
            MAX_DURATION_MS,
            60_000,
        )
        report = sign_request(
            self.agent,
            "POST",
            "/v1/agent/status",
            {"lease_id": "lease-1", "event": "started"},
            T0 + STARTED,
        )
        return [
            L.encode_entry(L.LEASE_AWARD, T0 + 3, award),
            L.encode_entry(
                L.LEASE_EVENT,
                T0 + STARTED,
                L.LeaseEventEntry("lease-1", L.LEASE_STARTED, report=report),
            ),
        ]

    def honest(self) -> list[bytes]:
        """Twelve entries: opening (0-4), three receipts (5-7), payment and period close (8-9),
        the lease's award and start (10-11, wherever the log puts them their window is the
        same); the same ones each time."""
        if self._honest is None:
            self._honest = self.opening() + self.receipts(3) + self.closing() + self.lease_entries()
        return list(self._honest)


@pytest.fixture
def log_key() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture
def story(log_key: PrivateKey) -> Story:
    return Story(log_key)


def write_log(
    path: str | Path, key: PrivateKey, entries: list[bytes], origin: str | None = None
) -> None:
    """A log holding exactly these entries, signed (as `origin`, by default the key's own log);
    what an honest coordinator, or an attacker with the database and the key who rebuilds the
    tree, leaves behind."""
    db = open_db(path)
    conn = db.conn
    drop_refusals(db, "log_entries")
    with transaction(db):
        for table in ("log_entries", "log_hashes", "log_checkpoints", "log_lookup"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute("UPDATE log_meta SET size = 0")
        if entries:
            tlog.append_entries(db, entries)
        tlog.sign_checkpoint(db, key, origin or tlog.default_origin(key), T0)
    restore_log_refusals(db)
    conn.close()


def restore_log_refusals(db: Session) -> None:
    """The log's append-only triggers back in place after `drop_refusals`."""
    if db.engine == "postgresql":
        db.conn.execute("ALTER TABLE log_entries ENABLE TRIGGER USER")
    else:
        db.conn.executescript(LOG_TABLES)  # type: ignore[attr-defined]  # sqlite3's own


@asynccontextmanager
async def serving(
    path: str | Path, key: PrivateKey, interval_s: float = 0.05, origin: str | None = None
) -> AsyncIterator[str]:
    """The log's routes on a real aiohttp server on loopback, over the real writer thread."""
    open_db(path).conn.close()
    database = Database(path)
    app = web.Application()

    async def writer(app: web.Application) -> AsyncIterator[None]:
        database.start()
        yield
        database.close()

    app.cleanup_ctx.append(writer)
    tlog.add_routes(
        app, tlog.TransparencyLog(database, key, origin or tlog.default_origin(key), interval_s)
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def verify(
    path: str | Path,
    key: PrivateKey,
    state: Path | None = None,
    log_key: str | None = None,
    origin: str | None = None,
) -> audit.AuditReport:
    async with serving(path, key, origin=origin) as url:
        return await audit.verify_log(url, log_key, state, None)


def codes(report: audit.AuditReport | audit.ReceiptReport) -> set[str]:
    return {d.code for d in report.discrepancies}


# -- entries -----------------------------------------------------------------------------------


def rotated(story: Story, new_key: PrivateKey, signer: PrivateKey | None = None) -> list[bytes]:
    """Seventeen entries: the honest story and its acknowledgement (12, by the story's key),
    a rotation to `new_key` (13), two more receipts (14-15) and their acknowledgement by the new
    key (16): what an honest coordinator that rotated its key logs."""
    leaves = story.honest() + [story.acknowledgement_entry(), story.rotation_entry(new_key, signer)]
    leaves += story.receipts(2)
    acknowledged = tuple(
        story.acknowledged(sealed, index)
        for index, sealed in zip((14, 15), story.sealed[3:5], strict=True)
    )
    envelope = L.seal_acknowledgement(
        L.Acknowledgement(story.agent.public.agent_id, T0 + 4 * 10**6, acknowledged), new_key
    )
    return leaves + [
        L.encode_entry(L.ACKNOWLEDGEMENT, T0 + 4 * 10**6, L.AcknowledgementEntry(envelope))
    ]
