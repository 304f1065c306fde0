"""A deterministic, seeded simulation of a coordinator and a few agents (after TigerBeetle's VOPR).

Everything runs in one process on one asyncio loop with a simulated clock: the REAL coordinator
(`coordinator.service.Coordinator` with its market, receipt rules and ledger) over a real SQLite
file, and small models of agents that meter leases with the real receipt chain code
(`agent.metering`) and keep their receipts in a real `agent.spool.Spool` file. A seeded RNG
drops, duplicates and delays (hence reorders) messages in both directions, crashes and restarts
agents, and crashes the coordinator between two commits of its writer and restarts it from disk.

After every step the invariants below are checked; a failure raises `InvariantViolation` with the
seed, the step and what failed, and `scripts/simulate` prints the command that replays it.

Determinism: the coordinator's writer thread is replaced by `SimDatabase`, which runs the real
batch loop (`Database._work`) inline whenever the coordinator awaits a write, so which writes are
committed together (and which are lost by a crash) depends only on the seed.
`coordinator.accounts.new_id` and the `secrets` module `coordinator.accounts` uses are replaced by
seeded generators for the duration of a run; request nonces and keys come from the seeded RNG.

Invariants (checked after every step while the coordinator is up):
  * `coordinator.billing.check_invariants(db) == []` (balances, limits, pool, caps, credit);
  * one `ledger_postings` row per `receipts` row, and per lease the postings add up to the
    amount of its highest accepted receipt;
  * the voucher pool's used and granted amounts are at most the policy's total;
  * every lease's price is at most its job's max price and at least its agent's ask (asks are
    fixed per agent in this model, so the ask at award time is known);
  * every job's in-memory charge equals the sum of its postings on disk;
  * every receipt an agent's spool marks acknowledged is in the coordinator's `receipts` table
    with the same digest (an acknowledgement is only sent after its commit).
At the end a drain phase (perfect network, everyone up, the enterprises cancel what is still
open) runs until nothing moves, and then every receipt an agent sealed must be accepted
(in `receipts` with its digest) or rejected by a named rule (a `receipt_rejections` row for its
lease and seq); none may be left in a spool, because with a perfect network and a live
coordinator every receipt gets an answer, even those of leases the coordinator has ended
(they are rejected by rule, e.g. time_window). Conversely every accepted receipt must be one an
agent sealed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import json
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.lease import Failure, LeaseRecord, LeaseTerms
from agent.metering import billable_from_ms, learn_window, seal_final_receipt, seal_interim_receipt
from agent.spool import Spool
from coordinator import accounts, billing
from coordinator.accounts import Principal
from coordinator.config import Settings
from coordinator.receipts.rules import RETRYABLE_SQL
from coordinator.service import Coordinator
from coordinator.storage import Database, transaction
from coordinator.storage.writer import _STOP
from shared import canonical
from shared.errors import SuanliError
from shared.identity import PrivateKey
from shared.messages import agent_protocol as ap
from shared.messages import api, convert
from shared.money import usage_amount
from shared.signed_request import NONCE_SIZE, sign_request

T0 = 1_740_787_200_000  # 2025-03-01T00:00:00Z
GIB = 1 << 30
ENROL, HEARTBEAT, LEASES, STATUS, RECEIPTS = (
    "/v1/agent/enroll",
    "/v1/agent/heartbeat",
    "/v1/agent/leases",
    "/v1/agent/status",
    "/v1/agent/receipts",
)
SETTINGS = Settings(
    heartbeat_interval_ms=1_000,
    heartbeat_timeout_ms=5_000,
    start_deadline_ms=3_000,
    max_attempts=3,
    scheduler_interval_ms=200,
    long_poll_max_ms=0,
)
POLICY = billing.VoucherPolicy(
    fiscal_year=2025,
    pool_total_micro_yuan=60_000,
    per_company_cap_micro_yuan=40_000,
    coverage_bps=5_000,
    default_credit_limit_micro_yuan=60_000,
)
REQUEST_TIMEOUT_MS = 2_500
RECEIPT_INTERVAL_MS = 700
POLL_INTERVAL_MS = 400
DRAIN_TICK_MS = 100
DRAIN_LIMIT_MS = 120_000


class InvariantViolation(AssertionError):
    def __init__(self, seed: int, step: int, what: str) -> None:
        super().__init__(f"seed {seed}, step {step}: {what}")
        self.seed, self.step, self.what = seed, step, what


class CoordinatorCrash(Exception):
    """The simulated coordinator process died before its writer's next commit."""


@dataclass
class Result:
    seed: int
    steps: int
    digest: str
    stats: Counter[str]
    trace: list[str]


# -- the coordinator's database, committed inline ------------------------------------------


class SimDatabase(Database):
    """The real writer batch loop (`Database._work`), run inline instead of on a thread.

    A call waited for queues behind whatever `submit` queued and commits them all as one batch,
    exactly as the writer thread would; `hook` runs before each batch and may raise
    CoordinatorCrash, so a crash falls between two commits.
    """

    def __init__(self, path: str | Path, hook: Callable[[], None]) -> None:
        super().__init__(path)
        self.hook = hook

    def start(self) -> None:
        pass

    def _put(self, entry: tuple[Any, Any, Any]) -> None:
        self._queue.put(entry)
        self.commit_batch()

    def commit_batch(self) -> None:
        if self._queue.empty():
            return
        self.hook()
        self._queue.put(_STOP)
        self._work()

    def crash(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        self.db.conn.close()


# -- the network ------------------------------------------------------------------------------


@dataclass
class Message:
    to: str  # "coordinator", "agent:<i>" or "enterprise:<i>"
    sender: str
    req_id: int
    path: str
    body: Any


@dataclass
class Network:
    rng: random.Random
    drop: float
    duplicate: float
    long_delay: float
    queue: list[tuple[int, int, Message]] = field(default_factory=list)
    seq: int = 0
    perfect: bool = False

    def send(self, now: int, message: Message, stats: Counter[str]) -> None:
        if not self.perfect and self.rng.random() < self.drop:
            stats["net_drop"] += 1
            return
        copies = 2 if not self.perfect and self.rng.random() < self.duplicate else 1
        if copies == 2:
            stats["net_duplicate"] += 1
        for _ in range(copies):
            delay = 1 if self.perfect else self.rng.randint(1, 60)
            if not self.perfect and self.rng.random() < self.long_delay:
                delay = self.rng.randint(300, 4_000)
                stats["net_long_delay"] += 1
            self.seq += 1
            heapq.heappush(self.queue, (now + delay, self.seq, message))

    def due(self, now: int) -> Iterator[Message]:
        while self.queue and self.queue[0][0] <= now:
            yield heapq.heappop(self.queue)[2]

    def drop_to(self, to: str) -> None:
        self.queue = [m for m in self.queue if m[2].to != to]
        heapq.heapify(self.queue)


# -- agents -----------------------------------------------------------------------------------


@dataclass
class Container:
    exit_at: int
    exit_code: int
    stopped_at: int | None = None


class SimAgent:
    """A model of the agent daemon: its key, spool and leases; containers live on the host."""

    def __init__(self, sim: Simulation, index: int, gpus: int, ask: int) -> None:
        self.sim, self.index, self.ask = sim, index, ask
        self.name = f"agent:{index}"
        self.key = PrivateKey.from_seed(sim.rng.randbytes(32))
        self.uuids = [f"GPU-{index}-{g}" for g in range(gpus)]
        self.spool_path = sim.workdir / f"agent{index}.spool"
        self.enrolled = False  # on disk (the key file)
        self.containers: dict[str, Container] = {}  # the host's engine: survives agent crashes
        self.up = True
        self.spool: Spool | None = Spool(self.spool_path)
        self._reset_memory()

    @property
    def agent_id(self) -> str:
        return self.key.public.agent_id

    def _reset_memory(self) -> None:
        self.outstanding: dict[str, tuple[int, int]] = {}
        self.events: dict[str, str] = {}  # the status event each outstanding report carries
        self.next_heartbeat = self.next_poll = self.next_receipts = 0
        self.heartbeat_sent_ms = 0
        self.contact_until_ms: int | None = None
        self.polled = False
        self.records: dict[str, LeaseRecord] = {}
        if self.spool is not None:
            for record in self.spool.leases(include_done=True):
                self.records[record.lease_id] = record

    def crash(self) -> None:
        assert self.spool is not None
        self.spool.close()
        self.spool = None
        self.up = False
        self.sim.network.drop_to(self.name)

    def restart(self) -> None:
        self.spool = Spool(self.spool_path)
        self.up = True
        self._reset_memory()

    def inventory(self) -> dict[str, Any]:
        return {
            "gpus": [
                {
                    "index": i,
                    "uuid": uuid,
                    "name": "NVIDIA H100 80GB HBM3",
                    "memory_total_bytes": 80 * GIB,
                    "memory_used_bytes": 0,
                    "utilization_gpu_pct": 0,
                    "healthy": True,
                }
                for i, uuid in enumerate(self.uuids)
            ],
            "host": {"cpu_count": 64, "memory_total_bytes": 512 * GIB},
            "driver_version": "550.54.15",
        }

    def _request(self, kind: str, path: str, body: Any) -> None:
        sim = self.sim
        nonce = sim.rng.randbytes(NONCE_SIZE)
        if path == ENROL:
            request = sign_request(self.key, "POST", path, body, sim.now, nonce=nonce)
            envelope = canonical.encode({"public_key": self.key.public.raw, "request": request})
        else:
            envelope = sign_request(self.key, "POST", path, body, sim.now, nonce=nonce)
        sim.req_ids += 1
        self.outstanding[kind] = (sim.req_ids, sim.now + REQUEST_TIMEOUT_MS)
        sim.network.send(
            sim.now, Message("coordinator", self.name, sim.req_ids, path, envelope), sim.stats
        )

    def save(self, record: LeaseRecord) -> None:
        assert self.spool is not None
        self.spool.save_lease(record)

    # one pass of the daemon's loops
    def act(self) -> None:
        sim, now = self.sim, self.sim.now
        for kind, (_, deadline) in list(self.outstanding.items()):
            if now > deadline:
                del self.outstanding[kind]
                sim.stats["request_timeout"] += 1
        if not self.enrolled:
            if "enrol" not in self.outstanding:
                self._request(
                    "enrol", ENROL, {"token": sim.enrolment_token, "hostname": f"host{self.index}"}
                )
            return
        if now >= self.next_heartbeat and "heartbeat" not in self.outstanding:
            self.heartbeat_sent_ms = now
            self._request(
                "heartbeat",
                HEARTBEAT,
                {"ask_per_gpu_hour": self.ask, "inventory": self.inventory()},
            )
        if now >= self.next_poll and "leases" not in self.outstanding:
            self._request("leases", LEASES, {"known_version": -1, "wait_ms": 0})
        self._supervise()
        if now >= self.next_receipts:
            self.next_receipts = now + RECEIPT_INTERVAL_MS
            for record in self.records.values():
                if (
                    billable_from_ms(record) is not None
                    and record.container.ended_at_ms is None
                    and self.contact_until_ms is not None
                    and self.polled
                ):
                    self._seal(record, final=False, at=min(now, self.contact_until_ms))
        for record in self.records.values():
            # the final receipt waits for the start report's answer, as the daemon's does
            if (
                record.container.ended_at_ms is not None
                and record.container.started_at_ms is not None
                and record.reporting.status != ""
                and not record.chain.final_sealed
                and self.polled
            ):
                self._seal(record, final=True)
        self.send_receipts()
        self.send_reports()

    def _supervise(self) -> None:
        now = self.sim.now
        for record in self.records.values():
            if record.container.started_at_ms is None or record.container.ended_at_ms is not None:
                continue
            container = self.containers[record.lease_id]
            ends = record.terms.ends_at_ms
            if container.stopped_at is None and now >= container.exit_at:
                self._ended(record, container.exit_at, container.exit_code)
            elif container.stopped_at is not None:
                self._ended(record, container.stopped_at, 137)
            elif ends is not None and now >= ends + 5_000:
                self.stop(record, "the lease has ended")

    def stop(self, record: LeaseRecord, why: str) -> None:
        container = self.containers.get(record.lease_id)
        if record.container.ended_at_ms is not None or container is None:
            return
        if container.stopped_at is None:
            container.stopped_at = min(self.sim.now, container.exit_at)
        self.sim.log(f"{self.name} stops {record.lease_id}: {why}")
        self._ended(
            record,
            container.stopped_at,
            137 if container.stopped_at < container.exit_at else container.exit_code,
        )

    def _ended(self, record: LeaseRecord, at: int, code: int) -> None:
        record.container.ended_at_ms, record.container.exit_code = at, code
        self.save(record)
        if record.reporting.status != "" and self.polled:
            self._seal(record, final=True)

    def _seal(self, record: LeaseRecord, final: bool, at: int | None = None) -> None:
        assert self.spool is not None
        if record.chain.final_sealed:
            return
        if final and billable_from_ms(record) is None:
            record.chain.final_sealed = True  # its window never opened: nothing to bill
            self.save(record)
            return
        seal = seal_final_receipt if final else seal_interim_receipt
        sealed = seal(record, self.key, self.sim.now if at is None else at)
        self.spool.add_receipt(
            record, sealed.receipt.seq, sealed.envelope, sealed.digest, self.sim.now
        )
        self.sim.sealed[sealed.digest] = (self.index, record.lease_id, sealed.receipt.seq)
        self.sim.stats["receipts_sealed"] += 1

    def send_receipts(self) -> None:
        assert self.spool is not None
        if "receipts" in self.outstanding:
            return
        pending = self.spool.pending_receipts(50)
        if pending:
            self._request("receipts", RECEIPTS, {"receipts": [p.envelope for p in pending]})

    def send_reports(self) -> None:
        for record in self.records.values():
            kind = "status:" + record.lease_id
            if kind in self.outstanding:
                continue
            if (
                record.container.ended_at_ms is not None
                and record.container.started_at_ms is None
                and record.reporting.status != "failed"
            ):
                self.events[kind] = "failed"
                self._request(
                    kind,
                    STATUS,
                    {
                        "lease_id": record.lease_id,
                        "event": "failed",
                        "reason_code": record.container.failure.reason_code,
                        "reason": "simulated start failure",
                    },
                )
            elif (
                record.chain.final_sealed
                and record.reporting.status == "started"
                and self.spool is not None
                and not self.spool.unanswered(record.lease_id)
            ):
                self.events[kind] = "exited"
                self._request(
                    kind,
                    STATUS,
                    {
                        "lease_id": record.lease_id,
                        "event": "exited",
                        "exit_code": record.container.exit_code,
                    },
                )
            elif record.container.started_at_ms is not None and record.reporting.status == "":
                self.events[kind] = "started"
                self._request(kind, STATUS, {"lease_id": record.lease_id, "event": "started"})

    # responses
    def receive(self, message: Message) -> None:
        status, body = message.body
        kind = next((k for k, (rid, _) in self.outstanding.items() if rid == message.req_id), None)
        if kind is None:
            self.sim.stats["response_ignored"] += 1
            return
        del self.outstanding[kind]
        now = self.sim.now
        if status != "ok":
            self.sim.log(f"{self.name} {kind} refused: {body}")
            if kind == "enrol" and body == "conflict":
                self.enrolled = True  # an earlier copy of the enrolment got through
            return
        if kind == "enrol":
            self.enrolled = True
        elif kind == "heartbeat":
            self.next_heartbeat = now + body["heartbeat_interval_ms"]
            self.contact_until_ms = self.heartbeat_sent_ms + body["heartbeat_timeout_ms"]
        elif kind == "leases":
            self.next_poll = now + POLL_INTERVAL_MS
            for closed in body.get("closed") or []:
                if closed["lease_id"] in self.records:
                    learn_window(self.records[closed["lease_id"]], closed["window"])
            self._reconcile(body["leases"])
            self.polled = True
        elif kind == "receipts":
            self._receipt_results(body["results"], body["acknowledgements"])
        elif kind.startswith("status:"):
            record = self.records[kind[len("status:") :]]
            record.reporting.status = self.events.pop(kind)
            window = body.get("window") or {}
            if record.reporting.status == "started" and window.get("opened_at_ms") is not None:
                record.metering.billable_from_ms = now
                learn_window(record, window)
            elif record.reporting.status == "started":
                record.metering.billable_from_ms = None
            if record.reporting.status == "started" and body["state"] == "ended":
                # the coordinator ended the lease meanwhile
                self.stop(record, "the coordinator says the lease has ended")
            self.save(record)

    def _reconcile(self, leases: list[dict[str, Any]]) -> None:
        sim, now = self.sim, self.sim.now
        listed = {lease["lease_id"]: lease for lease in leases}
        for lease_id, lease in listed.items():
            record = self.records.get(lease_id)
            if record is None and lease["desired"] == "run":
                record = LeaseRecord(LeaseTerms.from_wire(lease), created_at_ms=now)
                self.records[lease_id] = record
                roll = sim.rng.random()
                if roll < 0.05:
                    code = sim.rng.choice(["engine_error", "image_not_found"])
                    record.container.failure = Failure(code, "simulated start failure")
                    record.container.ended_at_ms = now
                    sim.stats["start_failed"] += 1
                else:
                    record.container.started_at_ms = now
                    duration = lease["job"]["max_duration_s"] * 1000
                    run_for = sim.rng.randint(duration // 4, duration + 3_000)
                    self.containers[lease_id] = Container(
                        now + run_for, sim.rng.choice([0, 0, 0, 1])
                    )
                    sim.stats["started"] += 1
                self.save(record)
                fate = "fails" if record.container.started_at_ms is None else "starts"
                sim.log(f"{self.name} takes {lease_id} ({fate})")
            elif record is not None:
                record.terms = replace(record.terms, ends_at_ms=lease["ends_at_ms"])
                learn_window(record, lease["window"])
                if lease["desired"] == "stop" and record.container.started_at_ms is not None:
                    self.stop(record, lease.get("stop_reason") or "stop")
        for lease_id, record in self.records.items():
            if (
                lease_id not in listed
                and record.container.started_at_ms is not None
                and record.container.ended_at_ms is None
            ):
                self.stop(record, "the coordinator no longer lists this lease")

    def _receipt_results(
        self, results: list[dict[str, Any]], acknowledgements: list[bytes]
    ) -> None:
        assert self.spool is not None
        for item in results:
            lease_id, seq = item["lease_id"], item["seq"]
            if item["status"] == "accepted":
                self.spool.acknowledge(
                    lease_id, seq, acknowledgements[item["acknowledgement"]], self.sim.now
                )
                self.sim.stats["receipts_acked"] += 1
            else:
                self.spool.reject(lease_id, seq, str(item["rule"]), str(item["detail"]))
                self.sim.stats["rejected:" + str(item["rule"])] += 1
                self.sim.log(
                    f"{self.name} receipt {lease_id}/{seq} rejected: "
                    f"{item['rule']} {item['detail']}"
                )

    def quiet(self) -> bool:
        assert self.spool is not None
        if any(
            k not in ("heartbeat", "leases") for k in self.outstanding
        ) or self.spool.pending_receipts(1):
            return False
        for record in self.records.values():
            if record.container.started_at_ms is not None and record.container.ended_at_ms is None:
                return False
            if record.container.ended_at_ms is not None and record.reporting.status not in (
                "exited",
                "failed",
            ):
                return False
            if record.container.started_at_ms is not None and record.reporting.status == "":
                return False
        return True


# -- enterprises ------------------------------------------------------------------------------


class SimEnterprise:
    def __init__(self, sim: Simulation, index: int, enterprise_id: str) -> None:
        self.sim, self.index, self.name = sim, index, f"enterprise:{index}"
        self.principal = Principal("enterprise", enterprise_id)
        self.unanswered: dict[str, dict[str, Any]] = {}  # idempotency key -> body
        self.jobs: list[str] = []
        self.counter = 0

    def submit(self) -> None:
        rng = self.sim.rng
        self.counter += 1
        key = f"e{self.index}-{self.counter}"
        self.unanswered[key] = {
            "idempotency_key": key,
            "image": "busybox:latest",
            "command": ["true"],
            "gpus": rng.choice([1, 1, 2]),
            "max_duration_s": rng.randint(2, 8),
            "max_price_per_gpu_hour_micro_yuan": rng.choice(
                [3_000_000, 6_000_000, 9_000_000, 12_000_000]
            ),
        }
        self.send(key)

    def send(self, key: str) -> None:
        sim = self.sim
        sim.req_ids += 1
        sim.network.send(
            sim.now,
            Message("coordinator", self.name, sim.req_ids, "submit", self.unanswered[key]),
            sim.stats,
        )

    def cancel(self, job_id: str) -> None:
        sim = self.sim
        sim.req_ids += 1
        sim.network.send(
            sim.now, Message("coordinator", self.name, sim.req_ids, "cancel", job_id), sim.stats
        )

    def receive(self, message: Message) -> None:
        status, body = message.body
        if message.path == "submit" and status == "ok":
            key, job_id = body
            self.unanswered.pop(key, None)
            if job_id not in self.jobs:
                self.jobs.append(job_id)


# -- the simulation ---------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded_ids(rng: random.Random) -> Iterator[None]:
    counter = iter(range(1, 1 << 62))

    class Secrets:
        @staticmethod
        def token_hex(n: int) -> str:
            return rng.randbytes(n).hex()

        @staticmethod
        def token_urlsafe(n: int) -> str:
            return rng.randbytes(n).hex()

    real_new_id, real_secrets = accounts.new_id, accounts.secrets
    accounts.new_id = lambda prefix: f"{prefix}-{next(counter):012x}"  # type: ignore[assignment]
    accounts.secrets = Secrets  # type: ignore[assignment]
    try:
        yield
    finally:
        accounts.new_id, accounts.secrets = real_new_id, real_secrets  # type: ignore[assignment]


class Simulation:
    def __init__(
        self, seed: int, steps: int, workdir: Path, verbose: bool = False, database: str = ""
    ) -> None:
        self.seed, self.steps, self.workdir, self.verbose = seed, steps, workdir, verbose
        self.rng = random.Random(seed)
        self.now = T0
        self.step = 0
        self.req_ids = 0
        self.stats: Counter[str] = Counter()
        self.trace: list[str] = []
        self.digest = hashlib.sha256()
        self.sealed: dict[bytes, tuple[int, str, int]] = {}
        rng = self.rng
        self.network = Network(
            rng,
            drop=rng.choice([0.0, 0.05, 0.15]),
            duplicate=rng.choice([0.0, 0.05, 0.15]),
            long_delay=rng.choice([0.0, 0.05, 0.2]),
        )
        self.coordinator_key = PrivateKey.from_seed(rng.randbytes(32))
        self.path: str | Path = database or workdir / "coordinator.db"
        self.crash_countdown: int | None = None
        self.coordinator: Coordinator | None = None
        self.database: SimDatabase | None = None
        self.down_until = 0

    # -- bookkeeping

    def log(self, line: str) -> None:
        entry = f"{self.step} {self.now - T0} {line}"
        self.digest.update(entry.encode() + b"\n")
        if self.verbose:
            print(entry)
        if len(self.trace) < 5_000:
            self.trace.append(entry)

    def fail(self, what: str) -> None:
        self.log(f"VIOLATION {what}")
        raise InvariantViolation(self.seed, self.step, what)

    # -- the coordinator's process

    def _before_commit(self) -> None:
        if self.crash_countdown is not None:
            if self.crash_countdown == 0:
                raise CoordinatorCrash()
            self.crash_countdown -= 1

    def start_coordinator(self) -> None:
        self.database = SimDatabase(self.path, self._before_commit)
        self.coordinator = Coordinator(
            SETTINGS, self.database, self.coordinator_key, clock=lambda: self.now, policy=POLICY
        )
        self.log("coordinator up")

    def crash_coordinator(self, why: str) -> None:
        assert self.database is not None
        self.database.crash()
        self.database = self.coordinator = None
        self.crash_countdown = None
        self.network.drop_to("coordinator")
        self.down_until = self.now + self.rng.randint(0, 3_000)
        self.stats["coordinator_crash"] += 1
        self.log(f"coordinator crash ({why})")

    async def coordinator_call(self, call: Callable[[Coordinator], Any]) -> Any:
        """Run one coordinator operation to completion; a crash in it ends the process."""
        assert self.coordinator is not None and self.database is not None
        try:
            value = await call(self.coordinator)
            if self.rng.random() < 0.9:  # the writer usually commits fire-and-forget writes at once
                self.database.commit_batch()
            return value
        except CoordinatorCrash:
            self.crash_coordinator(f"before commit {self.database.commits + 1}")
            raise

    async def serve(self, message: Message) -> None:
        """The HTTP layer: route a delivered request, send back ("ok", body) or ("error", code)."""
        if self.coordinator is None:
            self.stats["refused_down"] += 1
            return
        path, body = message.path, message.body

        async def handle(c: Coordinator) -> Any:
            if message.sender.startswith("enterprise:"):
                enterprise = self.enterprises[int(message.sender.split(":")[1])]
                if path == "submit":
                    job, _ = await c.jobs.submit(
                        enterprise.principal, convert(api.JobSubmit, body), None
                    )
                    return (body["idempotency_key"], job.id)
                job = await c.jobs.cancel(enterprise.principal, body)
                return job.state
            if path == ENROL:
                agent = await c.enrolment.enrol(body, path)
                return agent.agent_id
            agent, payload = c.signed_requests.authenticate(body, "POST", path)
            if path == HEARTBEAT:
                return await c.heartbeats.heartbeat(agent, convert(ap.Heartbeat, payload))
            if path == LEASES:
                return await c.delivery.agent_leases(agent, convert(ap.LeasePoll, payload))
            if path == STATUS:
                return await c.reports.agent_status(agent, convert(ap.StatusReport, payload), body)
            return await c.receipts.accept_receipts(agent, convert(ap.ReceiptBatch, payload))

        try:
            answer: tuple[str, Any] = ("ok", await self.coordinator_call(handle))
        except CoordinatorCrash:
            return
        except SuanliError as exc:
            answer = ("error", getattr(exc, "code", "error"))
        except Exception as exc:  # noqa: BLE001 - a 500 for an honest client is a bug
            self.fail(f"coordinator raised {exc!r} on {path} from {message.sender}")
        self.stats[f"{path}:{answer[0]}"] += 1
        self.log(f"{message.sender} {path} #{message.req_id} -> {answer[0]}")
        if answer[0] == "error":
            self.log(f"{message.sender} {path} -> {answer[1]}")
            if (
                message.sender.startswith("enterprise:")
                and path == "submit"
                and answer[1] != "conflict"
            ):
                # a refused job (credit, suspension) is not retried
                self.enterprises[int(message.sender.split(":")[1])].unanswered.pop(
                    body["idempotency_key"], None
                )
        self.network.send(
            self.now,
            Message(message.sender, "coordinator", message.req_id, path, answer),
            self.stats,
        )

    async def tick_coordinator(self) -> None:
        async def tick(c: Coordinator) -> None:
            c.heartbeats.flush()
            placed = await c.scheduler.schedule_once()
            await c.deadlines.check()
            if placed:
                self.log(f"placed {placed}")

        with contextlib.suppress(CoordinatorCrash):
            await self.coordinator_call(tick)

    # -- setup

    def setup(self) -> None:
        db = Database(self.path)  # a plain connection for the admin's setup, as the CLI would
        with transaction(db.db):
            _, self.enrolment_token = accounts.add_provider(
                db.db, "Provider One", _uscc(1), T0, max_hosts=10
            )
            enterprise_ids = [
                accounts.add_enterprise(db.db, f"Enterprise {i}", _uscc(10 + i), T0)[0]
                for i in range(2)
            ]
        db.close()
        self.enterprises = [SimEnterprise(self, i, eid) for i, eid in enumerate(enterprise_ids)]
        self.agents = [
            SimAgent(self, i, self.rng.randint(1, 3), self.rng.choice([2, 3, 5, 8]) * 1_000_000)
            for i in range(self.rng.randint(2, 4))
        ]
        self.start_coordinator()

    # -- one step

    async def deliver(self) -> None:
        for message in list(self.network.due(self.now)):
            if message.to == "coordinator":
                await self.serve(message)
            elif message.to.startswith("agent:"):
                agent = self.agents[int(message.to.split(":")[1])]
                if agent.up:
                    agent.receive(message)
            else:
                self.enterprises[int(message.to.split(":")[1])].receive(message)

    async def random_step(self) -> None:
        rng = self.rng
        self.now += rng.choice([0, 10, 50, 100, 200, 300, 500])
        await self.deliver()
        if self.coordinator is None and self.now >= self.down_until:
            self.start_coordinator()
        roll = rng.random()
        if roll < 0.45:
            agent = rng.choice(self.agents)
            if agent.up:
                agent.act()
            elif rng.random() < 0.3:
                agent.restart()
                self.log(f"{agent.name} restarts")
        elif roll < 0.65:
            if self.coordinator is not None:
                await self.tick_coordinator()
        elif roll < 0.72:
            enterprise = rng.choice(self.enterprises)
            if enterprise.unanswered and rng.random() < 0.5:
                enterprise.send(rng.choice(sorted(enterprise.unanswered)))
            else:
                enterprise.submit()
        elif roll < 0.74:
            enterprise = rng.choice(self.enterprises)
            if enterprise.jobs:
                enterprise.cancel(rng.choice(enterprise.jobs))
        elif roll < 0.755:
            agent = rng.choice(self.agents)
            if agent.up:
                agent.crash()
                self.stats["agent_crash"] += 1
                self.log(f"{agent.name} crashes")
        elif roll < 0.77:
            if self.coordinator is not None and self.crash_countdown is None:
                if rng.random() < 0.5:
                    self.crash_coordinator("between events")
                else:
                    self.crash_countdown = rng.randint(0, 4)
                    self.log(f"coordinator will crash before commit +{self.crash_countdown}")

    # -- invariants

    def check(self) -> None:
        if self.coordinator is None or self.database is None:
            return
        db = self.database.db
        conn = db.conn
        problems = billing.check_invariants(db)
        if problems:
            self.fail("ledger: " + "; ".join(problems))
        # a lease's receipts of one batch are posted together, on the batch's last one of it
        for lease_id, acknowledgement_id, last in conn.execute(
            "SELECT lease_id, acknowledgement_id, MAX(seq) FROM receipts "
            "GROUP BY lease_id, acknowledgement_id"
        ):
            posted = conn.execute(
                "SELECT COUNT(*) FROM ledger_postings p "
                "JOIN receipts r ON r.digest = p.receipt_digest "
                "WHERE r.lease_id = ? AND r.acknowledgement_id = ? AND r.seq = ?",
                [lease_id, acknowledgement_id, last],
            ).fetchone()[0]
            if not posted:
                self.fail(
                    f"lease {lease_id}'s receipts up to seq {last} were accepted but not posted"
                )
        for lease_id, top, posted in conn.execute(
            "SELECT r.lease_id, MAX(r.amount), (SELECT COALESCE(SUM(p.amount), 0) "
            "FROM ledger_postings p "
            "WHERE p.lease_id = r.lease_id) FROM receipts r GROUP BY r.lease_id"
        ):
            if top != posted:
                self.fail(
                    f"lease {lease_id}: highest accepted receipt is {top} µ¥ "
                    f"but {posted} µ¥ was posted"
                )
        pool = billing.pool_status(db, POLICY)
        if (
            pool["used"] > POLICY.pool_total_micro_yuan
            or pool["granted"] > POLICY.pool_total_micro_yuan
        ):
            self.fail(f"voucher pool over its total: {pool}")
        asks = {a.agent_id: a.ask for a in self.agents}
        for lease_id, agent_id, price, spec in conn.execute(
            "SELECT l.id, l.agent_id, l.price_per_gpu_hour, j.spec FROM leases l "
            "JOIN jobs j ON j.id = l.job_id"
        ):
            max_price = json.loads(spec)["max_price_per_gpu_hour_micro_yuan"]
            if not asks[agent_id] <= price <= max_price:
                self.fail(
                    f"lease {lease_id} pays {price}, outside "
                    f"[ask {asks[agent_id]}, max {max_price}]"
                )
        # no lease is charged beyond its billable window × GPUs × price
        by_lease = dict(
            conn.execute("SELECT lease_id, SUM(amount) FROM ledger_postings GROUP BY lease_id")
        )
        for lease in self.coordinator.state.leases.values():
            window = lease.window()
            billable = window.billable_gpu_ms(self.now, self.now)
            if by_lease.get(lease.id, 0) > usage_amount(billable, lease.price_per_gpu_hour):
                self.fail(
                    f"lease {lease.id} is charged {by_lease[lease.id]} µ¥, more than its window "
                    f"({billable} GPU-ms at {lease.price_per_gpu_hour} µ¥/GPU-h) allows"
                )
        charged = dict(
            conn.execute("SELECT job_id, SUM(amount) FROM ledger_postings GROUP BY job_id")
        )
        for job in self.coordinator.state.jobs.values():
            if job.charged != charged.get(job.id, 0):
                self.fail(
                    f"job {job.id} shows {job.charged} µ¥ charged "
                    f"but {charged.get(job.id, 0)} µ¥ is posted"
                )
        accepted = {row[0] for row in conn.execute("SELECT digest FROM receipts")}
        for agent in self.agents:
            if agent.spool is None:
                continue
            for spooled in agent.spool.receipts():
                if spooled.acked_at_ms is not None and spooled.digest not in accepted:
                    self.fail(
                        f"{agent.name} holds an acknowledgement of "
                        f"{spooled.lease_id}/{spooled.seq} "
                        "that the coordinator does not have"
                    )

    def final_check(self) -> None:
        assert self.database is not None
        conn = self.database.db.conn
        accepted = {
            row[0]: (row[1], row[2])
            for row in conn.execute("SELECT digest, lease_id, seq FROM receipts")
        }
        rejected = {
            (row[0], row[1])
            for row in conn.execute(
                "SELECT lease_id, seq FROM receipt_rejections WHERE rule IS NOT NULL"
            )
        }
        for agent in self.agents:
            assert agent.spool is not None
            for spooled in agent.spool.receipts():
                where = f"{agent.name} receipt {spooled.lease_id}/{spooled.seq}"
                if spooled.digest in accepted:
                    continue
                if (spooled.lease_id, spooled.seq) in rejected:
                    continue
                self.fail(
                    f"{where} was neither accepted nor rejected by a rule (spool: acked="
                    f"{spooled.acked_at_ms}, rejected={spooled.rejected_rule})"
                )
        for digest, (lease_id, seq) in accepted.items():
            if digest not in self.sealed:
                self.fail(f"accepted receipt {lease_id}/{seq} was never sealed by an agent")
        # one receipt, one verdict: a retry must not turn a final refusal into an acceptance
        for lease_id, seq, rule in conn.execute(
            "SELECT r.lease_id, r.seq, x.rule FROM receipts r JOIN receipt_rejections x "
            "ON x.lease_id = r.lease_id AND x.seq = r.seq AND x.envelope = r.envelope "
            f"WHERE x.rule NOT IN ({RETRYABLE_SQL})"
        ):
            self.fail(f"receipt {lease_id}/{seq} was refused ({rule}) and later accepted")

    # -- the drain

    async def drain(self) -> None:
        self.log("drain")
        self.network.perfect = True
        self.crash_countdown = None
        if self.coordinator is None:
            self.start_coordinator()
        for agent in self.agents:
            if not agent.up:
                agent.restart()
                self.log(f"{agent.name} restarts")
        deadline = self.now + DRAIN_LIMIT_MS
        while self.now < deadline:
            self.step += 1
            self.now += DRAIN_TICK_MS
            await self.deliver()
            for enterprise in self.enterprises:
                for key in sorted(enterprise.unanswered):
                    enterprise.send(key)
                for job_id in enterprise.jobs:
                    job = self.coordinator.state.jobs.get(job_id)  # type: ignore[union-attr]
                    if job is not None and not job.final and not job.cancel_requested:
                        enterprise.cancel(job_id)
            for agent in self.agents:
                agent.act()
            await self.tick_coordinator()
            self.check()
            assert self.coordinator is not None
            if (
                all(agent.quiet() for agent in self.agents)
                and not any(e.unanswered for e in self.enterprises)
                and not any(lease.active for lease in self.coordinator.state.leases.values())
            ):
                self.log("quiet")
                return
        active = [lease.id for lease in self.coordinator.state.leases.values() if lease.active]  # type: ignore[union-attr]
        noisy = [agent.name for agent in self.agents if not agent.quiet()]
        self.fail(
            f"the drain did not settle in {DRAIN_LIMIT_MS} ms: active leases {active}, busy {noisy}"
        )

    async def main(self) -> None:
        self.setup()
        try:
            for _ in range(self.steps):
                self.step += 1
                await self.random_step()
                self.check()
            await self.drain()
            self.final_check()
        finally:
            if self.database is not None:
                self.database.crash()
            for agent in self.agents:
                if agent.spool is not None:
                    agent.spool.close()


def _uscc(n: int) -> str:
    from shared.uscc import check_character

    prefix = f"9111000010{n:07d}"
    return prefix + check_character(prefix)


def run(
    seed: int,
    steps: int,
    verbose: bool = False,
    workdir: Path | None = None,
    database: str = "",
) -> Result:
    """Simulate `steps` random steps and a drain for `seed`; raise InvariantViolation on failure.
    The coordinator's database is a SQLite file of its own unless `database` names another (an
    empty PostgreSQL database)."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    directory = Path(tempfile.mkdtemp(prefix=f"suanli-sim-{seed}-", dir=workdir or base))
    sim = Simulation(seed, steps, directory, verbose, database)
    try:
        with _seeded_ids(random.Random(seed ^ 0x5EED)):
            asyncio.run(sim.main())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return Result(seed, sim.step, sim.digest.hexdigest(), sim.stats, sim.trace)


def main(argv: list[str] | None = None) -> int:
    """`scripts/simulate`: run seeds in order, stop at the first failure and print its replay."""
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="scripts/simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument(
        "--steps", type=int, default=300, help="random steps per seed (then a drain)"
    )
    parser.add_argument("--verbose", action="store_true", help="print every event of the trace")
    args = parser.parse_args(argv)
    started = time.monotonic()
    totals: Counter[str] = Counter()
    for n, seed in enumerate(range(args.start, args.start + args.seeds), 1):
        try:
            result = run(seed, args.steps, verbose=args.verbose)
        except InvariantViolation as exc:
            print(f"FAILED {exc}")
            print(
                f"replay: scripts/simulate --seeds 1 --start {seed} --steps {args.steps} --verbose"
            )
            return 1
        totals.update(result.stats)
        if args.verbose or n % 50 == 0 or n == args.seeds:
            print(
                f"{n}/{args.seeds} seeds passed (last {seed}, trace {result.digest[:16]}), "
                f"{time.monotonic() - started:.1f} s",
                flush=True,
            )
    interesting = (
        "coordinator_crash",
        "agent_crash",
        "net_drop",
        "net_duplicate",
        "receipts_sealed",
        "receipts_acked",
        "rejected:credit_exceeded",
        "started",
    )
    print("totals: " + ", ".join(f"{k} {totals[k]}" for k in interesting))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
