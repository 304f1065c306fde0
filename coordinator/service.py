"""The coordinator's logic: enrolment, heartbeats, jobs, auctions and the life of leases.

State lives in memory (rebuilt from SQLite at start) and every change that anyone can
observe is committed before it is acknowledged or shown to an agent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import sqlite_utils

from coordinator import accounts, receipt_store, tlog, vouchers
from coordinator import receipts as receipt_rules
from coordinator.accounts import Principal
from coordinator.capacity import parse_inventory
from coordinator.config import Settings
from coordinator.errors import Conflict, Forbidden, NotFound, Unauthenticated, Unprocessable
from coordinator.job_logs import JobLogs
from coordinator.jobs import (
    CANCELLED,
    FAILED,
    LEASE_ENDED,
    LEASE_OFFERED,
    LEASE_RUNNING,
    LEASED,
    LOST,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Job,
    JobRequest,
    Lease,
    parse_job_request,
    secret_env_values,
)
from coordinator.limits import RateLimiter
from coordinator.market import FLAG_KINDS, Agent, Flag, Gpu, Market
from coordinator.receipt_pool import ReceiptOpener
from coordinator.storage import Database, transaction
from shared import canonical, log_entries
from shared.auction import JobSpec, Outcome, round_record, run_auction
from shared.clock import now_ms
from shared.errors import ReceiptRuleError, SuanliError
from shared.gpu_models import expand_model_filter
from shared.identity import PrivateKey, PublicKey
from shared.money import format_yuan
from shared.receipts import Rule, SealedReceipt, claimed_id, open_receipt
from shared.signed_request import open_request, request_key_id

log = logging.getLogger(__name__)

# a failure to start that is the job's own fault fails the job instead of requeueing it
JOB_FAULTS = frozenset(
    {"image_not_found", "image_pull_failed", "invalid_command", "start_failed", "registry_refused"}
)
MAX_REASON = 512
CLOSED_LEASES_SHOWN_MS = 600_000
MAX_CLOSED_SHOWN = 100
# a request floor is persisted when an agent's clock skew grows by more than this: the margin
# covers what the last flush missed, and an honest agent's steady skew costs no write
SKEW_MARGIN_MS = 25
TOKEN_LOOKUPS_PER_S, TOKEN_LOOKUP_BURST = 500, 2_000
ALIVE_INTERVAL_MS = 600  # at most this long between two writes of coordinator_alive
FLAG_HISTORY = 256  # cleared capacity flags kept per agent for operators


@dataclass
class Counters:
    auction_rounds: int = 0
    placements: int = 0
    auction_seconds: float = 0.0


class Coordinator:
    def __init__(
        self,
        settings: Settings,
        database: Database,
        signing_key: PrivateKey | tlog.LogKey,
        clock: Callable[[], int] = now_ms,
        policy: vouchers.VoucherPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy or vouchers.VoucherPolicy()
        # the log's key follows rotations: acknowledgements are signed with the key in force
        self.log_key = (
            signing_key
            if isinstance(signing_key, tlog.LogKey)
            else tlog.LogKey(signing_key, tlog.default_origin(signing_key))
        )
        self.last_receipts: dict[str, SealedReceipt | None] = {}
        self.closing = False
        self._dirty_agents: dict[str, Agent] = {}
        self._usccs: dict[str, str] = {}
        # (lease, seq) refused for good: a retry must be looked up, never re-verified
        self._refused: set[tuple[str, int]] = set()
        self.database = database
        self.clock = clock
        self.market = Market(settings.reliability_half_life_ms)
        self.jobs: dict[str, Job] = {}
        self.jobs_by_key: dict[tuple[str, str], Job] = {}
        self.leases: dict[str, Lease] = {}
        self._job_leases: dict[str, list[str]] = {}
        self._agent_leases: dict[str, list[str]] = {}
        self._settle_due: dict[
            str, int
        ] = {}  # finished job -> when its reservation is released anyway
        self.pending: dict[str, Job] = {}
        self.agent_versions: dict[str, int] = {}
        self._agent_events: dict[str, asyncio.Event] = {}
        self._principals: dict[str, Principal] = {}  # by token hash
        self._enrolling: set[str] = set()
        # tokens not in the cache cost a database read each: all of them together are bounded,
        # so a flood of made-up tokens cannot stall the writer (known tokens are cached)
        self._token_lookups = RateLimiter(
            TOKEN_LOOKUPS_PER_S,
            TOKEN_LOOKUP_BURST,
            "requests with tokens this coordinator has not seen lately",
        )
        self._admin_seen = 0
        self._started_ms = self.clock()
        self._floors_dirty: dict[str, int] = {}
        # secret env values of unfinished jobs, for their winning agent only; erased at the end
        self._secrets: dict[str, dict[str, str]] = {}
        self._wake_scheduler = asyncio.Event()
        self.counters = Counters()
        self.logs = JobLogs(database, settings.job_log_limit_bytes)
        self.opener = ReceiptOpener(settings.receipt_workers)
        self.receipt_store = receipt_store.ReceiptStore(
            self.log_key,
            self.policy,
            self._lease_party,
            self._enterprise_uscc,
            settings.rejections_per_agent_per_day,
        )
        self._load(database.db)

    # -- start-up -----------------------------------------------------------------------

    def _load(self, db: sqlite_utils.Database) -> None:
        with transaction(db):
            vouchers.open_fiscal_year(db, self.policy, self.clock())
            tlog.log_voucher_policy(db, dataclasses.asdict(self.policy), self.clock())
            tlog.log_registrations(db)
        usccs = {row["id"]: row["uscc"] for row in db.query("SELECT id, uscc FROM providers")}
        for row in db.query("SELECT * FROM agents"):
            agent = Agent(
                agent_id=row["agent_id"],
                provider_id=row["provider_id"],
                provider_uscc=usccs.get(row["provider_id"], ""),
                public_key=PublicKey(row["public_key"]),
                hostname=row["hostname"],
                ask_per_gpu_hour=row["ask_per_gpu_hour"],
                last_seen_ms=row["last_seen_ms"],
                penalty_ppm=row["penalty_ppm"],
                penalty_at_ms=row["penalty_at_ms"],
                revoked=row["revoked_at_ms"] is not None,
            )
            self.market.agents[agent.agent_id] = agent
        for row in db.query("SELECT * FROM gpus"):
            agent = self.market.agents.get(row["agent_id"])
            if agent is not None:
                agent.gpus[row["uuid"]] = Gpu(
                    row["uuid"], agent.agent_id, row["model"], row["memory_total_bytes"]
                )
                if not agent.revoked:
                    self.market.gpu_owner[row["uuid"]] = agent.agent_id
        for row in db.query("SELECT * FROM capacity_flags WHERE cleared_at_ms IS NULL"):
            agent = self.market.agents.get(row["agent_id"])
            if agent is None or row["gpu_uuid"] is None or row["kind"] not in FLAG_KINDS:
                continue
            agent.flags.setdefault(
                (row["gpu_uuid"], row["kind"]),
                Flag(row["agent_id"], row["gpu_uuid"], row["kind"], row["detail"], row["at_ms"]),
            )
            gpu = agent.gpus.get(row["gpu_uuid"])
            if gpu is not None and gpu.flag is None:
                gpu.flag = row["kind"]
        # a request signed before this start, by the agent's own clock, may have been seen
        # before it: refused, so a restart forgets no nonce that could be replayed
        for row in db.query("SELECT agent_id, skew_ms FROM agent_request_floors"):
            agent = self.market.agents.get(row["agent_id"])
            if agent is not None:
                agent.skew_ms = row["skew_ms"]
        self._admin_seen = db.conn.execute(
            "SELECT COALESCE(MAX(id), 0) FROM admin_changes"
        ).fetchone()[0]
        for row in db.query("SELECT job_id, name, value FROM job_secrets"):
            self._secrets.setdefault(row["job_id"], {})[row["name"]] = row["value"]
        for row in db.query("SELECT * FROM jobs"):
            job = Job(
                id=row["id"],
                enterprise_id=row["enterprise_id"],
                idempotency_key=row["idempotency_key"],
                request=parse_job_request(json.loads(row["spec"])),
                created_at_ms=row["created_at_ms"],
                state=row["state"],
                reason=row["reason"],
                reason_detail=row["reason_detail"],
                attempts=row["attempts"],
                excluded_agents=json.loads(row["excluded_agents"]),
                lease_id=row["lease_id"],
                ended_at_ms=row["ended_at_ms"],
                exit_code=row["exit_code"],
                cancel_requested=bool(row["cancel_requested"]),
            )
            self._index_job(job)
        for row in db.query("SELECT * FROM leases"):
            lease = Lease(
                id=row["id"],
                job_id=row["job_id"],
                agent_id=row["agent_id"],
                gpu_uuids=tuple(json.loads(row["gpu_uuids"])),
                price_per_gpu_hour=row["price_per_gpu_hour"],
                created_at_ms=row["created_at_ms"],
                start_deadline_ms=row["start_deadline_ms"],
                ends_at_ms=row["ends_at_ms"],
                state=row["state"],
                stop_reason=row["stop_reason"],
                started_at_ms=row["started_at_ms"],
                ended_at_ms=row["ended_at_ms"],
                exit_code=row["exit_code"],
                end_reason=row["end_reason"],
                max_duration_ms=row["max_duration_ms"]
                if row["max_duration_ms"] is not None
                else self.jobs[row["job_id"]].request.max_duration_s * 1000,
                stop_grace_ms=row["stop_grace_ms"]
                if row["stop_grace_ms"] is not None
                else self.settings.stop_grace_ms,
                stop_requested_at_ms=row["stop_requested_at_ms"],
            )
            self._index_lease(lease)
            agent = self.market.agents.get(lease.agent_id)
            if lease.active and agent is not None:
                for uuid in lease.gpu_uuids:
                    if uuid in agent.gpus:
                        agent.gpus[uuid].lease_id = lease.id
        for row in db.query(
            "SELECT lease_id, MAX(amount) AS amount FROM receipts GROUP BY lease_id"
        ):
            lease = self.leases.get(row["lease_id"])
            if lease is not None:
                lease.charged = row["amount"]
        for row in db.query(
            "SELECT DISTINCT lease_id, seq FROM receipt_rejections WHERE rule NOT IN "
            f"({receipt_rules.RETRYABLE_SQL}) AND seq IS NOT NULL"
        ):
            # an ended lease's receipts may still arrive, so its refusals are remembered too
            if row["lease_id"] in self.leases:
                self._refused.add((row["lease_id"], row["seq"]))
        for row in db.query(
            "SELECT job_id, SUM(amount) AS amount, SUM(voucher) AS voucher, "
            "SUM(deferred) AS deferred FROM ledger_postings GROUP BY job_id"
        ):
            job = self.jobs.get(row["job_id"])
            if job is not None:
                job.charged, job.voucher, job.deferred = (
                    row["amount"],
                    row["voucher"],
                    row["deferred"],
                )
        now = self.clock()
        # the last moment the previous run may have accepted a request (it wrote this while
        # serving, and once more as it stopped)
        alive = db.conn.execute("SELECT at_ms, stopped FROM coordinator_alive").fetchone()
        last_served = now if alive is None else alive[0] + (0 if alive[1] else ALIVE_INTERVAL_MS)
        for agent in self.market.agents.values():
            agent.not_before_ms = last_served + (agent.skew_ms or 0) + SKEW_MARGIN_MS
            # an agent counts as online after a restart until its heartbeat timeout says otherwise
            agent.online = (
                not agent.revoked
                and agent.last_seen_ms is not None
                and (now - agent.last_seen_ms < self.settings.heartbeat_timeout_ms)
            )
            if agent.online:
                agent.last_seen_ms = max(agent.last_seen_ms or 0, now)
            self.market.refresh(agent)
        # a job that ended lately may still hold for late receipts (settling twice is a no-op)
        grace = self.settings.settle_grace_ms
        for job in self.jobs.values():
            if job.final and job.ended_at_ms is not None and now - job.ended_at_ms < 2 * grace:
                self._settle_due[job.id] = job.ended_at_ms + grace

    def _index_lease(self, lease: Lease) -> None:
        self.leases[lease.id] = lease
        self._job_leases.setdefault(lease.job_id, []).append(lease.id)
        self._agent_leases.setdefault(lease.agent_id, []).append(lease.id)

    def _leases_of(self, agent_id: str, active_only: bool = True) -> list[Lease]:
        """The agent's leases, oldest first (its active ones unless `active_only` is False)."""
        leases = [self.leases[lease_id] for lease_id in self._agent_leases.get(agent_id, ())]
        return [lease for lease in leases if lease.active] if active_only else leases

    def _index_job(self, job: Job) -> None:
        self.jobs[job.id] = job
        self.jobs_by_key[(job.enterprise_id, job.idempotency_key)] = job
        if job.state == PENDING:
            self.pending[job.id] = job

    # -- persistence --------------------------------------------------------------------

    @staticmethod
    def _job_row(job: Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "enterprise_id": job.enterprise_id,
            "idempotency_key": job.idempotency_key,
            "spec": json.dumps(job.request.to_json(), sort_keys=True),
            "state": job.state,
            "reason": job.reason,
            "reason_detail": job.reason_detail,
            "attempts": job.attempts,
            "excluded_agents": json.dumps(job.excluded_agents),
            "lease_id": job.lease_id,
            "created_at_ms": job.created_at_ms,
            "ended_at_ms": job.ended_at_ms,
            "exit_code": job.exit_code,
            "cancel_requested": int(job.cancel_requested),
        }

    @staticmethod
    def _lease_row(lease: Lease) -> dict[str, Any]:
        return {
            "id": lease.id,
            "job_id": lease.job_id,
            "agent_id": lease.agent_id,
            "gpu_uuids": json.dumps(list(lease.gpu_uuids)),
            "price_per_gpu_hour": lease.price_per_gpu_hour,
            "created_at_ms": lease.created_at_ms,
            "start_deadline_ms": lease.start_deadline_ms,
            "ends_at_ms": lease.ends_at_ms,
            "state": lease.state,
            "stop_reason": lease.stop_reason,
            "started_at_ms": lease.started_at_ms,
            "ended_at_ms": lease.ended_at_ms,
            "exit_code": lease.exit_code,
            "end_reason": lease.end_reason,
            "max_duration_ms": lease.max_duration_ms,
            "stop_grace_ms": lease.stop_grace_ms,
            "stop_requested_at_ms": lease.stop_requested_at_ms,
        }

    async def _save(
        self,
        jobs: list[Job] = (),
        leases: list[Lease] = (),  # type: ignore[assignment]
        agents: list[Agent] = (),
        extra: Callable[[sqlite_utils.Database], None] | None = None,  # type: ignore[assignment]
        entries: list[bytes] = (),
    ) -> None:  # type: ignore[assignment]
        """Commit jobs, leases and agents, and append the log entries of what changed, at once."""
        job_rows = [self._job_row(j) for j in jobs]
        lease_rows = [self._lease_row(lease) for lease in leases]
        agent_rows = [self._agent_row(a) for a in agents]
        finished = [j for j in jobs if j.final]
        ended = [j.id for j in finished]
        for job_id in ended:
            self._secrets.pop(job_id, None)
        now = self.clock()
        settle = self._settle_or_defer(finished, now)

        def write(db: sqlite_utils.Database) -> None:
            if job_rows:
                db["jobs"].upsert_all(job_rows, pk="id")
            for job_id in settle:
                vouchers.settle_job(db, job_id, now)
            for job_id in ended:
                db.conn.execute("DELETE FROM job_secrets WHERE job_id = ?", [job_id])
            if lease_rows:
                db["leases"].upsert_all(lease_rows, pk="id")
            if agent_rows:
                db.conn.executemany(_AGENT_UPDATE, agent_rows)
            if extra is not None:
                extra(db)
            if entries:
                tlog.append_entries(db, list(entries))

        await self.database.run(write)

    # -- settlement: a finished job's reservation is released once no receipt may still come --

    def _billing_closed(self, job: Job) -> bool:
        """Every lease of the job either never started or has its final receipt accepted."""
        for lease_id in self._job_leases.get(job.id, ()):
            lease = self.leases[lease_id]
            if lease.started_at_ms is None:
                continue
            last = self.last_receipts.get(lease_id)
            if lease.active or last is None or not last.receipt.final:
                return False
        return True

    def _settle_or_defer(self, finished: list[Job], now: int) -> list[str]:
        """The finished jobs to settle now; the others wait (up to settle_grace_ms) for their
        leases' last receipts, which the reservation must still be able to pay."""
        settle = []
        for job in finished:
            if self._billing_closed(job):
                settle.append(job.id)
                self._settle_due.pop(job.id, None)
            else:
                self._settle_due.setdefault(job.id, now + self.settings.settle_grace_ms)
        return settle

    async def settle_due(self) -> None:
        now = self.clock()
        due = [
            job_id
            for job_id, at in self._settle_due.items()
            if now >= at or self._billing_closed(self.jobs[job_id])
        ]
        if not due:
            return
        for job_id in due:
            del self._settle_due[job_id]

        def write(db: sqlite_utils.Database) -> None:
            for job_id in due:
                vouchers.settle_job(db, job_id, now)

        await self.database.run(write)

    def _flush_agents(self) -> None:
        """Write the liveness and asks of agents that only heartbeated, in one statement."""
        if not self._dirty_agents:
            return
        rows = [self._agent_row(agent) for agent in self._dirty_agents.values()]
        self._dirty_agents.clear()
        self.database.submit(lambda db: db.conn.executemany(_AGENT_UPDATE, rows))

    @staticmethod
    def _agent_row(agent: Agent) -> dict[str, Any]:
        return {
            "agent_id": agent.agent_id,
            "ask_per_gpu_hour": agent.ask_per_gpu_hour,
            "last_seen_ms": agent.last_seen_ms,
            "penalty_ppm": agent.penalty_ppm,
            "penalty_at_ms": agent.penalty_at_ms,
        }

    # -- who is calling -----------------------------------------------------------------

    async def principal_for_token(self, token: str) -> Principal:
        token_hash = accounts.hash_token(token)
        cached = self._principals.get(token_hash)
        if cached is not None:
            return cached
        self._token_lookups.take("all")
        now = self.clock()
        principal = await self.database.run(lambda db: accounts.lookup_token(db, token, now))
        if principal is None:
            raise Unauthenticated("the token is not valid")
        if len(self._principals) > 100_000:
            self._principals.clear()
        self._principals[token_hash] = principal
        return principal

    def authenticate_agent(self, body: bytes, method: str, path: str) -> tuple[Agent, Any]:
        try:
            key_id = request_key_id(body)
        except SuanliError as exc:
            raise Unauthenticated(f"agent requests must be signed: {exc.detail}") from None
        agent = self.market.agents.get(key_id.hex())
        if agent is None:
            raise Unauthenticated("the request is signed by a key that is not enrolled")
        if agent.revoked:
            raise Unauthenticated(
                "this agent's key has been revoked, or replaced by a rotation", code="agent_revoked"
            )
        now = self.clock()
        window = self.settings.signed_request_window_ms
        try:
            signed = open_request(body, agent.public_key, method, path, now, window)
        except SuanliError as exc:
            raise Unauthenticated(exc.detail) from None
        if signed.issued_at_ms <= agent.not_before_ms:
            # nonces seen before the coordinator's restart are forgotten; their times are not
            raise Unauthenticated(
                "the request was signed before the coordinator restarted "
                "(a possible replay); sign it again"
            )
        nonces = agent.nonces
        if signed.nonce in nonces:
            raise Unauthenticated("the request was already received (replayed nonce)")
        skew = signed.issued_at_ms - now
        if agent.skew_ms is None or skew > agent.skew_ms + SKEW_MARGIN_MS:
            agent.skew_ms = skew
            self._floors_dirty[agent.agent_id] = skew
        if len(nonces) > 256:
            for nonce, at in list(nonces.items()):
                if at < now - 2 * window:
                    del nonces[nonce]
        nonces[signed.nonce] = signed.issued_at_ms
        return agent, signed.body

    def flush_request_floors(self, stopping: bool = False) -> None:
        """Persist that the service is alive now, and the clock skews that grew since the last
        flush (rare: a steady skew is written once). After a restart an agent's requests must
        be signed after the last moment the old run served, by the agent's own clock."""
        rows = list(self._floors_dirty.items())
        self._floors_dirty.clear()
        now = self.clock()

        def write(db: sqlite_utils.Database) -> None:
            if rows:
                db.conn.executemany(
                    "INSERT INTO agent_request_floors (agent_id, skew_ms) VALUES (?, ?) "
                    "ON CONFLICT (agent_id) DO UPDATE SET skew_ms = excluded.skew_ms",
                    rows,
                )
            db.conn.execute(
                "INSERT OR REPLACE INTO coordinator_alive (id, at_ms, stopped) VALUES (1, ?, ?)",
                [now, int(stopping)],
            )

        self.database.submit(write)

    async def apply_admin_changes(self) -> None:
        """Apply, in order, what operators changed in the database since the last poll."""
        seen = self._admin_seen
        changes = await self.database.run(
            lambda db: db.conn.execute(
                "SELECT id, kind, subject FROM admin_changes WHERE id > ? ORDER BY id LIMIT 1000",
                [seen],
            ).fetchall()
        )
        for change_id, kind, subject in changes:
            self._admin_seen = max(self._admin_seen, change_id)
            if kind == "revoke_token":
                self._principals.pop(subject, None)
            elif kind == "revoke_agent":
                await self._revoke_agent(subject)
            elif kind == "clear_flag":
                await self._clear_flag(*subject.split("|", 2))

    async def _revoke_agent(self, agent_id: str) -> None:
        """Out of the market at once; its active leases end as lost and their jobs move on."""
        agent = self.market.agents.get(agent_id)
        if agent is None or agent.revoked:
            return
        now = self.clock()
        self.market.revoke(agent)
        changed_jobs, changed_leases, entries = [], [], []
        for lease in self._leases_of(agent_id):
            job = self.jobs[lease.job_id]
            entries.append(self._close(lease, now, "agent_revoked"))
            self._requeue(
                job,
                agent_id,
                "agent_revoked",
                f"agent {agent_id[:12]} was revoked by the coordinator's operator",
                now,
            )
            changed_jobs.append(job)
            changed_leases.append(lease)
        await self._save(jobs=changed_jobs, leases=changed_leases, entries=entries)
        self._notify(agent_id)
        self._wake_scheduler.set()
        log.warning(
            "agent %s revoked: %d active leases ended as lost", agent_id, len(changed_leases)
        )

    async def _clear_flag(self, agent_id: str, uuid: str, kind: str) -> None:
        agent = self.market.agents.get(agent_id)
        if agent is None:
            return
        moved = self.market.clear_flag(agent, uuid, kind, self.clock())
        if moved:
            extra = _capacity_writes(moved, [], [], self.clock())
            await self.database.run(extra)
        self._wake_scheduler.set()

    # -- enrolment ----------------------------------------------------------------------

    async def enrol(self, body: bytes, path: str) -> Agent:
        try:
            outer = canonical.decode(body)
        except SuanliError as exc:
            raise Unprocessable(f"enrolment body: {exc.detail}") from None
        if (
            type(outer) is not dict
            or type(outer.get("public_key")) is not bytes
            or type(outer.get("request")) is not bytes
        ):
            raise Unprocessable("enrolment is a map with public_key and a signed request")
        try:
            public = PublicKey(outer["public_key"])
            signed = open_request(
                outer["request"],
                public,
                "POST",
                path,
                self.clock(),
                self.settings.signed_request_window_ms,
            )
        except SuanliError as exc:
            raise Unauthenticated(
                f"enrolment is not signed by the key it registers: {exc.detail}"
            ) from None
        request = signed.body
        if type(request) is not dict or type(request.get("token")) is not str:
            raise Unprocessable("the signed enrolment names its token")
        hostname = request.get("hostname")
        if type(hostname) is not str or not 0 < len(hostname) <= 253 or not hostname.isprintable():
            raise Unprocessable("hostname must be 1 to 253 printable characters")
        token = request["token"]
        if public.agent_id in self.market.agents or public.agent_id in self._enrolling:
            raise Conflict("this key is already enrolled; an agent enrols once")
        now = self.clock()

        def write(db: sqlite_utils.Database) -> str:
            if db.conn.execute(
                "SELECT 1 FROM agents WHERE agent_id = ?", [public.agent_id]
            ).fetchone():
                raise Conflict("this key is already enrolled; an agent enrols once")
            provider_id = accounts.redeem_enrolment_token(db, token, now)
            db["agents"].insert(
                {
                    "agent_id": public.agent_id,
                    "provider_id": provider_id,
                    "public_key": public.raw,
                    "hostname": hostname,
                    "enrolled_at_ms": now,
                    "penalty_ppm": 0,
                    "penalty_at_ms": now,
                }
            )
            uscc = str(db["providers"].get(provider_id)["uscc"])
            key = log_entries.AgentKey(public.agent_id, public.raw, provider_id, uscc)
            tlog.append_entries(db, [log_entries.encode_entry(log_entries.AGENT_KEY, now, key)])
            return uscc + "|" + provider_id

        # one enrolment per key at a time: the others are told so, never an IntegrityError
        self._enrolling.add(public.agent_id)
        try:
            uscc, provider_id = (await self.database.run(write)).split("|")
        except sqlite3.IntegrityError:
            raise Conflict("this key is already enrolled; an agent enrols once") from None
        finally:
            self._enrolling.discard(public.agent_id)
        agent = Agent(
            agent_id=public.agent_id,
            provider_id=provider_id,
            provider_uscc=uscc,
            public_key=public,
            hostname=hostname,
            penalty_at_ms=now,
        )
        self.market.add_agent(agent)
        return agent

    async def rotate_key(self, agent: Agent, body: Any) -> dict[str, Any]:
        """The agent replaces its key: signed by the old key, the new key countersigns. The new
        key is a new agent_key in the log (auditors verify later receipts with it; earlier ones
        stay verifiable with the old entry); the agent's GPUs, flags and reliability pass to it
        and the old key is refused from now on. Only an idle agent rotates: a lease is billed
        under the key it was won with."""
        if (
            type(body) is not dict
            or type(body.get("public_key")) is not bytes
            or type(body.get("request")) is not bytes
        ):
            raise Unprocessable(
                "a key rotation is a map with public_key and the new key's signed request"
            )
        path = "/v1/agent/rotate-key"
        try:
            public = PublicKey(body["public_key"])
            signed = open_request(
                body["request"],
                public,
                "POST",
                path,
                self.clock(),
                self.settings.signed_request_window_ms,
            )
        except SuanliError as exc:
            raise Unauthenticated(f"the new key must sign the rotation: {exc.detail}") from None
        if signed.body != {"rotates": agent.agent_id}:
            raise Unprocessable("the new key's request must say {rotates: <this agent's id>}")
        if public.agent_id in self.market.agents or public.agent_id in self._enrolling:
            raise Conflict("the new key is already enrolled")
        active = self._leases_of(agent.agent_id)
        if active:
            raise Conflict(
                f"this agent holds {len(active)} active leases; rotate its key when it "
                "is idle (stop taking jobs, let them end)",
                code="agent_busy",
            )
        now = self.clock()
        old_id, new_id = agent.agent_id, public.agent_id

        def write(db: sqlite_utils.Database) -> None:
            db["agents"].insert(
                {
                    "agent_id": new_id,
                    "provider_id": agent.provider_id,
                    "public_key": public.raw,
                    "hostname": agent.hostname,
                    "enrolled_at_ms": now,
                    "ask_per_gpu_hour": agent.ask_per_gpu_hour,
                    "last_seen_ms": agent.last_seen_ms,
                    "penalty_ppm": agent.penalty_ppm,
                    "penalty_at_ms": agent.penalty_at_ms,
                }
            )
            db.execute("UPDATE agents SET revoked_at_ms = ? WHERE agent_id = ?", [now, old_id])
            db.execute("UPDATE gpus SET agent_id = ? WHERE agent_id = ?", [new_id, old_id])
            db.execute(
                "UPDATE capacity_flags SET agent_id = ? WHERE agent_id = ? AND cleared_at_ms IS NULL",
                [new_id, old_id],
            )
            key = log_entries.AgentKey(new_id, public.raw, agent.provider_id, agent.provider_uscc)
            tlog.append_entries(db, [log_entries.encode_entry(log_entries.AGENT_KEY, now, key)])

        self._enrolling.add(new_id)
        try:
            await self.database.run(write)
        except sqlite3.IntegrityError:
            raise Conflict("the new key is already enrolled") from None
        finally:
            self._enrolling.discard(new_id)
        successor = Agent(
            agent_id=new_id,
            provider_id=agent.provider_id,
            provider_uscc=agent.provider_uscc,
            public_key=public,
            hostname=agent.hostname,
            penalty_ppm=agent.penalty_ppm,
            penalty_at_ms=agent.penalty_at_ms,
            skew_ms=agent.skew_ms,
        )
        self.market.hand_over(agent, successor)
        self._notify(old_id)
        log.info("agent %s rotated its key; it is now agent %s", old_id, new_id)
        return {"agent_id": new_id, "previous_agent_id": old_id, "provider_id": agent.provider_id}

    # -- heartbeats ---------------------------------------------------------------------

    async def heartbeat(self, agent: Agent, body: Any) -> dict[str, Any]:
        if type(body) is not dict:
            raise Unprocessable("a heartbeat is a map with ask_per_gpu_hour and inventory")
        ask = body.get("ask_per_gpu_hour")
        if ask is not None and (type(ask) is not int or not 0 <= ask <= 10**12):
            raise Unprocessable("ask_per_gpu_hour must be micro-yuan from 0 to 10^12, or nil")
        inventory = parse_inventory(body.get("inventory"))
        now = self.clock()
        was_online = agent.online
        previous_ask, agent.ask_per_gpu_hour = agent.ask_per_gpu_hour, ask
        try:
            new_gpus, flags = self.market.reconcile(agent, inventory, now)
        except Exception:
            agent.ask_per_gpu_hour = previous_ask  # a refused heartbeat changes nothing
            raise
        new_flags = [f for f in flags if f.cleared_at_ms is None]
        cleared = [f for f in flags if f.cleared_at_ms is not None]
        if new_gpus or flags or not was_online:
            extra = _capacity_writes(new_gpus, new_flags, cleared, now)
            await self._save(agents=[agent], extra=extra)
            for entry in new_flags:
                log.warning("capacity flag %s: %s", entry.kind, entry.detail)
            self._wake_scheduler.set()
        else:
            self._dirty_agents[agent.agent_id] = agent
        return {
            "heartbeat_interval_ms": self.settings.heartbeat_interval_ms,
            "heartbeat_timeout_ms": self.settings.heartbeat_timeout_ms,
            "lease_version": self.agent_versions.get(agent.agent_id, 0),
            "flags": [{"gpu_uuid": g.uuid, "kind": g.flag} for g in agent.gpus.values() if g.flag],
        }

    # -- jobs ---------------------------------------------------------------------------

    async def submit_job(
        self, principal: Principal, body: Any, header_key: str | None
    ) -> tuple[Job, bool]:
        if principal.role != "enterprise":
            raise Forbidden("only enterprise accounts can post jobs")
        if not isinstance(body, dict):
            raise Unprocessable("the job must be a JSON object", code="invalid_job")
        key = body.get("idempotency_key", header_key)
        if key is None:
            key = accounts.new_id("auto")
        if type(key) is not str or not 0 < len(key) <= 128 or not key.isprintable():
            raise Unprocessable(
                "idempotency_key must be 1 to 128 printable characters", code="invalid_job"
            )
        request = parse_job_request({k: v for k, v in body.items() if k != "idempotency_key"})
        secrets = secret_env_values(body)
        if request.gpu_models:
            request = _with_models(request)
        existing = self.jobs_by_key.get((principal.subject_id, key))
        if existing is not None:
            if existing.request != request or self._secrets.get(existing.id, secrets) != secrets:
                raise Conflict(
                    f"idempotency key {key!r} was already used for job {existing.id} "
                    "with different fields",
                    code="idempotency_conflict",
                )
            return existing, False
        unfinished = sum(
            1 for j in self.jobs.values() if j.enterprise_id == principal.subject_id and not j.final
        )
        if unfinished >= self.settings.max_jobs_per_enterprise:
            raise Conflict(
                f"you already have {unfinished} unfinished jobs, the most allowed",
                code="too_many_jobs",
            )
        now = self.clock()
        job = Job(
            id=accounts.new_id("job"),
            enterprise_id=principal.subject_id,
            idempotency_key=key,
            request=request,
            created_at_ms=now,
            reason="waiting_for_auction",
            reason_detail="the job waits for the next auction",
        )
        row = self._job_row(job)
        max_cost = request.max_cost_micro_yuan
        policy = self.policy

        def write(db: sqlite_utils.Database) -> None:
            suspended, why = vouchers.is_suspended(db, job.enterprise_id, now)
            if suspended:
                raise vouchers.Suspended(why)
            vouchers.reserve_job(db, job.id, job.enterprise_id, max_cost, policy=policy, now_ms=now)
            db["jobs"].insert(row)
            if secrets:
                db["job_secrets"].insert_all(
                    [
                        {"job_id": job.id, "name": name, "value": value}
                        for name, value in secrets.items()
                    ]
                )

        # the key is claimed at once so a concurrent retry cannot make a second job; the job is
        # auctioned only once its reservation and row are committed
        self.jobs_by_key[(job.enterprise_id, key)] = job
        try:
            await self.database.run(write)
        except BaseException:
            self.jobs_by_key.pop((job.enterprise_id, key), None)
            raise
        if secrets:
            self._secrets[job.id] = secrets
        self._index_job(job)
        self._wake_scheduler.set()
        return job, True

    def job_for(self, principal: Principal, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or (
            principal.role == "enterprise" and job.enterprise_id != principal.subject_id
        ):
            raise NotFound(f"no job {job_id}")
        return job

    def jobs_for(self, principal: Principal, state: str | None, limit: int) -> list[Job]:
        jobs = [
            j
            for j in self.jobs.values()
            if (principal.role == "auditor" or j.enterprise_id == principal.subject_id)
            and (state is None or j.state == state)
        ]
        jobs.sort(key=lambda j: j.created_at_ms, reverse=True)
        return jobs[:limit]

    async def cancel_job(self, principal: Principal, job_id: str) -> Job:
        if principal.role != "enterprise":
            raise Forbidden("only the enterprise that posted a job can cancel it")
        job = self.job_for(principal, job_id)
        if job.final or job.cancel_requested:
            return job
        job.cancel_requested = True
        now = self.clock()
        if job.state == PENDING:
            self.pending.pop(job.id, None)
            self._finish(job, CANCELLED, now, "cancelled", "cancelled before it was placed")
            await self._save(jobs=[job])
            return job
        lease = self.leases[job.lease_id] if job.lease_id else None
        if lease is not None and lease.active:
            stop = self._request_stop(lease, "cancelled", now)
            job.reason, job.reason_detail = "cancelling", "the agent has been told to stop the job"
            await self._save(jobs=[job], leases=[lease], entries=[stop])
            self._notify(lease.agent_id)
        return job

    def job_view(self, job: Job, role: str = "enterprise") -> dict[str, Any]:
        """A job as its enterprise sees it; an auditor sees it without env values. Secret
        values are shown to nobody."""
        lease = self.leases.get(job.lease_id) if job.lease_id else None
        price = lease.price_per_gpu_hour if lease else None
        return {
            "id": job.id,
            "state": job.state,
            "reason": job.reason if not job.final or job.state != SUCCEEDED else None,
            "reason_detail": job.reason_detail,
            "agent_id": lease.agent_id if lease else None,
            "lease_id": lease.id if lease else None,
            "gpu_uuids": list(lease.gpu_uuids) if lease else [],
            "price_per_gpu_hour_micro_yuan": price,
            "price_per_gpu_hour_yuan": None if price is None else format_yuan(price),
            "created_at_ms": job.created_at_ms,
            "started_at_ms": lease.started_at_ms if lease else None,
            "ended_at_ms": job.ended_at_ms,
            "lease_ends_at_ms": lease.ends_at_ms if lease else None,
            "exit_code": job.exit_code,
            "charged_micro_yuan": job.charged,
            "voucher_micro_yuan": job.voucher,
            "deferred_micro_yuan": job.deferred,
            "attempts": job.attempts,
            "cancel_requested": job.cancel_requested,
            "idempotency_key": job.idempotency_key,
            "spec": job.request.to_json(env_values=role != "auditor"),
        }

    def _finish(
        self, job: Job, state: str, now: int, reason: str | None, detail: str | None
    ) -> None:
        job.state = state
        job.ended_at_ms = now
        job.reason, job.reason_detail = reason, detail
        self.pending.pop(job.id, None)

    # -- the auction --------------------------------------------------------------------

    def _job_spec(self, job: Job) -> JobSpec:
        request = job.request
        return JobSpec(
            job_id=job.id,
            gpu_count=request.gpus,
            min_gpu_memory_bytes=request.min_gpu_memory_bytes,
            gpu_models=request.gpu_models,
            max_price_per_gpu_hour=request.max_price_per_gpu_hour,
            excluded_agents=tuple(sorted(set(job.excluded_agents))),
        )

    def place_pending(self, limit: int = 500) -> tuple[list[Job], list[Lease], list[bytes]]:
        """Auction pending jobs, oldest first, in memory; returns what must be committed."""
        changed_jobs: list[Job] = []
        new_leases: list[Lease] = []
        records: list[tuple[str, int, bytes]] = []
        now = self.clock()
        started = time.perf_counter()
        version = self.market.version
        waiting = [j for j in self.pending.values() if j.tried_at_version != version]
        for job in sorted(waiting, key=lambda j: j.created_at_ms)[:limit]:
            job.tried_at_version = version
            spec = self._job_spec(job)
            offers = self.market.candidates(spec, now)
            outcome = run_auction(spec, offers)
            self.counters.auction_rounds += 1
            if outcome.winner is None:
                if job.reason != outcome.reason:
                    job.reason, job.reason_detail = outcome.reason, outcome.reason_detail
                    changed_jobs.append(job)
                    records.append(
                        (job.id, now, canonical.encode(round_record(spec, offers, outcome)))
                    )
                continue
            lease = self._lease_for(job, outcome, now)
            records.append((job.id, now, canonical.encode(round_record(spec, offers, outcome))))
            changed_jobs.append(job)
            new_leases.append(lease)
        self.counters.auction_seconds += time.perf_counter() - started
        return changed_jobs, new_leases, records  # type: ignore[return-value]

    def _lease_for(self, job: Job, outcome: Outcome, now: int) -> Lease:
        assert outcome.winner is not None and outcome.price_per_gpu_hour is not None
        lease = Lease(
            id=accounts.new_id("lease"),
            job_id=job.id,
            agent_id=outcome.winner,
            gpu_uuids=outcome.gpu_uuids,
            price_per_gpu_hour=outcome.price_per_gpu_hour,
            created_at_ms=now,
            start_deadline_ms=now + self.settings.start_deadline_ms,
            ends_at_ms=now + job.request.max_duration_s * 1000,
            max_duration_ms=job.request.max_duration_s * 1000,
            stop_grace_ms=self.settings.stop_grace_ms,
        )
        self._index_lease(lease)
        self.market.assign(self.market.agents[lease.agent_id], lease.gpu_uuids, lease.id)
        job.state, job.lease_id = LEASED, lease.id
        job.reason, job.reason_detail = "waiting_for_agent", "the winning agent is starting the job"
        self.pending.pop(job.id, None)
        self.counters.placements += 1
        return lease

    async def schedule_once(self) -> int:
        """Auction what is pending in slices, committing each before the next (the loop breathes)."""
        placed = 0
        while any(job.tried_at_version != self.market.version for job in self.pending.values()):
            jobs, leases, records = self.place_pending()
            if not jobs and not leases:
                continue

            def extra(
                db: sqlite_utils.Database, records: list[tuple[str, int, bytes]] = records
            ) -> None:
                db["auction_rounds"].insert_all(
                    [
                        {"job_id": job_id, "at_ms": at, "record": record}
                        for job_id, at, record in records
                    ]
                )
                tlog.append_entries(
                    db,
                    [
                        log_entries.encode_entry(
                            log_entries.AUCTION_ROUND, at, log_entries.AuctionRoundEntry(record)
                        )
                        for _, at, record in records
                    ],
                )

            await self._save(
                jobs=jobs,
                leases=leases,
                extra=extra,
                entries=[_award_entry(lease) for lease in leases],
            )
            for lease in leases:
                self._notify(lease.agent_id)
            placed += len(leases)
        return placed

    async def run_scheduler(self) -> None:
        interval = self.settings.scheduler_interval_ms / 1000
        while True:
            try:
                await asyncio.wait_for(self._wake_scheduler.wait(), timeout=interval)
            except TimeoutError:
                pass
            self._wake_scheduler.clear()
            try:
                self._flush_agents()
                await self.schedule_once()
                await self.check_deadlines()
                await self.settle_due()
            except Exception:
                log.exception("scheduler pass failed")

    # -- agents' view of their leases ---------------------------------------------------

    def close_long_polls(self) -> None:
        """Answer every waiting lease poll now (the service is shutting down)."""
        self.closing = True
        for event in self._agent_events.values():
            event.set()

    def _notify(self, agent_id: str) -> None:
        self.agent_versions[agent_id] = self.agent_versions.get(agent_id, 0) + 1
        event = self._agent_events.get(agent_id)
        if event is not None:
            event.set()

    def lease_view(self, lease: Lease) -> dict[str, Any]:
        request = self.jobs[lease.job_id].request
        return {
            "lease_id": lease.id,
            "job_id": lease.job_id,
            "gpu_uuids": list(lease.gpu_uuids),
            "price_per_gpu_hour": lease.price_per_gpu_hour,
            "start_deadline_ms": lease.start_deadline_ms,
            "ends_at_ms": lease.ends_at_ms,
            "state": lease.state,
            "desired": "stop" if lease.stop_reason else "run",
            "stop_reason": lease.stop_reason,
            "window": _window_view(lease),
            "job": {
                "image": request.image,
                "command": list(request.command),
                "env": {**dict(request.env), **self._secrets.get(lease.job_id, {})},
                "cpus_milli": request.cpus_milli,
                "memory_bytes": request.memory_bytes,
                "max_duration_s": request.max_duration_s,
            },
        }

    async def agent_leases(self, agent: Agent, body: Any) -> dict[str, Any]:
        if type(body) is not dict:
            raise Unprocessable("a lease poll is a map with known_version and wait_ms")
        known = body.get("known_version", -1)
        wait_ms = body.get("wait_ms", 0)
        if type(known) is not int or type(wait_ms) is not int or wait_ms < 0:
            raise Unprocessable("known_version and wait_ms must be integers, wait_ms ≥ 0")
        wait_ms = min(wait_ms, self.settings.long_poll_max_ms)
        if self.agent_versions.get(agent.agent_id, 0) == known and wait_ms > 0 and not self.closing:
            event = self._agent_events.setdefault(agent.agent_id, asyncio.Event())
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), timeout=wait_ms / 1000)
            except TimeoutError:
                pass
        now = self.clock()
        mine = self._leases_of(agent.agent_id, active_only=False)
        # leases ended lately (lost, say) whose agent may not know yet where their window closed
        closed = [
            lease
            for lease in mine
            if not lease.active
            and lease.started_at_ms is not None
            and lease.ended_at_ms is not None
            and now - lease.ended_at_ms < CLOSED_LEASES_SHOWN_MS
        ]
        return {
            "version": self.agent_versions.get(agent.agent_id, 0),
            "leases": [self.lease_view(lease) for lease in mine if lease.active],
            "closed": [
                {"lease_id": lease.id, "window": _window_view(lease)}
                for lease in closed[-MAX_CLOSED_SHOWN:]
            ],
        }

    def _agents_lease(self, agent: Agent, body: Any, what: str) -> Lease:
        """The lease a report names, if it is this agent's (another's is as good as unknown)."""
        if type(body) is not dict or type(body.get("lease_id")) is not str:
            raise Unprocessable(f"{what} is a map with lease_id")
        lease = self.leases.get(body["lease_id"])
        if lease is None or lease.agent_id != agent.agent_id:
            raise NotFound(f"no lease {body['lease_id']} for this agent")
        return lease

    async def agent_status(self, agent: Agent, body: Any, report: bytes = b"") -> dict[str, Any]:
        """A lease's start, exit or failure as the agent reports it; `report` is the signed
        request itself, which the log keeps as the agent's word for the start and the exit."""
        lease = self._agents_lease(agent, body, "a status report (lease_id, event)")
        event = body.get("event")
        reason = body.get("reason")
        if reason is not None and (type(reason) is not str or len(reason) > MAX_REASON):
            raise Unprocessable(f"reason must be a string of at most {MAX_REASON} characters")
        job = self.jobs[lease.job_id]
        now = self.clock()
        if not lease.active:
            return self._status_answer(lease)
        if event == "started":
            if lease.state == LEASE_OFFERED:
                started = self._open(lease, now, report)
                job.state = RUNNING
                job.reason, job.reason_detail = None, None
                await self._save(jobs=[job], leases=[lease], entries=[started])
        elif event == "exited":
            code = body.get("exit_code")
            if type(code) is not int or not -(2**31) <= code < 2**31:
                raise Unprocessable("an exit report carries exit_code as an integer")
            await self._end_lease(lease, job, now, "exited", code, reason, report)
        elif event == "failed":
            code_name = body.get("reason_code")
            if type(code_name) is not str or len(code_name) > 64:
                raise Unprocessable("a failure report carries reason_code")
            await self._failed_start(agent, lease, job, now, code_name, reason or code_name)
        else:
            raise Unprocessable("event must be started, exited or failed")
        return self._status_answer(lease)

    @staticmethod
    def _status_answer(lease: Lease) -> dict[str, Any]:
        return {"lease_id": lease.id, "state": lease.state, "window": _window_view(lease)}

    async def _end_lease(
        self,
        lease: Lease,
        job: Job,
        now: int,
        why: str,
        exit_code: int | None,
        agent_reason: str | None = None,
        report: bytes | None = None,
    ) -> None:
        ended = self._close(lease, now, why, exit_code, report)
        job.exit_code = exit_code
        if lease.stop_reason == "cancelled" or job.cancel_requested:
            self._finish(job, CANCELLED, now, "cancelled", "stopped on the enterprise's request")
        elif lease.stop_reason == "revoked":
            self._finish(
                job,
                FAILED,
                now,
                "credit_exhausted",
                "stopped because the enterprise's credit could not cover more usage",
            )
        elif lease.stop_reason == "lease_ended":
            self._finish(
                job,
                FAILED,
                now,
                "max_duration_reached",
                f"stopped after its maximum duration of {job.request.max_duration_s} s",
            )
        elif exit_code == 0:
            self._finish(job, SUCCEEDED, now, None, None)
        elif agent_reason:
            self._finish(
                job, FAILED, now, "stopped_by_agent", f"the agent stopped it: {agent_reason}"
            )
        elif exit_code == 137:
            self._finish(
                job,
                FAILED,
                now,
                "killed",
                "the container was killed (exit 137: out of memory or SIGKILL)",
            )
        else:
            self._finish(
                job, FAILED, now, "nonzero_exit", f"the container exited with code {exit_code}"
            )
        await self._save(jobs=[job], leases=[lease], entries=[ended])
        self._notify(lease.agent_id)
        self._wake_scheduler.set()

    async def _failed_start(
        self, agent: Agent, lease: Lease, job: Job, now: int, code: str, detail: str
    ) -> None:
        ended = self._close(lease, now, f"failed:{code}")
        if code in JOB_FAULTS:
            self._finish(job, FAILED, now, code, detail[:MAX_REASON])
        else:
            self._penalise(agent, now)
            self._requeue(
                job, lease.agent_id, code, f"the agent could not start it: {detail[:200]}", now
            )
        await self._save(jobs=[job], leases=[lease], agents=[agent], entries=[ended])
        self._notify(lease.agent_id)
        self._wake_scheduler.set()

    def _penalise(self, agent: Agent, now: int) -> None:
        """Add a penalty on top of what is left of earlier ones after their decay."""
        decayed = 1_000_000 - agent.reliability_ppm(now, self.settings.reliability_half_life_ms)
        agent.penalty_ppm = min(1_000_000, decayed + self.settings.reliability_penalty_ppm)
        agent.penalty_at_ms = now

    def _requeue(self, job: Job, agent_id: str, reason: str, detail: str, now: int) -> None:
        job.attempts += 1
        if agent_id not in job.excluded_agents:
            job.excluded_agents.append(agent_id)
        if job.cancel_requested:
            self._finish(job, CANCELLED, now, "cancelled", "cancelled while its agent was lost")
        elif job.attempts >= self.settings.max_attempts:
            self._finish(job, LOST, now, reason, f"{detail}; gave up after {job.attempts} attempts")
        else:
            job.state, job.lease_id, job.tried_at_version = PENDING, None, None
            job.reason, job.reason_detail = reason, f"{detail}; requeued"
            self.pending[job.id] = job

    async def check_deadlines(self) -> None:
        now = self.clock()
        timeout = self.settings.heartbeat_timeout_ms
        changed_jobs: list[Job] = []
        changed_leases: list[Lease] = []
        changed_agents: list[Agent] = []
        entries: list[bytes] = []
        for agent in self.market.agents.values():
            if (
                agent.online
                and agent.last_seen_ms is not None
                and now - agent.last_seen_ms > timeout
            ):
                self.market.mark_offline(agent)
                changed_agents.append(agent)
                for lease in self._leases_of(agent.agent_id):
                    job = self.jobs[lease.job_id]
                    entries.append(self._close(lease, now, "agent_lost"))
                    self._requeue(
                        job,
                        agent.agent_id,
                        "agent_lost",
                        f"agent {agent.agent_id[:12]} stopped heartbeating",
                        now,
                    )
                    changed_jobs.append(job)
                    changed_leases.append(lease)
                if changed_leases:
                    self._penalise(agent, now)
        for lease in self.leases.values():
            if not lease.active:
                continue
            job = self.jobs[lease.job_id]
            if lease.state == LEASE_OFFERED and now > lease.start_deadline_ms:
                entries.append(self._close(lease, now, "start_deadline"))
                agent = self.market.agents[lease.agent_id]
                self._penalise(agent, now)
                self._requeue(
                    job,
                    lease.agent_id,
                    "start_deadline_missed",
                    "the winning agent did not start the job in time",
                    now,
                )
                changed_jobs.append(job)
                changed_leases.append(lease)
                changed_agents.append(agent)
                self._notify(lease.agent_id)
            elif (
                lease.state == LEASE_RUNNING
                and (lease.stop_requested_at_ms is not None or now >= lease.ends_at_ms)
                and now > (closed := lease.window().closes_at_ms) + lease.stop_grace_ms
            ):
                agent = self.market.agents[lease.agent_id]
                entries.append(self._overrun(lease, job, agent, now, closed))
                changed_jobs.append(job)
                changed_leases.append(lease)
                changed_agents.append(agent)
                self._notify(lease.agent_id)
            elif (
                lease.state == LEASE_RUNNING
                and now >= lease.ends_at_ms
                and lease.stop_reason is None
            ):
                entries.append(self._request_stop(lease, "lease_ended", now))
                changed_leases.append(lease)
                self._notify(lease.agent_id)
        if changed_jobs or changed_leases or changed_agents:
            await self._save(
                jobs=changed_jobs, leases=changed_leases, agents=changed_agents, entries=entries
            )
            self._wake_scheduler.set()

    def _overrun(self, lease: Lease, job: Job, agent: Agent, now: int, closed: int) -> bytes:
        """The agent did not end the lease by its window's `closed` plus the stop grace: end it
        here, penalise the agent, and tell the enterprise why (nothing after the close bills)."""
        ended = self._close(lease, now, "overrun")
        self._penalise(agent, now)
        why = (
            f"agent {lease.agent_id[:12]} did not stop the job within {lease.stop_grace_ms // 1000} s "
            f"of its billable window's close; the coordinator ended the lease, and nothing after "
            f"{closed} (ms since the epoch) is billed"
        )
        if job.cancel_requested:
            self._finish(job, CANCELLED, now, "cancelled", f"cancelled; {why}")
        else:
            self._finish(job, FAILED, now, "agent_overran", why)
        return ended

    # -- the life of a lease: the one place its window's facts change, each one logged -----

    def _request_stop(self, lease: Lease, reason: str, now: int) -> bytes:
        """Ask the agent to stop (the caller notifies it after the commit); the billable window
        closes at most the stop grace later."""
        lease.stop_reason = reason
        if lease.stop_requested_at_ms is None:
            lease.stop_requested_at_ms = now
        return _lease_event(lease, log_entries.LEASE_STOP_REQUESTED, now, reason)

    def _open(self, lease: Lease, now: int, report: bytes) -> bytes:
        lease.state, lease.started_at_ms = LEASE_RUNNING, now
        return _lease_event(lease, log_entries.LEASE_STARTED, now, report=report)

    def _close(
        self,
        lease: Lease,
        now: int,
        reason: str,
        exit_code: int | None = None,
        report: bytes | None = None,
    ) -> bytes:
        lease.state, lease.ended_at_ms, lease.end_reason = LEASE_ENDED, now, reason
        lease.exit_code = exit_code
        self.market.release(lease.agent_id, lease.gpu_uuids, lease.id)
        return _lease_event(lease, log_entries.LEASE_ENDED, now, reason, exit_code, report)

    # -- receipts -----------------------------------------------------------------------

    async def _previous_receipt(self, lease: Lease, agent: Agent) -> SealedReceipt | None:
        if lease.id in self.last_receipts:
            return self.last_receipts[lease.id]
        rows = await self.database.run(
            lambda db: list(
                db.query(
                    "SELECT envelope FROM receipts WHERE lease_id = ? ORDER BY seq DESC LIMIT 1",
                    [lease.id],
                )
            )
        )
        previous = open_receipt(rows[0]["envelope"], agent.public_key) if rows else None
        self.last_receipts[lease.id] = previous
        return previous

    async def accept_receipts(self, agent: Agent, body: Any) -> dict[str, Any]:
        """Verify a batch in order, then store, post, log and acknowledge it in one transaction.

        Signatures are checked by the receipt workers, then every rule in order here. A
        receipt the enterprise's credit cannot cover is rejected (rule credit_exceeded), so
        are the lease's later receipts in the batch, and the lease is revoked.
        """
        envelopes = body.get("receipts") if type(body) is dict else None
        if (
            type(envelopes) is not list
            or not 0 < len(envelopes) <= receipt_rules.MAX_BATCH
            or any(type(e) is not bytes for e in envelopes)
        ):
            raise Unprocessable(
                f"receipts must be a list of 1 to {receipt_rules.MAX_BATCH} envelopes"
            )
        now = self.clock()
        # a retry is verified again before its stored answer is found: rare, and it keeps the
        # common path from decoding every receipt twice
        opened = await self.opener.open_all(agent.public_key, envelopes)
        claims = [
            (o.receipt.lease_id, o.receipt.seq) if isinstance(o, SealedReceipt) else claimed_id(e)
            for o, e in zip(opened, envelopes, strict=True)
        ]
        answered = await self._answered_before(agent, claims, envelopes)
        verdicts: list[receipt_rules.Verdict] = []
        chain_before: dict[str, SealedReceipt | None] = {}
        power = {
            uuid: min(
                gpu.telemetry.power_limit_mw or receipt_rules.DEFAULT_POWER_LIMIT_MW,
                receipt_rules.DEFAULT_POWER_LIMIT_MW,
            )
            for uuid, gpu in agent.gpus.items()
            if gpu.telemetry is not None
        }
        for envelope, sealed, (lease_id, seq), stored in zip(
            envelopes, opened, claims, answered, strict=True
        ):
            if stored is not None:
                verdicts.append(stored)
                continue
            lease = self.leases.get(lease_id or "")
            try:
                if isinstance(sealed, ReceiptRuleError):
                    raise sealed
                previous = await self._previous_receipt(lease, agent) if lease else None
                receipt_rules.check_receipt(sealed, agent, lease, previous, power, now)
            except SuanliError as exc:
                verdicts.append(receipt_rules.rejection(envelope, exc, lease_id, seq))
                continue
            assert lease is not None
            chain_before.setdefault(lease.id, previous)
            delta = sealed.receipt.amount - (previous.receipt.amount if previous else 0)
            self.last_receipts[lease.id] = sealed
            verdicts.append(
                receipt_rules.Verdict(
                    lease.id, sealed.receipt.seq, True, sealed=sealed, delta=delta
                )
            )
        try:
            stored = await self.database.run_grouped(
                self.receipt_store.store, receipt_store.Batch(agent, verdicts, now)
            )
        except BaseException:
            self.last_receipts.update(chain_before)
            raise
        self._refused.update(stored.refused)
        self._apply_postings(stored.verdicts, stored.postings, chain_before)
        return receipt_rules.answer(stored.verdicts)

    def enterprise_account(
        self, db: sqlite_utils.Database, enterprise_id: str, now: int
    ) -> dict[str, Any]:
        vouchers.open_enterprise_accounts(
            db, enterprise_id, self._enterprise_uscc(db, enterprise_id), self.policy, now
        )
        return vouchers.enterprise_account(db, enterprise_id, self.policy, now)

    def _lease_party(self, lease_id: str) -> tuple[str, str]:
        job = self.jobs[self.leases[lease_id].job_id]
        return job.id, job.enterprise_id

    def _enterprise_uscc(self, db: sqlite_utils.Database, enterprise_id: str) -> str:
        uscc = self._usccs.get(enterprise_id)
        if uscc is None:
            row = db.conn.execute(
                "SELECT uscc FROM enterprises WHERE id = ?", [enterprise_id]
            ).fetchone()
            uscc = self._usccs[enterprise_id] = row[0]
        return uscc

    def _apply_postings(
        self,
        verdicts: list[receipt_rules.Verdict],
        postings: list[vouchers.Posting],
        chain_before: dict[str, SealedReceipt | None],
    ) -> None:
        """After the commit: charges on jobs, and revocation of leases credit cannot cover."""
        for posting in postings:
            job = self.jobs[posting.job_id]
            job.charged += posting.amount
            job.voucher += posting.voucher
            job.deferred += posting.deferred
        last_accepted: dict[str, SealedReceipt] = {}
        for verdict in verdicts:
            if verdict.accepted and verdict.sealed is not None:
                last_accepted[verdict.sealed.receipt.lease_id] = verdict.sealed
                self.leases[verdict.sealed.receipt.lease_id].charged = verdict.sealed.receipt.amount
        for lease_id, before in chain_before.items():
            self.last_receipts[lease_id] = last_accepted.get(lease_id, before)
        if any(
            sealed.receipt.final and sealed.receipt.job_id in self._settle_due
            for sealed in last_accepted.values()
        ):
            self._wake_scheduler.set()  # a finished job's last receipt is in: settle it now
        for verdict in verdicts:
            if verdict.rule == "credit_exceeded" and verdict.lease_id in self.leases:
                lease = self.leases[verdict.lease_id]
                if lease.active and lease.stop_reason is None:
                    stop = self._request_stop(lease, "revoked", self.clock())
                    self.database.submit(
                        lambda db, row=self._lease_row(lease), stop=stop: (
                            db["leases"].upsert(row, pk="id"),
                            tlog.append_entries(db, [stop]),
                        )
                    )
                    self._notify(lease.agent_id)

    async def _answered_before(
        self, agent: Agent, claims: list[tuple[str | None, int | None]], envelopes: list[bytes]
    ) -> list[receipt_rules.Verdict | None]:
        """For each receipt, the answer it already got (a retry), or None for one to verify.

        Memory alone clears a receipt that continues its lease's known chain (counting the
        batch's earlier receipts) and was never refused for good; the others are looked up."""
        next_seq: dict[str, int] = {}
        answers: list[receipt_rules.Verdict | None] = []
        for (lease_id, seq), envelope in zip(claims, envelopes, strict=True):
            lease = self.leases.get(lease_id or "")
            if lease is None or lease.agent_id != agent.agent_id:
                answers.append(None)
                continue
            assert lease_id is not None
            if lease_id not in next_seq:
                await self._previous_receipt(lease, agent)
                previous = self.last_receipts[lease_id]
                next_seq[lease_id] = previous.receipt.seq + 1 if previous is not None else 1
            if (
                seq is not None
                and seq == next_seq.get(lease_id)
                and (lease_id, seq) not in self._refused
            ):
                next_seq[lease_id] = seq + 1
                answers.append(None)
                continue
            answers.append(await self._stored_acknowledgement(lease_id, seq, envelope))
        return answers

    async def _stored_acknowledgement(
        self, lease_id: str | None, seq: int | None, envelope: bytes
    ) -> receipt_rules.Verdict | None:
        """The answer already given to this receipt, so a retry gets the same one."""
        if lease_id is None or seq is None:
            return None
        rows = await self.database.run(
            lambda db: list(
                db.query(
                    "SELECT r.envelope, a.envelope AS acknowledgement FROM receipts r JOIN "
                    "receipt_acknowledgements a ON a.id = r.acknowledgement_id WHERE r.lease_id = ? AND r.seq = ?",
                    [lease_id, seq],
                )
            )
        )
        if rows and rows[0]["envelope"] == envelope:
            return receipt_rules.Verdict(
                lease_id, seq, True, acknowledgement=rows[0]["acknowledgement"], already_stored=True
            )
        if rows:
            return receipt_rules.Verdict(
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
                    "SELECT rule, detail FROM receipt_rejections WHERE lease_id = ? AND seq = ? AND envelope = ? "
                    f"AND rule NOT IN ({receipt_rules.RETRYABLE_SQL}) ORDER BY id LIMIT 1",
                    [lease_id, seq, envelope],
                )
            )
        )
        if refused:
            return receipt_rules.Verdict(
                lease_id, seq, False, refused[0]["rule"], refused[0]["detail"], already_stored=True
            )
        return None

    # -- logs ---------------------------------------------------------------------------

    async def append_log(self, agent: Agent, body: Any) -> dict[str, Any]:
        lease = self._agents_lease(agent, body, "a log chunk (lease_id, offset, data)")
        return await self.logs.append(
            lease.job_id,
            body.get("offset"),
            body.get("data"),
            list(self._secrets.get(lease.job_id, {}).values()),
        )

    async def read_log(self, job: Job, offset: int, limit: int) -> tuple[bytes, int]:
        return await self.logs.read(job.id, offset, limit)


_AGENT_UPDATE = (
    "UPDATE agents SET ask_per_gpu_hour = :ask_per_gpu_hour, last_seen_ms = :last_seen_ms, "
    "penalty_ppm = :penalty_ppm, penalty_at_ms = :penalty_at_ms WHERE agent_id = :agent_id"
)


def _lease_event(
    lease: Lease,
    event: str,
    at_ms: int,
    reason: str | None = None,
    exit_code: int | None = None,
    report: bytes | None = None,
) -> bytes:
    return log_entries.encode_entry(
        log_entries.LEASE_EVENT,
        at_ms,
        log_entries.LeaseEventEntry(lease.id, event, reason, exit_code, report or None),
    )


def _award_entry(lease: Lease) -> bytes:
    return log_entries.encode_entry(
        log_entries.LEASE_AWARD,
        lease.created_at_ms,
        log_entries.LeaseAwardEntry(
            lease.id,
            lease.job_id,
            lease.agent_id,
            lease.gpu_uuids,
            lease.price_per_gpu_hour,
            lease.max_duration_ms,
            lease.stop_grace_ms,
        ),
    )


def _window_view(lease: Lease) -> dict[str, int | None]:
    """What an agent needs to bill no more than its lease's window allows."""
    window = lease.window()
    return {
        "opened_at_ms": window.opened_at_ms,
        "closes_at_ms": window.closes_at_ms,
        "stop_grace_ms": lease.stop_grace_ms,
    }


def _with_models(request: JobRequest) -> JobRequest:
    try:
        models = expand_model_filter(request.gpu_models)
    except SuanliError as exc:
        raise Unprocessable(exc.detail, code="invalid_job") from None
    return replace(request, gpu_models=models)


def _capacity_writes(
    new_gpus: list[Gpu], new_flags: list[Flag], cleared: list[Flag], now: int
) -> Callable[[sqlite_utils.Database], None]:
    """The rows a heartbeat's reconciliation changes: GPUs now held (a claim that became the
    holding replaces its old row), flags raised, flags cleared, and no more than
    FLAG_HISTORY cleared flags kept per agent."""
    gpu_rows = [
        {
            "uuid": g.uuid,
            "agent_id": g.agent_id,
            "model": g.model,
            "memory_total_bytes": g.memory_total_bytes,
            "first_seen_ms": now,
        }
        for g in new_gpus
    ]
    flag_rows = [
        {
            "agent_id": f.agent_id,
            "gpu_uuid": f.gpu_uuid,
            "kind": f.kind,
            "detail": f.detail,
            "at_ms": f.at_ms,
        }
        for f in new_flags
    ]
    cleared_rows = [(f.cleared_at_ms, f.agent_id, f.gpu_uuid, f.kind) for f in cleared]
    agents = sorted({f.agent_id for f in new_flags})

    def write(db: sqlite_utils.Database) -> None:
        if gpu_rows:
            db["gpus"].upsert_all(gpu_rows, pk="uuid")
        if cleared_rows:
            db.conn.executemany(
                "UPDATE capacity_flags SET cleared_at_ms = ? WHERE agent_id = ? AND gpu_uuid = ? "
                "AND kind = ? AND cleared_at_ms IS NULL",
                cleared_rows,
            )
        if flag_rows:
            db["capacity_flags"].insert_all(flag_rows)
        for agent_id in agents:
            db.conn.execute(
                "DELETE FROM capacity_flags WHERE agent_id = ? AND cleared_at_ms IS NOT NULL AND id <= "
                "(SELECT id FROM capacity_flags WHERE agent_id = ? AND cleared_at_ms IS NOT NULL "
                "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                [agent_id, agent_id, FLAG_HISTORY],
            )

    return write
