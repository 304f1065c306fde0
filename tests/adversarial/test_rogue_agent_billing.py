"""A rogue agent holds its own key and signs whatever it likes: it still bills only its lease's
window. Each attack goes to a real coordinator; each is refused by a named rule, charges
nothing beyond the window, and the log the coordinator keeps still passes `suanli audit`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from coordinator_harness import (
    FAST_SETTINGS,
    Api,
    CoordinatorProcess,
    FakeAgent,
    LeaseAtHand,
    seller_and_buyer,
    started_lease,
)
from databases import new_database

from coordinator.client import audit
from shared.billing_window import CLOCK_SKEW_MS
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, SealedReceipt, seal_receipt

PRICE = 6_000_000
GRACE_MS = 1_000


def _now() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Rogue(LeaseAtHand):
    """An agent's key on a lease, signing receipts of any content it chooses."""

    chain: list[SealedReceipt] = field(default_factory=list)

    def receipt(
        self, gpu_ms: int, issued_at_ms: int | None = None, **changes: Any
    ) -> SealedReceipt:
        previous = self.chain[-1] if self.chain else None
        price = self.lease["price_per_gpu_hour"]
        receipt = Receipt(
            lease_id=self.lease["lease_id"],
            job_id=self.job_id,
            agent_id=self.agent.agent_id,
            seq=previous.receipt.seq + 1 if previous else 1,
            prev=previous.digest if previous else GENESIS_PREV,
            issued_at_ms=_now() if issued_at_ms is None else issued_at_ms,
            gpu_uuids=tuple(self.lease["gpu_uuids"]),
            gpu_ms=gpu_ms,
            energy_mj=0,
            utilization_pct=50,
            peak_memory_bytes=0,
            price_per_gpu_hour=price,
            amount=usage_amount(gpu_ms, price),
            final=False,
            exit_code=None,
        )._replace(**changes)
        return seal_receipt(receipt, self.agent.key)

    async def send(self, sealed: SealedReceipt) -> dict[str, Any]:
        answer = await self.agent.client.signed(
            "/v1/agent/receipts", {"receipts": [sealed.envelope]}
        )
        [result] = answer["results"]
        if result["status"] == "accepted":
            self.chain.append(sealed)
        return dict(result)

    def window(self) -> tuple[int | None, int]:
        """(opened, closes) as the coordinator keeps them: what bounds the lease's bill."""
        [(created, started, max_ms, grace, stop, ended)] = self.coordinator.rows(
            "SELECT created_at_ms, started_at_ms, max_duration_ms, stop_grace_ms, "
            "stop_requested_at_ms, ended_at_ms FROM leases WHERE id = ?",
            [self.lease["lease_id"]],
        )
        closes = created + max_ms
        if stop is not None:
            closes = min(closes, stop + grace)
        if ended is not None:
            closes = min(closes, ended)
        return started, closes

    def charged(self) -> int:
        [(charged,)] = self.coordinator.rows(
            "SELECT COALESCE(SUM(amount), 0) FROM ledger_postings WHERE job_id = ?", [self.job_id]
        )
        return int(charged)

    async def audit_passes(self) -> None:
        await asyncio.sleep(2.5)  # the next checkpoint covers everything logged
        report = await audit.verify_log(self.coordinator.url, None, None)
        assert report.ok, [d.line() for d in report.discrepancies]


@pytest.fixture
def coordinator(tmp_path: Path, engine_name: str) -> Any:
    process = CoordinatorProcess(
        tmp_path,
        settings={**FAST_SETTINGS, "stop_grace_ms": GRACE_MS},
        database=new_database(engine_name, tmp_path),
    ).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def rogue(coordinator: CoordinatorProcess, cleanup: list[Any]) -> Rogue:
    started = await started_lease(coordinator, cleanup, PRICE)
    return Rogue(coordinator, started.agent, started.api, started.lease, started.job_id)


async def _short_lease(
    coordinator: CoordinatorProcess, cleanup: list[Any], max_duration_s: int, start: bool = True
) -> Rogue:
    agent, api = await seller_and_buyer(coordinator, cleanup, ["GPU-s0", "GPU-s1"], PRICE, 5, 6)
    _, job = await api.submit(
        gpus=2, max_price_per_gpu_hour_micro_yuan=PRICE, max_duration_s=max_duration_s
    )
    lease = await agent.wait_for_lease()
    if start:
        await agent.client.status(lease["lease_id"], "started")
    return Rogue(coordinator, agent, api, lease, str(job["id"]))


async def test_future_time_bills_nothing_and_far_future_is_refused(rogue: Rogue) -> None:
    opened, _ = rogue.window()
    assert opened is not None
    gpus = len(rogue.lease["gpu_uuids"])
    ahead = _now() + CLOCK_SKEW_MS - 2_000
    # within the skew a receipt is excused, but its GPU time counts only to its arrival
    claimed = gpus * (ahead - opened)
    result = await rogue.send(rogue.receipt(claimed, issued_at_ms=ahead))
    assert (result["status"], result["rule"]) == ("rejected", "outside_billable_window"), result
    result = await rogue.send(
        rogue.receipt(gpus * 10, issued_at_ms=_now() + CLOCK_SKEW_MS + 60_000)
    )
    assert (result["status"], result["rule"]) == ("rejected", "time_window"), result
    assert rogue.charged() == 0
    honest = await rogue.send(rogue.receipt(gpus * (_now() - opened) - gpus * 50))
    assert honest["status"] == "accepted", honest
    await rogue.audit_passes()


async def test_after_the_maximum_duration_the_agent_bills_nothing_more_and_is_ended(
    coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    rogue = await _short_lease(coordinator, cleanup, max_duration_s=2)
    gpus = 2
    max_cost = usage_amount(gpus * 2_000, PRICE)
    # the agent ignores the stop and claims the whole time since its start
    await asyncio.sleep(3.0)
    opened, closes = rogue.window()
    assert opened is not None
    refused = await rogue.send(rogue.receipt(gpus * (_now() - opened)))
    assert (refused["status"], refused["rule"]) == ("rejected", "outside_billable_window"), refused
    accepted = await rogue.send(rogue.receipt(gpus * (closes - opened)))
    assert accepted["status"] == "accepted", accepted
    assert rogue.charged() <= max_cost
    # it never reports the exit: the coordinator ends the lease itself, says why, penalises it
    job = await rogue.api.wait_for(rogue.job_id, lambda j: j["state"] != "running", timeout_s=10)
    assert (job["state"], job["reason"]) == ("failed", "agent_overran"), job
    assert "did not stop" in job["reason_detail"]
    [(penalty,)] = coordinator.rows(
        "SELECT penalty_ppm FROM agents WHERE agent_id = ?", [rogue.agent.agent_id]
    )
    [(end,)] = coordinator.rows(
        "SELECT end_reason FROM leases WHERE id = ?", [rogue.lease["lease_id"]]
    )
    assert penalty > 0 and end == "overrun"
    # later receipts still cannot reach past the close
    late = await rogue.send(rogue.receipt(gpus * (_now() - opened)))
    assert (late["status"], late["rule"]) == ("rejected", "outside_billable_window"), late
    assert rogue.charged() <= max_cost
    await rogue.audit_passes()


async def test_after_a_cancel_only_the_stop_grace_is_billed(rogue: Rogue) -> None:
    status, _ = await rogue.api.call("POST", f"/v1/jobs/{rogue.job_id}/cancel")
    assert status == 200
    await asyncio.sleep((GRACE_MS + 800) / 1000)
    opened, closes = rogue.window()
    assert opened is not None
    gpus = len(rogue.lease["gpu_uuids"])
    refused = await rogue.send(rogue.receipt(gpus * (_now() - opened)))
    assert (refused["status"], refused["rule"]) == ("rejected", "outside_billable_window"), refused
    assert rogue.charged() == 0
    assert (await rogue.send(rogue.receipt(gpus * (closes - opened))))["status"] == "accepted"
    job = await rogue.api.wait_for(rogue.job_id, lambda j: j["state"] == "cancelled", timeout_s=10)
    assert "did not stop" in job["reason_detail"]
    assert rogue.charged() == usage_amount(gpus * (closes - opened), PRICE)
    await rogue.audit_passes()


async def test_a_lease_never_started_bills_nothing_even_after_it_moved(
    coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    rogue = await _short_lease(coordinator, cleanup, max_duration_s=600, start=False)
    await asyncio.sleep(0.5)
    result = await rogue.send(rogue.receipt(20))
    assert (result["status"], result["rule"]) == ("rejected", "lease_not_started"), result
    # the start deadline passes; the lease is dead and still bills nothing
    await rogue.api.wait_for(
        rogue.job_id,
        lambda j: j["lease_id"] != rogue.lease["lease_id"] or j["state"] != "leased",
        timeout_s=10,
    )
    result = await rogue.send(rogue.receipt(20))
    assert (result["status"], result["rule"]) == ("rejected", "lease_not_started"), result
    assert rogue.charged() == 0
    await rogue.audit_passes()


async def test_another_agents_lease_cannot_be_billed(
    rogue: Rogue, coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    thief = FakeAgent(coordinator.url, ["GPU-t0"], PRICE)
    cleanup.append(thief)
    await thief.enrol(coordinator.add_provider(7))
    stolen = Rogue(coordinator, thief, rogue.api, rogue.lease, rogue.job_id)
    result = await stolen.send(stolen.receipt(20, agent_id=thief.agent_id))
    assert (result["status"], result["rule"]) == ("rejected", "lease"), result
    # its own key on the right lease but another job is refused the same way
    result = await rogue.send(rogue.receipt(20, job_id="job-000000000000"))
    assert (result["status"], result["rule"]) == ("rejected", "lease"), result
    assert rogue.charged() == 0


def _held(coordinator: CoordinatorProcess, job_id: str) -> int:
    from coordinator.billing import load_reservation
    from coordinator.storage import connect

    db = connect(coordinator.db)
    try:
        found = load_reservation(db, job_id)
    finally:
        db.conn.close()
    assert found is not None
    return found.remaining + found.voucher_remaining


async def test_a_job_the_coordinator_ended_still_holds_for_its_last_receipt(rogue: Rogue) -> None:
    # cancelled, and its agent never stops: the coordinator ends the lease and the job...
    status, _ = await rogue.api.call("POST", f"/v1/jobs/{rogue.job_id}/cancel")
    assert status == 200
    await rogue.api.wait_for(rogue.job_id, lambda j: j["state"] == "cancelled", timeout_s=10)
    # ...but the reservation waits for the lease's receipts, which arrive late and are paid from it
    assert _held(rogue.coordinator, rogue.job_id) > 0
    opened, closes = rogue.window()
    assert opened is not None
    gpus = len(rogue.lease["gpu_uuids"])
    final = rogue.receipt(gpus * (closes - opened), final=True, exit_code=137)
    assert (await rogue.send(final))["status"] == "accepted"
    deadline = time.monotonic() + 5
    while _held(rogue.coordinator, rogue.job_id) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert _held(rogue.coordinator, rogue.job_id) == 0, "settled once its final receipt is in"
    assert rogue.coordinator.admin("check-ledger", check=False).returncode == 0


async def test_a_flood_of_bad_receipts_is_answered_but_stored_only_to_a_daily_limit(
    tmp_path: Path, engine_name: str, cleanup: list[Any]
) -> None:
    process = CoordinatorProcess(
        tmp_path,
        settings={**FAST_SETTINGS, "rejections_per_agent_per_day": 300},
        database=new_database(engine_name, tmp_path),
    ).start()
    try:
        started = await started_lease(process, cleanup, PRICE)
        rogue = Rogue(process, started.agent, started.api, started.lease, started.job_id)
        bad = [rogue.receipt(10**9, seq=n).envelope for n in range(2, 202)]  # each breaks the chain
        for _ in range(3):
            answer = await rogue.agent.client.signed("/v1/agent/receipts", {"receipts": bad})
            assert {r["status"] for r in answer["results"]} == {"rejected"}
        [(stored,)] = process.rows("SELECT COUNT(*) FROM receipt_rejections")
        assert stored == 300
        async with aiohttp.ClientSession() as http, http.get(process.url + "/metrics") as response:
            assert "suanli_receipt_rejections_dropped_total 300.0" in await response.text()
        assert rogue.charged() == 0
    finally:
        process.stop()
