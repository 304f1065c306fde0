"""Benchmark: placing a backlog of pending jobs on a city-sized market, in memory and on disk.

Builds a coordinator with a real SQLite file, enrols a fleet of agents with mixed GPU models
and asks, queues jobs of mixed shapes and max prices, then times `Scheduler.place_pending`
(auctions and placement in memory) and, separately, the commit of what it returns through
the same `_save` call `schedule_once` makes.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import bench_engines

from coordinator.storage import Session

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the loopback harness and inventory() live with the tests

from coordinator_harness import inventory, uscc

from coordinator import scheduler
from coordinator.config import Settings
from coordinator.jobs import Job, parse_job_request
from coordinator.market import Agent, parse_inventory
from coordinator.service import Coordinator
from coordinator.state.rows import gpu_row, job_row
from coordinator.storage import Database
from coordinator.storage.engines import begin
from shared.gpu_models import expand_model_filter
from shared.identity import PrivateKey
from shared.messages import agent_protocol as ap
from shared.messages import api, convert

GIB = 1 << 30
YUAN = 1_000_000  # micro-yuan
NOMAD_C2M = 1_500  # placements/s, HashiCorp's published "C2M" figure
GOAL = 5_000  # placements/s

# (NVML board name, memory, ask range in ¥ per GPU-hour, share of agents, share with 4 GPUs)
FLEET: list[tuple[str, int, tuple[float, float], float, float]] = [
    ("NVIDIA H100 80GB HBM3", 80 * GIB, (12.0, 20.0), 0.30, 0.10),
    ("NVIDIA H200", 141 * GIB, (16.0, 25.0), 0.10, 0.05),
    ("NVIDIA A100-SXM4-80GB", 80 * GIB, (7.0, 13.0), 0.18, 0.15),
    ("NVIDIA A100-SXM4-40GB", 40 * GIB, (6.0, 10.0), 0.05, 0.30),
    ("NVIDIA L40S", 48 * GIB, (5.5, 9.0), 0.15, 0.30),
    ("NVIDIA GeForce RTX 4090", 24 * GIB, (5.0, 7.0), 0.22, 0.40),
]
# (model filter as a person types it, share of jobs); the rest take any model
FILTERS: list[tuple[list[str], float]] = [
    (["H100"], 0.15),
    (["H200"], 0.06),
    (["A100"], 0.08),
    (["L40S"], 0.04),
    (["RTX 4090"], 0.04),
    (["H100", "H200"], 0.05),
]
GPU_COUNTS = [(1, 0.30), (2, 0.20), (4, 0.25), (8, 0.23), (16, 0.02)]  # 16: nobody has that many
MIN_MEMORY = [(0, 0.75), (40 * GIB, 0.10), (48 * GIB, 0.05), (80 * GIB, 0.08), (141 * GIB, 0.02)]


def _pick(rng: random.Random, table: list[tuple[Any, float]]) -> Any:
    values, weights = zip(*table, strict=True)
    return rng.choices(values, weights)[0]


def _yuan(rng: random.Random, low: float, high: float) -> int:
    return round(rng.uniform(low, high) * 100) * (YUAN // 100)  # whole fen


def build_market(
    coordinator: Coordinator, count: int, rng: random.Random, now: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Enrol `count` agents in memory; returns their agents and gpus rows for the database."""
    market = coordinator.state.market
    agent_rows: list[dict[str, Any]] = []
    gpu_rows: list[dict[str, Any]] = []
    fleet = [(board, memory, asks, four) for board, memory, asks, _share, four in FLEET]
    shares = [share for *_rest, share, _four in FLEET]
    for n in range(count):
        board, memory, (low, high), four = rng.choices(fleet, shares)[0]
        gpus = 4 if rng.random() < four else 8
        key = PrivateKey.from_seed(rng.randbytes(32)).public
        agent = Agent(
            agent_id=key.agent_id,
            provider_id=f"prov-{n % 100:03d}",
            provider_uscc=uscc(n % 100),
            public_key=key,
            hostname=f"host-{n:05d}",
            ask_per_gpu_hour=_yuan(rng, low, high),
            penalty_at_ms=now,
        )
        market.add_agent(agent)
        uuids = [f"GPU-{n:08x}-0000-4000-8000-{g:012x}" for g in range(gpus)]
        new_gpus, _flags = market.reconcile(
            agent, parse_inventory(convert(ap.Inventory, inventory(uuids, board, memory))), now
        )
        agent_rows.append(
            {
                "agent_id": agent.agent_id,
                "provider_id": agent.provider_id,
                "public_key": key.raw,
                "hostname": agent.hostname,
                "enrolled_at_ms": now,
                "ask_per_gpu_hour": agent.ask_per_gpu_hour,
                "last_seen_ms": now,
                "penalty_ppm": 0,
                "penalty_at_ms": now,
            }
        )
        gpu_rows.extend(gpu_row(g, now) for g in new_gpus)
    return agent_rows, gpu_rows


def build_jobs(coordinator: Coordinator, count: int, rng: random.Random, now: int) -> None:
    """Queue `count` pending jobs as `submit_job` leaves them, oldest first."""
    no_filter = 1.0 - sum(share for _, share in FILTERS)
    filters = [*FILTERS, ([], no_filter)]
    for i in range(count):
        models = _pick(rng, filters)
        request = parse_job_request(
            convert(
                api.JobSubmit,
                {
                    "image": "registry.example/team/train:1.4",
                    "command": ["python", "train.py"],
                    "gpus": _pick(rng, GPU_COUNTS),
                    "min_gpu_memory_bytes": _pick(rng, MIN_MEMORY),
                    "gpu_models": models,
                    "max_duration_s": rng.choice([600, 3600, 4 * 3600, 86_400]),
                    # ¥3–¥28: the cheap end is below every ask for some models (some jobs wait)
                    "max_price_per_gpu_hour_micro_yuan": _yuan(rng, 3.0, 28.0),
                },
            )
        )
        if request.gpu_models:
            request = replace(request, gpu_models=expand_model_filter(request.gpu_models))
        coordinator.state.index_job(
            Job(
                id=f"job-{i:08d}",
                enterprise_id="ent-bench",
                idempotency_key=f"key-{i:08d}",
                request=request,
                created_at_ms=now - count + i,
                reason="waiting_for_auction",
                reason_detail="the job waits for the next auction",
            )
        )


def seed_database(
    db: Session,
    coordinator: Coordinator,
    agent_rows: list[dict[str, Any]],
    gpu_rows: list[dict[str, Any]],
    now: int,
) -> None:
    """Write what enrolment, heartbeats and job submission would already have committed."""
    begin(db)
    db.table("providers").insert_all(
        {"id": f"prov-{n:03d}", "name": f"Provider {n}", "uscc": uscc(n), "created_at_ms": now}
        for n in range(100)
    )
    db.table("enterprises").insert(
        {"id": "ent-bench", "name": "Bench", "uscc": uscc(999), "created_at_ms": now}
    )
    db.table("agents").insert_all(agent_rows)
    db.table("gpus").insert_all(gpu_rows)
    db.table("jobs").insert_all(job_row(job) for job in coordinator.state.jobs.values())
    db.conn.execute("COMMIT")


class Stopwatch:
    """Per-job split of `place_pending`: finding candidates, the auction, and the rest."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.marks: list[float] = []
        self.candidates_s: list[float] = []
        self.auction_s: list[float] = []
        self.offers: list[int] = []
        candidates = coordinator.state.market.candidates
        run_auction = vars(scheduler)["run_auction"]  # place_pending's own reference
        clock = time.perf_counter

        def timed_candidates(job: Any, now_ms: int) -> Any:
            start = clock()
            self.marks.append(start)
            offers = candidates(job, now_ms)
            self.candidates_s.append(clock() - start)
            self.offers.append(len(offers))
            return offers

        def timed_auction(job: Any, offers: Any) -> Any:
            start = clock()
            outcome = run_auction(job, offers)
            self.auction_s.append(clock() - start)
            return outcome

        coordinator.state.market.candidates = timed_candidates  # type: ignore[method-assign,assignment]  # timed in place
        setattr(scheduler, "run_auction", timed_auction)  # noqa: B010 - a patch, on purpose
        self._restore = (coordinator, candidates, run_auction)

    def restore(self) -> None:
        coordinator, candidates, run_auction = self._restore
        coordinator.state.market.candidates = candidates  # type: ignore[method-assign]  # put back
        setattr(scheduler, "run_auction", run_auction)  # noqa: B010

    def per_job(self, end: float) -> list[float]:
        return [b - a for a, b in zip(self.marks, [*self.marks[1:], end], strict=True)]


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:9,.0f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, help="agents in the market (default 20,000)")
    parser.add_argument("--jobs", type=int, help="pending jobs to place (default 10,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="a smaller market: 4,000 agents and 2,000 jobs"
    )
    bench_engines.add_arguments(parser)
    args = parser.parse_args()
    if args.agents is None:
        args.agents = 4_000 if args.quick else 20_000
    if args.jobs is None:
        args.jobs = 2_000 if args.quick else 10_000
    commits: dict[str, float] = {}
    ends: dict[str, float] = {}
    with bench_engines.engines(bench_engines.choice(args)) as chosen:
        print(f"engines            {chosen.describe()}", flush=True)
        for engine in chosen.names:
            if len(chosen.names) > 1:
                bench_engines.heading(engine, 0, 1)
            with tempfile.TemporaryDirectory(prefix="suanli-bench-") as tmp:
                location = chosen.fresh(engine, Path(tmp))
                commits[engine], ends[engine] = run_engine(args, location)
    if len(chosen.names) > 1:
        print()
        print(bench_engines.ratio_line("commit", commits, "rows/s"))
        print(bench_engines.ratio_line("end to end", ends, "placements/s"))


def run_engine(args: argparse.Namespace, location: str) -> tuple[float, float]:
    """Build, place and commit on a fresh database; (commit rows/s, end-to-end placements/s)."""
    rng = random.Random(args.seed)
    database = Database(location)
    coordinator = Coordinator(Settings(), database, signing_key=PrivateKey.generate())
    now = coordinator.clock()

    started = time.perf_counter()
    agent_rows, gpu_rows = build_market(coordinator, args.agents, rng, now)
    build_s = time.perf_counter() - started
    build_jobs(coordinator, args.jobs, rng, now)
    seed_database(database.db, coordinator, agent_rows, gpu_rows, now)
    free = sum(
        1 for a in coordinator.state.market.agents.values() for g in a.gpus.values() if g.offerable
    )
    print(
        f"market             {args.agents:,} agents, {len(gpu_rows):,} GPUs "
        f"({free:,} free); {len(coordinator.state.pending):,} pending jobs "
        f"needing {sum(j.request.gpus for j in coordinator.state.pending.values()):,} GPUs; "
        f"seed {args.seed}"
    )
    print(
        f"enrol+reconcile    {args.agents / build_s:10,.0f} agents/s in memory "
        f"(parse_inventory + Market.reconcile, 4–8 GPUs each)"
    )

    watch = Stopwatch(coordinator)
    started = time.perf_counter()
    placement = coordinator.scheduler.place_pending(limit=args.jobs)
    jobs, leases, records = placement.jobs, placement.leases, placement.rounds
    ended = time.perf_counter()
    watch.restore()
    place_s = ended - started
    per_job = watch.per_job(ended)

    def extra(db: Session) -> None:  # the same rows schedule_once commits
        db.table("auction_rounds").insert_all(
            [{"job_id": r.job_id, "at_ms": r.at_ms, "record": r.record} for r in records]
        )

    async def commit() -> float:
        database.start()
        try:
            begun = time.perf_counter()
            await coordinator.scheduler.committer.save(jobs=jobs, leases=leases, extra=extra)
            return time.perf_counter() - begun
        finally:
            database.close()

    commit_s = asyncio.run(commit())

    rounds = len(per_job)
    placed = len(leases)
    unplaced = Counter(job.reason for job in coordinator.state.pending.values())
    rate = placed / place_s
    print(
        f"auction rounds     {rounds:,} in {place_s:.3f} s: {placed:,} placed, "
        f"{rounds - placed:,} unplaceable"
    )
    for reason, n in unplaced.most_common():
        print(f"    {n:7,}  {reason}")
    print(f"placements/s       {rate:10,.0f}  (in memory: candidates + auction + lease)")
    print(f"rounds/s           {rounds / place_s:10,.0f}")
    # place_pending takes jobs oldest first, the order build_jobs created them in
    placed_ids = {lease.job_id for lease in leases}
    order = sorted(coordinator.state.jobs.values(), key=lambda j: j.created_at_ms)[:rounds]
    won = [t for t, job in zip(per_job, order, strict=True) if job.id in placed_ids]
    lost = [t for t, job in zip(per_job, order, strict=True) if job.id not in placed_ids]
    for label, times in (
        ("per round       ", per_job),
        ("  placed jobs   ", won),
        ("  unplaceable   ", lost),
    ):
        if times:
            print(
                f"{label}   p50 {_us(_quantile(times, 0.5))}   p99 {_us(_quantile(times, 0.99))}"
                f"   max {_us(max(times))}   total {sum(times):.3f} s"
            )
    cand, auct = sum(watch.candidates_s), sum(watch.auction_s)
    print(
        f"  split            Market.candidates {cand / place_s:5.1%}, run_auction "
        f"{auct / place_s:5.1%}, rest (lease, round record) {1 - (cand + auct) / place_s:5.1%}"
        f"; offers per round p50 {int(_quantile(watch.offers, 0.5))}, "
        f"max {max(watch.offers, default=0)}"
    )
    rows = len(jobs) + len(leases) + len(records)
    print(
        f"commit             {commit_s:.3f} s for {len(jobs):,} jobs, {len(leases):,} leases, "
        f"{len(records):,} rounds ({rows / commit_s:,.0f} rows/s, one transaction)"
    )
    print(
        f"end to end         {placed / (place_s + commit_s):10,.0f} placements/s (place + commit)"
    )
    print(
        f"ratio to goal      {rate / GOAL:10.2f}  (in memory vs {GOAL:,}/s); end to end "
        f"{placed / (place_s + commit_s) / GOAL:.2f}"
    )
    print(f"ratio to Nomad     {rate / NOMAD_C2M:10.2f}  (Nomad C2M ≈ {NOMAD_C2M:,} placements/s)")
    return rows / commit_s, placed / (place_s + commit_s)


if __name__ == "__main__":
    main()
