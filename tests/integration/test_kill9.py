"""kill -9 under load: agents stream receipts while the coordinator is killed and restarted.

Three fake agents serve six leases for jobs of two enterprises. Each lease's receipts are
signed as a real agent signs them (cumulative, chained) and kept in a spool until the
coordinator acknowledges them; after a connection error the very same envelopes are sent
again. Meanwhile the coordinator is SIGKILLed at random moments and restarted on the same
database and port. Afterwards every signed receipt is accepted exactly once and the ledger
holds, to the micro-yuan, what the agents signed.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from coordinator_harness import FAST_SETTINGS, Api, CoordinatorProcess, FakeAgent, lease_receipt
from databases import new_database

from shared.http_client import CoordinatorError
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, SealedReceipt, seal_receipt

PRICE = 36_000_000  # µ¥ per GPU-hour: 10 µ¥ per GPU-millisecond
KILLS = 4
STREAM_S = 12.0
BATCH = 8
LONG_OUTAGE_S = FAST_SETTINGS["heartbeat_timeout_ms"] / 1000 + 0.5


def _now() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Stream:
    """One lease as its agent sees it: what it signed, and what still waits for an ack."""

    agent: FakeAgent
    lease: dict[str, Any]
    seen_at_ms: int
    signed: list[SealedReceipt] = field(default_factory=list)
    spool: list[SealedReceipt] = field(default_factory=list)
    acked: dict[int, bytes] = field(default_factory=dict)
    errors: int = 0

    def sign(self, final: bool = False) -> SealedReceipt:
        previous = self.signed[-1] if self.signed else None
        now = _now()
        # GPU time counts from when the coordinator answered the start report
        gpu_ms = max(previous.receipt.gpu_ms if previous else 0, now - self.seen_at_ms)
        sealed = lease_receipt(
            self.agent,
            self.lease,
            gpu_ms,
            previous,
            final=final,
            utilization_pct=80,
            issued_at_ms=now,
        )
        self.signed.append(sealed)
        self.spool.append(sealed)
        return sealed

    async def send_spool(self) -> None:
        """Send the oldest unacknowledged receipts once; keep them after any error."""
        batch = self.spool[:BATCH]
        try:
            answer = await self.agent.client.signed(
                "/v1/agent/receipts", {"receipts": [s.envelope for s in batch]}, timeout_s=5
            )
        except CoordinatorError as exc:
            if exc.status is not None and exc.status < 500:
                raise AssertionError(f"the coordinator refused a receipt batch: {exc}") from None
            self.errors += 1  # unreachable or killed mid-request: the same bytes go again
            await asyncio.sleep(0.05)
            return
        for sealed, result in zip(batch, answer["results"], strict=True):
            assert result["status"] == "accepted", (result["detail"], self.seen_at_ms, sealed)
            assert (result["lease_id"], result["seq"]) == (
                sealed.receipt.lease_id,
                sealed.receipt.seq,
            )
            self.acked[sealed.receipt.seq] = result["acknowledgement"]
        del self.spool[: len(batch)]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sign()
            await self.send_spool()
            await asyncio.sleep(random.uniform(0.02, 0.12))
        self.sign(final=True)
        deadline = time.monotonic() + 30
        while self.spool:
            assert time.monotonic() < deadline, f"receipts never acknowledged: {self.spool}"
            await self.send_spool()
        while True:
            assert time.monotonic() < deadline, "the exit was never reported"
            try:
                await self.agent.client.status(self.lease["lease_id"], "exited", exit_code=0)
                return
            except CoordinatorError as exc:
                if exc.status is not None and exc.status < 500:
                    raise
                await asyncio.sleep(0.05)


async def _checkpoint_size(url: str) -> int | None:
    """The audit log's tree size, or None where this coordinator has no log endpoint."""
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/v1/log/checkpoint") as response:
                if response.status == 404:
                    return None
                assert response.status == 200, await response.text()
                return int((await response.text()).split("\n")[1])
    except aiohttp.ClientError:
        return None


async def _kill_repeatedly(
    coordinator: CoordinatorProcess, stop: asyncio.Event, log_sizes: list[int]
) -> int:
    kills = 0
    rng = random.Random()
    for n in range(KILLS):
        await asyncio.sleep(rng.uniform(0.8, STREAM_S / KILLS - 0.8))
        size = await _checkpoint_size(coordinator.url)
        if size is not None:
            log_sizes.append(size)
        coordinator.stop(kill=True)
        kills += 1
        # one outage outlasts the heartbeat timeout: silence while we were down is not theirs
        await asyncio.sleep(LONG_OUTAGE_S if n == 1 else rng.uniform(0, 0.3))
        await asyncio.to_thread(coordinator.start)
        size = await _checkpoint_size(coordinator.url)
        if size is not None:
            log_sizes.append(size)
    stop.set()
    return kills


async def _leases_of(agents: list[FakeAgent], count: int) -> list[Stream]:
    streams: dict[str, Stream] = {}
    deadline = time.monotonic() + 15
    while len(streams) < count:
        assert time.monotonic() < deadline, f"only {len(streams)} of {count} leases arrived"
        for agent in agents:
            for lease in await agent.leases(wait_ms=200):
                if lease["lease_id"] not in streams:
                    # GPU time counts once the coordinator has the start (the window opens)
                    await agent.client.status(lease["lease_id"], "started")
                    streams[lease["lease_id"]] = Stream(agent, lease, _now())
    return list(streams.values())


@pytest.mark.slow
async def test_kill9_under_load_loses_and_double_counts_nothing(
    tmp_path: Path, engine_name: str
) -> None:
    coordinator = CoordinatorProcess(
        tmp_path, settings=dict(FAST_SETTINGS), database=new_database(engine_name, tmp_path)
    )
    coordinator.start()
    agents: list[FakeAgent] = []
    apis: list[Api] = []
    try:
        # the admin commands block this loop, so they all run before any agent heartbeats
        enrolments = [coordinator.add_provider(10 + n) for n in range(3)]
        apis = [Api(coordinator.url, coordinator.add_enterprise(20 + n)) for n in range(2)]
        auditor = Api(
            coordinator.url, coordinator.admin_json("add-auditor", "--name", "Audit")["token"]
        )
        apis.append(auditor)
        for n, enrolment in enumerate(enrolments):
            agent = FakeAgent(coordinator.url, [f"GPU-k{n}a", f"GPU-k{n}b"], PRICE)
            agents.append(agent)
            await agent.enrol(enrolment)
            await agent.heartbeat()
            agent.keep_alive()
        jobs = []
        for api in apis[:2]:
            for i in range(3):
                status, job = await api.submit(
                    max_price_per_gpu_hour_micro_yuan=PRICE,
                    max_duration_s=3600,
                    idempotency_key=f"kill9-{i}",
                )
                assert status == 201, job
                jobs.append(job["id"])
        streams = await _leases_of(agents, len(jobs))

        stop = asyncio.Event()
        log_sizes: list[int] = []
        killer = asyncio.create_task(_kill_repeatedly(coordinator, stop, log_sizes))
        await asyncio.gather(*(stream.run(stop) for stream in streams))
        assert await killer == KILLS
        assert sum(stream.errors for stream in streams) > 0, "no request ever met a kill"
        assert log_sizes == sorted(log_sizes), f"the audit log shrank across a restart: {log_sizes}"

        # none lost: every receipt each agent signed was acknowledged, once per seq
        for stream in streams:
            assert stream.spool == []
            assert sorted(stream.acked) == list(range(1, len(stream.signed) + 1))

        by_lease = {stream.lease["lease_id"]: stream for stream in streams}
        for job_id in jobs:
            job = await auditor.job(job_id)
            stream = by_lease[job["lease_id"]]
            last = stream.signed[-1].receipt
            assert job["state"] == "succeeded", job
            assert job["attempts"] == 0, f"a lease was lost across a restart: {job}"
            assert job["charged_micro_yuan"] == last.amount, (job, last)
            assert (
                job["voucher_micro_yuan"] + job["deferred_micro_yuan"] == job["charged_micro_yuan"]
            )
    finally:
        for thing in [*agents, *apis]:
            await thing.close()
        coordinator.stop()

    # the ledger, read from the database with the coordinator stopped
    rows = coordinator.rows
    posted = dict(rows("SELECT lease_id, SUM(amount) FROM ledger_postings GROUP BY lease_id"))
    stored = {
        lease_id: (count, top)
        for lease_id, count, top in rows(
            "SELECT lease_id, COUNT(*), MAX(seq) FROM receipts GROUP BY lease_id"
        )
    }
    [(rejected,)] = rows("SELECT COUNT(*) FROM receipt_rejections")
    [(lost,)] = rows("SELECT COUNT(*) FROM leases WHERE end_reason != 'exited'")
    [parts] = rows("SELECT SUM(amount), SUM(voucher), SUM(deferred) FROM ledger_postings")
    assert rejected == 0
    assert lost == 0
    assert set(posted) == set(by_lease)
    for lease_id, stream in by_lease.items():
        signed = len(stream.signed)
        assert posted[lease_id] == stream.signed[-1].receipt.amount, lease_id
        assert stored[lease_id] == (signed, signed), lease_id
    assert parts[0] == parts[1] + parts[2] == sum(s.signed[-1].receipt.amount for s in streams)
    check = coordinator.admin("check-ledger", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
