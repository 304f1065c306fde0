"""The coordinator wired together: the state, and the rooms that are handed it.

State lives in memory (rebuilt from SQLite at start) and every change that anyone can
observe is committed before it is acknowledged or shown to an agent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from coordinator import billing, tlog
from coordinator.admin_changes import AdminChanges
from coordinator.agent_door.delivery import LeaseDelivery
from coordinator.agent_door.enrolment import Enrolment
from coordinator.agent_door.heartbeats import Heartbeats
from coordinator.agent_door.reports import LeaseReports
from coordinator.agent_door.signed_requests import SignedRequests
from coordinator.attention import Attention
from coordinator.commit import Committer
from coordinator.config import Settings
from coordinator.deadlines import Deadlines
from coordinator.enterprises import Enterprises
from coordinator.jobs.board import JobBoard
from coordinator.jobs.logs import JobLogs
from coordinator.jobs.quote import Quotes
from coordinator.principals import Principals
from coordinator.receipts.intake import ReceiptIntake
from coordinator.receipts.signature_workers import SignatureWorkers
from coordinator.receipts.store import ReceiptStore
from coordinator.scheduler import Scheduler
from coordinator.secret_box import SecretBox, seal_clear_secrets
from coordinator.settlement import Settlement
from coordinator.signals import Signals
from coordinator.state import load_state
from coordinator.storage import Database
from coordinator.transitions import Transitions
from shared.clock import now_ms
from shared.identity import PrivateKey

log = logging.getLogger(__name__)


class Coordinator:
    def __init__(
        self,
        settings: Settings,
        database: Database,
        signing_key: PrivateKey | tlog.LogKey,
        clock: Callable[[], int] = now_ms,
        policy: billing.VoucherPolicy | None = None,
        prepare: bool = True,
        secret_box: SecretBox | None = None,
    ) -> None:
        """`prepare`: open the fiscal year and log the policy and registrations (the leader's
        start-up writes); a standby only reads. `secret_box` seals job secrets at rest (by
        default under a key that lives in memory only)."""
        self.settings = settings
        self.database = database
        self.clock = clock
        self.policy = policy or billing.VoucherPolicy()
        # the log's key follows rotations: acknowledgements are signed with the key in force
        self.log_key = (
            signing_key
            if isinstance(signing_key, tlog.LogKey)
            else tlog.LogKey(signing_key, tlog.default_origin(signing_key))
        )
        self.secret_box = secret_box or SecretBox.ephemeral()
        if prepare:
            with database.transaction() as db:
                billing.open_fiscal_year(db, self.policy, clock())
                tlog.log_voucher_policy(db, dataclasses.asdict(self.policy), clock())
                tlog.log_registrations(db)
                seal_clear_secrets(db, self.secret_box)
        # a standby delivers no lease, so it opens no secret
        opener = self.secret_box if prepare else None
        state = self.state = load_state(database.db, settings, clock(), opener)
        signals = self.signals = Signals()
        self.settlement = Settlement(state, database, settings, clock)
        committer = Committer(state, database, self.settlement, clock)
        transitions = Transitions(state, settings)
        self.enterprises = Enterprises(self.policy)
        self.principals = Principals(database, clock)
        self.admin = AdminChanges(
            state, database, transitions, committer, signals, self.principals, clock
        )
        # the agent door
        self.signed_requests = SignedRequests(state, database, settings, clock)
        self.enrolment = Enrolment(state, database, signals, settings, clock)
        self.heartbeats = Heartbeats(state, database, committer, signals, settings, clock)
        self.delivery = LeaseDelivery(state, signals, settings, clock)
        self.logs = JobLogs(database, settings.job_log_limit_bytes)
        self.reports = LeaseReports(state, transitions, committer, signals, self.logs, clock)
        # jobs, and placing them
        self.jobs = JobBoard(
            state,
            database,
            transitions,
            committer,
            signals,
            settings,
            self.policy,
            clock,
            self.secret_box,
        )
        self.quotes = Quotes(state, database, self.policy, settings, clock)
        self.scheduler = Scheduler(state, transitions, committer, signals, settings, clock)
        self.attention = Attention(clock, self.scheduler.counters)
        self.deadlines = Deadlines(
            state, transitions, committer, signals, settings, clock, self.attention
        )
        # receipts
        self.signature_workers = SignatureWorkers(settings.receipt_workers)
        self.receipt_store = ReceiptStore(
            self.log_key,
            self.policy,
            state,
            self.enterprises,
            settings.rejections_per_agent_per_day,
        )
        self.receipts = ReceiptIntake(
            state,
            database,
            self.receipt_store,
            self.signature_workers,
            transitions,
            self.settlement,
            signals,
            clock,
        )

    async def run_scheduler(self) -> None:
        """The scheduler's loop: each pass (on a nudge, or every scheduler interval) writes the
        agents that only heartbeated, places pending jobs, checks deadlines and settles."""
        interval = self.settings.scheduler_interval_ms / 1000
        wake = self.signals.scheduler
        while True:
            try:
                await asyncio.wait_for(wake.wait(), timeout=interval)
            except TimeoutError:
                pass
            wake.clear()
            try:
                self.heartbeats.flush()
                await self.scheduler.schedule_once()
                await self.deadlines.check()
                await self.settlement.settle_due()
            except Exception:
                log.exception("scheduler pass failed")

    def close(self) -> None:
        """Stop the signature workers (the database is closed by its owner)."""
        self.signature_workers.close()
