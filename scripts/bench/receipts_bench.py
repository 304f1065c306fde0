"""Benchmark: usage receipts accepted per second by a real coordinator on loopback.

Starts `suanli-coordinator serve` on a free port with a temporary database, enrols the
agents, submits one single-GPU job per GPU (from enterprises with a large credit limit),
collects the leases and reports each one "started". It then seals, per lease, a chain of
cumulative receipts exactly as an agent does (1 GPU-ms more per receipt, so the GPU-time
rule holds a moment after the start) and sends them in signed HTTP batches to
POST /v1/agent/receipts, several agents at a time, each agent's batches in order. Every
receipt goes the whole way: request signature, receipt signature (in the coordinator's
receipt workers) and rules, the ledger posting (one per lease per batch), the
transparency-log append, the batch's countersigned acknowledgement, and the commit before
the answer. `--batch 8 --gpus 8` gives the steady state of agents that send each lease's
receipt as it is sealed (one receipt per lease per batch).

In the same run it measures what one core does with raw `cryptography` Ed25519 on the same
messages (verify, and sign for the acknowledgement), the ceiling of a one-core coordinator
that verifies every receipt. Afterwards it replays the same receipts into an in-process
`ReceiptIntake.accept_receipts` on a copy of the database taken before the HTTP phase, with
each phase timed, to show where a receipt's time goes without HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import bench_engines
import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

REPO = Path(__file__).resolve().parents[2]
# scripts/bench/agent.py would shadow the `agent` package: drop this script's own folder
sys.path.insert(0, str(REPO / "tests"))  # the loopback harness lives with the tests

from coordinator_harness import Api, CoordinatorProcess

from agent.coordinator_client import CoordinatorClient
from coordinator.storage.postgres import is_postgres_url
from shared.envelope import domain, unverified_payload
from shared.identity import PrivateKey
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, SealedReceipt, seal_receipt
from shared.signed_request import sign_request

RECEIPTS = "/v1/agent/receipts"
PRICE = 3_600_000  # µ¥ per GPU-hour: 1 µ¥ per GPU-millisecond
ENTERPRISES = 4
SETTINGS: dict[str, Any] = {
    "heartbeat_interval_ms": 60_000,
    "heartbeat_timeout_ms": 600_000,  # nobody heartbeats during the run
    "start_deadline_ms": 600_000,
    "scheduler_interval_ms": 100,
    "long_poll_max_ms": 5_000,
}


def _now() -> int:
    return time.time_ns() // 1_000_000


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class Bench:
    agents: int
    gpus: int
    receipts: int
    batch: int
    concurrency: int
    profile: bool
    rounds: int = 1


@dataclass
class AgentLoad:
    key: PrivateKey
    uuids: list[str]
    leases: list[dict[str, Any]] = field(default_factory=list)
    seen_ms: int = 0
    batches: list[list[bytes]] = field(default_factory=list)

    @property
    def agent_id(self) -> str:
        return self.key.public.agent_id


# -- setup against the real process -------------------------------------------------------


async def setup_market(coordinator: CoordinatorProcess, bench: Bench) -> list[AgentLoad]:
    """Enrol the agents, fund the enterprises, submit a job per GPU, start every lease."""
    token = coordinator.add_provider(1, max_hosts=bench.agents)
    loads = [
        AgentLoad(
            PrivateKey.generate(),
            [f"GPU-{n:08x}-0000-4000-8000-{g:012x}" for g in range(bench.gpus)],
        )
        for n in range(bench.agents)
    ]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        clients = [CoordinatorClient(coordinator.url, load.key, session=session) for load in loads]

        async def enrol(client: CoordinatorClient, load: AgentLoad) -> None:
            from coordinator_harness import inventory

            await client.enrol(token, f"bench-{load.agent_id[:8]}")
            await client.heartbeat(PRICE, inventory(load.uuids))

        await asyncio.gather(*(enrol(c, load) for c, load in zip(clients, loads, strict=True)))

        apis = []
        for n in range(ENTERPRISES):
            api = Api(coordinator.url, coordinator.add_enterprise(100 + n))
            apis.append(api)
            _, account = await api.call("GET", "/v1/account")
            coordinator.admin(
                "set-credit-limit", "--enterprise", account["id"], "--amount", "100000000"
            )
        try:
            jobs = bench.agents * bench.gpus

            async def submit(n: int) -> None:
                status, job = await apis[n % ENTERPRISES].submit(
                    max_price_per_gpu_hour_micro_yuan=PRICE * 2,
                    max_duration_s=86_400,
                    idempotency_key=f"bench-{n}",
                )
                assert status == 201, job

            await asyncio.gather(*(submit(n) for n in range(jobs)))
        finally:
            for api in apis:
                await api.close()

        versions = [-1] * len(loads)
        placed = 0
        deadline = time.monotonic() + 60
        while placed < jobs:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {placed} of {jobs} leases arrived")

            async def poll(i: int) -> int:
                answer = await clients[i].leases(versions[i], 200)
                versions[i] = answer["version"]
                new = 0
                known = {lease["lease_id"] for lease in loads[i].leases}
                for lease in answer["leases"]:
                    if lease["lease_id"] not in known and lease.get("desired", "run") == "run":
                        await clients[i].status(lease["lease_id"], "started")
                        loads[i].leases.append(lease)
                        loads[i].seen_ms = _now()
                        new += 1
                return new

            placed += sum(await asyncio.gather(*(poll(i) for i in range(len(loads)))))
    return loads


def seal_all(loads: list[AgentLoad], bench: Bench) -> tuple[int, float]:
    """Seal every lease's chain, interleaved per agent and cut into batches; (receipts, s)."""
    leases = sum(len(load.leases) for load in loads)
    per_lease = max(1, bench.receipts // leases)
    # receipt n claims n GPU-ms: it must be issued at least n ms after the lease was created
    wait_ms = max(load.seen_ms for load in loads) + per_lease + 50 - _now()
    if wait_ms > 0:
        time.sleep(wait_ms / 1000)
    began = time.perf_counter()
    total = 0
    for load in loads:
        chains: list[list[bytes]] = []
        for lease in load.leases:
            previous: SealedReceipt | None = None
            chain = []
            for seq in range(1, per_lease + 1):
                previous = seal_receipt(
                    Receipt(
                        lease_id=lease["lease_id"],
                        job_id=lease["job_id"],
                        agent_id=load.agent_id,
                        seq=seq,
                        prev=previous.digest if previous else GENESIS_PREV,
                        issued_at_ms=_now(),
                        gpu_uuids=tuple(lease["gpu_uuids"]),
                        gpu_ms=seq,
                        energy_mj=0,
                        utilization_pct=90,
                        peak_memory_bytes=0,
                        price_per_gpu_hour=lease["price_per_gpu_hour"],
                        amount=usage_amount(seq, lease["price_per_gpu_hour"]),
                        final=False,
                        exit_code=None,
                    ),
                    load.key,
                )
                chain.append(previous.envelope)
            chains.append(chain)
        interleaved = [envelope for row in zip(*chains, strict=True) for envelope in row]
        load.batches = [
            interleaved[i : i + bench.batch] for i in range(0, len(interleaved), bench.batch)
        ]
        total += len(interleaved)
    return total, time.perf_counter() - began


# -- raw Ed25519 on one core ----------------------------------------------------------------


def raw_ed25519(loads: list[AgentLoad], seconds: float) -> tuple[float, float, int]:
    """Raw verifies/s and signs/s of this process (one core) over real receipt messages."""
    prefix = domain("receipt")
    samples = []
    for load in loads[:20]:
        public = Ed25519PublicKey.from_public_bytes(load.key.public.raw)
        for envelope in load.batches[0][:50]:
            message = prefix + unverified_payload(envelope, "receipt")
            samples.append((public, envelope[-64:], message))
    size = sum(len(m) for _, _, m in samples) // len(samples)

    verified = 0
    began = time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        for public, signature, message in samples:
            public.verify(signature, message)
        verified += len(samples)
    verify_rate = verified / elapsed

    signer = Ed25519PrivateKey.generate()
    messages = [m for _, _, m in samples]
    signed = 0
    began = time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds / 2:
        for message in messages:
            signer.sign(message)
        signed += len(messages)
    return verify_rate, signed / elapsed, size


# -- the HTTP phase -------------------------------------------------------------------------


@dataclass
class HttpResult:
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    bytes_sent: int = 0


async def warm_up(url: str, load: AgentLoad) -> int:
    """Start the coordinator's receipt workers (they start with the first large batch) with a
    batch of forged receipts, all rejected; returns how many were."""
    forger = PrivateKey.generate()
    forged = [
        seal_receipt(
            Receipt(
                lease_id=f"warm-up-{n}",
                job_id="warm-up",
                agent_id=load.agent_id,
                seq=1,
                prev=GENESIS_PREV,
                issued_at_ms=_now(),
                gpu_uuids=(load.uuids[0],),
                gpu_ms=0,
                energy_mj=0,
                utilization_pct=0,
                peak_memory_bytes=0,
                price_per_gpu_hour=PRICE,
                amount=0,
                final=False,
                exit_code=None,
            ),
            forger,
        ).envelope
        for n in range(100)
    ]
    async with aiohttp.ClientSession() as session:
        answer = await CoordinatorClient(url, load.key, session=session).signed(
            RECEIPTS, {"receipts": forged}, timeout_s=120
        )
    return sum(1 for r in answer["results"] if r["status"] == "rejected")


async def send_all(url: str, loads: list[AgentLoad], concurrency: int) -> HttpResult:
    result = HttpResult()
    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        clients = [CoordinatorClient(url, load.key, session=session) for load in loads]

        async def agent(client: CoordinatorClient, load: AgentLoad) -> None:
            for batch in load.batches:  # in order: each batch continues the chains of the last
                async with limit:
                    began = time.perf_counter()
                    try:
                        answer = await client.signed(RECEIPTS, {"receipts": batch}, timeout_s=120)
                    except Exception as exc:  # noqa: BLE001 - counted by kind
                        result.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                        return
                    result.latencies.append(time.perf_counter() - began)
                    result.bytes_sent += sum(map(len, batch))
                for verdict in answer["results"]:
                    if verdict["status"] == "accepted":
                        result.accepted += 1
                    else:
                        result.rejected[verdict.get("rule", "?")] += 1

        began = time.perf_counter()
        await asyncio.gather(*(agent(c, load) for c, load in zip(clients, loads, strict=True)))
        result.wall_s = time.perf_counter() - began
    return result


Snapshot = tuple[float, dict[int, float], float, float, dict[int, float], int, dict[int, float]]


class CpuWatch:
    def __init__(self, pid: int, database_pids: list[int]) -> None:
        self.process = psutil.Process(pid)
        self.me = psutil.Process()
        self.database = [psutil.Process(p) for p in database_pids]

    def database_cpu(self) -> dict[int, float]:
        """CPU seconds of the database server's processes (a private PostgreSQL's)."""
        used = {}
        for root in self.database:
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    used[process.pid] = sum(process.cpu_times()[:2])
        return used

    def workers(self) -> dict[int, float]:
        """CPU seconds of each worker process the coordinator started."""
        used = {}
        for child in self.process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                used[child.pid] = sum(child.cpu_times()[:2])
        return used

    def snapshot(self) -> Snapshot:
        threads = {t.id: t.user_time + t.system_time for t in self.process.threads()}
        return (
            sum(self.process.cpu_times()[:2]),
            threads,
            sum(self.me.cpu_times()[:2]),
            time.perf_counter(),
            self.workers(),
            self.process.io_counters().write_bytes,
            self.database_cpu(),
        )

    def since(self, before: Snapshot) -> dict[str, float]:
        total, threads, mine, at, workers, written, database = self.snapshot()
        wall = at - before[3]
        used = {t: threads[t] - before[1].get(t, 0.0) for t in threads}
        loop = used.get(self.process.pid, 0.0)
        others = sorted((c for t, c in used.items() if t != self.process.pid), reverse=True)
        worker_cpu = sum(c - before[4].get(pid, 0.0) for pid, c in workers.items())
        database_cpu = sum(c - before[6].get(pid, 0.0) for pid, c in database.items())
        return {
            "server": 100 * (total - before[0]) / wall,
            "loop": 100 * loop / wall,
            "busiest_other": 100 * (others[0] if others else 0.0) / wall,
            "others": 100 * sum(others) / wall,
            "bench": 100 * (mine - before[2]) / wall,
            "workers": 100 * worker_cpu / wall,
            "worker_count": len(workers),
            "written": written - before[5],
            "database": 100 * database_cpu / wall,
        }


# -- the in-process replay, phase by phase -----------------------------------------------------


class Phases:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def wrap(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - began
                self.calls[name] += 1

        return timed

    def wrap_async(self, name: str, fn: Any) -> Any:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - began
                self.calls[name] += 1

        return timed


async def replay_in_process(
    location: str, key_file: Path, loads: list[AgentLoad], accepted: int
) -> tuple[float, int, Phases]:
    """Feed the same batches to ReceiptIntake.accept_receipts, one at a time, phases timed."""
    from coordinator import billing, tlog
    from coordinator.config import Settings
    from coordinator.http.app import load_or_create_key
    from coordinator.receipts import rules as receipt_rules
    from coordinator.service import Coordinator
    from coordinator.storage import Database
    from shared import log_entries
    from shared.messages import agent_protocol as ap
    from shared.messages import convert

    phases = Phases()
    database = Database(location)
    coordinator = Coordinator(Settings(**SETTINGS), database, load_or_create_key(key_file))
    database.start()

    # what the loop thread does
    door, intake = coordinator.signed_requests, coordinator.receipts
    door.authenticate = phases.wrap(  # type: ignore[method-assign]
        "request: verify + decode the signed batch", door.authenticate
    )
    intake.workers.open_all = phases.wrap_async(  # type: ignore[method-assign]
        "receipts: signature + decode (worker processes, wall)", intake.workers.open_all
    )
    intake._answered_before = phases.wrap_async(  # type: ignore[method-assign]
        "retry check (memory; the database for unknown leases)", intake._answered_before
    )
    patches: list[tuple[Any, str, Any]] = [
        (
            receipt_rules,
            "check_receipt",
            phases.wrap("receipts: rules", receipt_rules.check_receipt),
        ),
    ]
    # what the writer thread does inside the batch's transaction
    coordinator.receipt_store.store = phases.wrap(  # type: ignore[method-assign]
        "writer: ReceiptStore.store (all)", coordinator.receipt_store.store
    )
    patches += [
        (billing, "post_usages", phases.wrap("writer: ledger post_usages", billing.post_usages)),
        (tlog, "append_entries", phases.wrap("writer: tlog append_entries", tlog.append_entries)),
        (
            log_entries,
            "encode_receipt_entry",
            phases.wrap("writer: log entries encoded + checked", log_entries.encode_receipt_entry),
        ),
        (
            log_entries,
            "seal_acknowledgement",
            phases.wrap(
                "writer: acknowledgement sealed + signed", log_entries.seal_acknowledgement
            ),
        ),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    done = 0
    wall = 0.0
    try:
        for load in loads:
            for batch in load.batches:
                body = sign_request(load.key, "POST", RECEIPTS, {"receipts": batch}, _now())
                began = time.perf_counter()
                agent, payload = door.authenticate(body, "POST", RECEIPTS)
                batch_body = convert(ap.ReceiptBatch, payload)
                before = time.perf_counter()
                answer = await intake.accept_receipts(agent, batch_body)
                phases.seconds["accept_receipts (all, wall)"] += time.perf_counter() - before
                wall += time.perf_counter() - began
                done += sum(1 for r in answer["results"] if r["status"] == "accepted")
                if done >= accepted:
                    break
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        database.close()
        coordinator.close()
    return wall, done, phases


# -- the run ---------------------------------------------------------------------------


def _parse() -> tuple[Bench, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, help="simulated agents (default 50; quick 10)")
    parser.add_argument(
        "--gpus", type=int, default=4, help="GPUs (so leases) per agent (default 4)"
    )
    parser.add_argument(
        "--receipts", type=int, help="receipts to send in all (default 40,000; quick 4,000)"
    )
    parser.add_argument("--batch", type=int, default=100, help="receipts per request (default 100)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="requests in flight at once, each from a different agent (default 16)",
    )
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="skip the in-process replay that times each phase",
    )
    parser.add_argument("--quick", action="store_true", help="10 agents, 4,000 receipts, ~15 s")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with PostgreSQL: run the engines in turn this many times each (default 1)",
    )
    bench_engines.add_arguments(parser)
    args = parser.parse_args()
    return Bench(
        agents=args.agents or (10 if args.quick else 50),
        gpus=args.gpus,
        receipts=args.receipts or (4_000 if args.quick else 40_000),
        batch=args.batch,
        concurrency=args.concurrency,
        profile=not args.no_profile,
        rounds=max(1, args.rounds),
    ), bench_engines.choice(args)


def _snapshot(
    coordinator: CoordinatorProcess, workdir: Path, chosen: bench_engines.Engines
) -> tuple[str, Path]:
    """A copy of the coordinator's database as it is now, and its log key: (location, key)."""
    if is_postgres_url(coordinator.db):
        coordinator.stop()  # a database is copied with nobody connected to it
        copy = chosen.copy(coordinator.db)
        coordinator.start()
        return copy, coordinator.log_key_file
    target = workdir / "replay.db"
    _snapshot_db(Path(coordinator.db), target)
    return str(target), Path(f"{target}.key")


def _snapshot_db(source: Path, target: Path) -> None:
    with (
        contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)
    Path(f"{target}.key").write_bytes(Path(f"{source}.key").read_bytes())
    Path(f"{target}.key").chmod(0o600)


def main() -> None:
    bench, db_choice = _parse()
    began = time.monotonic()
    figures: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with bench_engines.engines(db_choice) as chosen:
        print(f"engines            {chosen.describe()}", flush=True)
        for round_ in range(bench.rounds if len(chosen.names) > 1 else 1):
            for engine in chosen.names:
                if len(chosen.names) > 1:
                    bench_engines.heading(engine, round_, bench.rounds)
                with tempfile.TemporaryDirectory(prefix="suanli-bench-") as tmp:
                    location = chosen.fresh(engine, Path(tmp))
                    figures[engine].append(run_engine(bench, location, Path(tmp), chosen))
    if len(figures) > 1:
        print()
        for engine, runs in figures.items():
            shown = ", ".join(f"{rate:,.0f} ({rate / verify:.2f})" for rate, verify in runs)
            print(
                f"{bench_engines.label(engine):<18} receipts/s per round: {shown} "
                "(in brackets: over that run's raw verifies/s)"
            )
        medians = {e: statistics.median(rate for rate, _ in runs) for e, runs in figures.items()}
        print(bench_engines.ratio_line("receipts (median)", medians, "receipts/s", goal=0.7))
        # a busy machine slows one run more than another: each rate over what one core verified
        # in the same run takes most of that out
        steadier = {
            e: statistics.median(rate / verify for rate, verify in runs) * 1000
            for e, runs in figures.items()
        }
        print(
            bench_engines.ratio_line(
                "per raw verify", steadier, "receipts per 1,000 verifies", goal=0.7
            )
        )
    print(f"total              {time.monotonic() - began:.0f} s")


def writer_totals(url: str) -> tuple[float, float]:
    """The coordinator's writer so far, from /metrics: (transactions, seconds in them)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in (
            "suanli_database_transactions_total",
            "suanli_database_transaction_seconds_total",
        ):
            found[name] = float(value)
    return (
        found.get("suanli_database_transactions_total", 0.0),
        found.get("suanli_database_transaction_seconds_total", 0.0),
    )


def run_engine(
    bench: Bench, location: str, workdir: Path, chosen: bench_engines.Engines
) -> tuple[float, float]:
    """One run of the bench on a fresh database; (end-to-end receipts/s, raw verifies/s)."""
    engine = bench_engines.POSTGRESQL if is_postgres_url(location) else bench_engines.SQLITE
    coordinator = CoordinatorProcess(workdir, settings=dict(SETTINGS), database=location)
    coordinator.start()
    assert coordinator.process is not None
    try:
        t = time.monotonic()
        loads = asyncio.run(setup_market(coordinator, bench))
        leases = sum(len(load.leases) for load in loads)
        print(
            f"setup              {bench.agents} agents × {bench.gpus} GPUs, {leases} leases "
            f"started in {time.monotonic() - t:.1f} s",
            flush=True,
        )
        if bench.profile:
            snapshot, key_file = _snapshot(coordinator, workdir, chosen)
        total, seal_s = seal_all(loads, bench)
        sample = loads[0].batches[0][0]
        print(
            f"sealed             {total:,} receipts ({total // leases} per lease, "
            f"{len(sample)} bytes each, batches of {bench.batch}) in {seal_s:.1f} s "
            f"({total / seal_s:,.0f}/s client side)",
            flush=True,
        )

        verify_rate, sign_rate, size = raw_ed25519(loads, 1.5)
        both = 1 / (1 / verify_rate + 1 / sign_rate)
        print(
            f"raw Ed25519        {verify_rate:,.0f} verifies/s, {sign_rate:,.0f} signs/s on "
            f"one core ({size}-byte messages); verify + sign {both:,.0f}/s",
            flush=True,
        )

        began_warm = time.monotonic()
        refused = asyncio.run(warm_up(coordinator.url, loads[0]))
        print(
            f"warm-up            {refused} forged receipts refused, which started the receipt "
            f"workers ({time.monotonic() - began_warm:.1f} s)",
            flush=True,
        )
        database_pids = chosen.postgres_pids() if engine == bench_engines.POSTGRESQL else []
        watch = CpuWatch(coordinator.process.pid, database_pids)
        writer_before = writer_totals(coordinator.url)
        before = watch.snapshot()
        result = asyncio.run(send_all(coordinator.url, loads, bench.concurrency))
        cpu = watch.since(before)
        writer_after = writer_totals(coordinator.url)
        rate = result.accepted / result.wall_s
        print(
            f"end to end         {rate:,.0f} receipts/s accepted ({result.accepted:,} of "
            f"{total:,} in {result.wall_s:.1f} s, {len(result.latencies)} batches, "
            f"{bench.concurrency} in flight); rejected: {dict(result.rejected) or 'none'}; "
            f"errors: {dict(result.errors) or 'none'}"
        )
        print(
            f"  ratio            {rate / verify_rate:.2f} of one core's raw verify rate "
            f"(goal ≥ 0.8); {rate / both:.2f} of raw verify + sign"
        )
        print(
            f"  batch latency    p50 {_q(result.latencies, 0.5) * 1000:.1f} ms   p99 "
            f"{_q(result.latencies, 0.99) * 1000:.1f} ms   max "
            f"{max(result.latencies, default=0) * 1000:.1f} ms"
        )
        database = f", PostgreSQL {cpu['database']:.0f}%" if database_pids else ""
        print(
            f"  CPU              coordinator {cpu['server']:.0f}% (event-loop thread "
            f"{cpu['loop']:.0f}%, other threads {cpu['others']:.0f}%, busiest of them "
            f"{cpu['busiest_other']:.0f}%), its {cpu['worker_count']:.0f} child processes "
            f"(receipt workers) {cpu['workers']:.0f}%, load generator "
            f"{cpu['bench']:.0f}%{database}; 100% = one core of {os.cpu_count()}"
        )
        if cpu["server"] > 0:
            per = (cpu["server"] + cpu["workers"]) / 100 * result.wall_s / max(1, result.accepted)
            print(
                f"  per receipt      {per * 1e6:,.0f} µs of coordinator CPU, workers included "
                f"(raw verify alone {1e6 / verify_rate:.0f} µs); "
                f"{cpu['written'] / max(1, result.accepted) / 1024:.1f} KiB written to disk by the "
                "coordinator process"
            )
        transactions = writer_after[0] - writer_before[0]
        busy_s = writer_after[1] - writer_before[1]
        print(
            f"  writer           {transactions:,.0f} transactions, mean "
            f"{busy_s / max(1, transactions) * 1000:.1f} ms each, in one for "
            f"{busy_s / result.wall_s:.0%} of the phase "
            f"({result.accepted / max(1, transactions):,.0f} receipts a transaction)"
        )
        stored = bench_engines.rows(coordinator.db, "SELECT COUNT(*) FROM receipts")[0][0]
        posted = bench_engines.rows(coordinator.db, "SELECT COUNT(*) FROM ledger_postings")
        logged = bench_engines.rows(
            coordinator.db,
            "SELECT COUNT(*) FROM log_entries WHERE kind = "
            "(SELECT kind FROM log_entries ORDER BY idx DESC LIMIT 1)",
        )[0][0]
        print(
            f"  committed        {stored:,} receipts, {posted[0][0]:,} ledger postings, "
            f"{logged:,} log entries of the last kind",
            flush=True,
        )
    finally:
        coordinator.stop()

    if not bench.profile:
        return rate, verify_rate
    wall, done, phases = asyncio.run(replay_in_process(snapshot, key_file, loads, result.accepted))
    print(
        f"in process         {done / wall:,.0f} receipts/s ({done:,} receipts, one batch "
        f"at a time, no HTTP; loop + writer threads)"
    )
    order = sorted(phases.seconds.items(), key=lambda item: -item[1])
    for name, seconds in order:
        print(f"  {seconds / max(1, done) * 1e6:8.1f} µs/receipt  {name}")
    return rate, verify_rate


if __name__ == "__main__":
    main()
