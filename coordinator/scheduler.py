"""Placing pending jobs: an auction per job, oldest first, over the market's offers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator import accounts, tlog
from coordinator.jobs import Job, Lease
from coordinator.scheduler_parts import Changes, SchedulerParts
from coordinator.storage import Session
from shared import canonical, log_entries
from shared.auction import JobSpec, Outcome, round_record, run_auction


@dataclass
class Counters:
    auction_rounds: int = 0
    placements: int = 0
    auction_seconds: float = 0.0
    loop_stalls: int = 0  # the event loop went more than attention.STALL_MS without a turn


@dataclass
class Round:
    """One auction's record for the log and the auction_rounds table."""

    job_id: str
    at_ms: int
    record: bytes


@dataclass
class Placement(Changes):
    """What one slice of auctions changed: its entries are the awards, and its rounds are
    written (and logged) before them."""

    rounds: list[Round] = field(default_factory=list)


@dataclass(eq=False)
class Scheduler(SchedulerParts):
    """Places pending jobs by auction and commits what the auctions changed."""

    counters: Counters = field(default_factory=Counters, init=False)

    def place_pending(self, limit: int = 500) -> Placement:
        """Auction pending jobs, oldest first, in memory; returns what must be committed."""
        placement = Placement()
        market = self.state.market
        now = self.clock()
        started = time.perf_counter()
        version = market.version
        waiting = [j for j in self.state.pending.values() if j.tried_at_version != version]
        for job in sorted(waiting, key=lambda j: j.created_at_ms)[:limit]:
            job.tried_at_version = version
            spec = _job_spec(job)
            offers = market.candidates(spec, now)
            outcome = run_auction(spec, offers)
            self.counters.auction_rounds += 1
            record = Round(job.id, now, b"")
            if outcome.winner is None:
                if job.reason != outcome.reason:
                    job.reason, job.reason_detail = outcome.reason, outcome.reason_detail
                    placement.jobs.append(job)
                    record.record = canonical.encode(round_record(spec, offers, outcome))
                    placement.rounds.append(record)
                continue
            lease = self._lease_for(job, outcome, now)
            placement.entries.append(self.transitions.award(job, lease))
            self.counters.placements += 1
            record.record = canonical.encode(round_record(spec, offers, outcome))
            placement.rounds.append(record)
            placement.jobs.append(job)
            placement.leases.append(lease)
        self.counters.auction_seconds += time.perf_counter() - started
        return placement

    def _lease_for(self, job: Job, outcome: Outcome, now: int) -> Lease:
        assert outcome.winner is not None and outcome.price_per_gpu_hour is not None
        return Lease(
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

    async def schedule_once(self) -> int:
        """Auction what is pending in slices, committing each before the next (the loop
        breathes)."""
        placed = 0
        state = self.state
        while any(job.tried_at_version != state.market.version for job in state.pending.values()):
            placement = self.place_pending()
            if not placement.jobs and not placement.leases:
                continue
            await self.committer.save(
                jobs=placement.jobs,
                leases=placement.leases,
                extra=round_writes(placement.rounds),
                entries=placement.entries,
            )
            for lease in placement.leases:
                self.signals.notify(lease.agent_id)
            placed += len(placement.leases)
        return placed


def round_writes(rounds: list[Round]) -> Callable[[Session], None]:
    """The auction rounds' rows and their log entries (appended before the awards)."""

    def write(db: Session) -> None:
        db.table("auction_rounds").insert_all(
            [{"job_id": r.job_id, "at_ms": r.at_ms, "record": r.record} for r in rounds]
        )
        tlog.append_entries(
            db,
            [
                log_entries.encode_entry(
                    log_entries.AUCTION_ROUND, r.at_ms, log_entries.AuctionRoundEntry(r.record)
                )
                for r in rounds
            ],
        )

    return write


def _job_spec(job: Job) -> JobSpec:
    request = job.request
    return JobSpec(
        job_id=job.id,
        gpu_count=request.gpus,
        min_gpu_memory_bytes=request.min_gpu_memory_bytes,
        gpu_models=request.gpu_models,
        max_price_per_gpu_hour=request.max_price_per_gpu_hour,
        excluded_agents=tuple(sorted(set(job.excluded_agents))),
        egress=request.network == "egress",
        scratch_bytes=request.scratch_bytes,
    )
