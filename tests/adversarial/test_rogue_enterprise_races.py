"""A rogue enterprise races its own requests: the same job submitted many times at once, cancels
fired together and against the agent's start. Each race ends in one job, one reservation, one
stop, and a bill no larger than the job's window."""

from __future__ import annotations

import asyncio
from typing import Any

from coordinator_harness import Api, CoordinatorProcess, FakeAgent, seller_and_buyer

from shared import log_entries as L

PRICE = 5_000_000


async def _market(coordinator: CoordinatorProcess, cleanup: list[Any]) -> tuple[FakeAgent, Api]:
    return await seller_and_buyer(coordinator, cleanup, ["GPU-e0", "GPU-e1"], PRICE)


def _rows(coordinator: CoordinatorProcess, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return coordinator.rows(sql, params)


async def test_one_job_is_made_of_many_concurrent_submits_with_one_key(
    coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    _, api = await _market(coordinator, cleanup)
    answers = await asyncio.gather(*(api.submit(idempotency_key="same", gpus=1) for _ in range(40)))
    statuses = sorted({status for status, _ in answers})
    assert set(statuses) <= {200, 201} and 201 in statuses, answers
    assert len({body["id"] for _, body in answers}) == 1
    assert [status for status, _ in answers].count(201) == 1
    assert _rows(coordinator, "SELECT COUNT(*) FROM jobs") == [(1,)]
    assert _rows(coordinator, "SELECT COUNT(*) FROM ledger_reservations") == [(1,)]


async def test_concurrent_cancels_stop_the_lease_once(
    coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    agent, api = await _market(coordinator, cleanup)
    _, job = await api.submit(gpus=2, max_price_per_gpu_hour_micro_yuan=PRICE)
    lease = await agent.wait_for_lease()
    await agent.client.status(lease["lease_id"], "started")
    answers = await asyncio.gather(
        *(api.call("POST", f"/v1/jobs/{job['id']}/cancel") for _ in range(20))
    )
    assert {status for status, _ in answers} == {200}
    stops = [
        row
        for row in _rows(coordinator, "SELECT data FROM log_entries")
        if (entry := L.decode_entry(row[0])).kind == L.LEASE_EVENT
        and entry.body.event == L.LEASE_STOP_REQUESTED
    ]  # type: ignore[union-attr]
    assert len(stops) == 1
    [(stopped_at,)] = _rows(
        coordinator, "SELECT stop_requested_at_ms FROM leases WHERE id = ?", lease["lease_id"]
    )
    assert stopped_at is not None
    await agent.client.status(lease["lease_id"], "exited", exit_code=143)
    shown = await api.job(job["id"])
    assert shown["state"] == "cancelled"


async def test_a_cancel_racing_the_start_report_never_opens_more_than_the_grace(
    coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    agent, api = await _market(coordinator, cleanup)
    _, job = await api.submit(gpus=2, max_price_per_gpu_hour_micro_yuan=PRICE)
    lease = await agent.wait_for_lease()
    cancel, _ = await asyncio.gather(
        api.call("POST", f"/v1/jobs/{job['id']}/cancel"),
        agent.client.status(lease["lease_id"], "started"),
    )
    assert cancel[0] == 200
    [(stop, grace)] = _rows(
        coordinator,
        "SELECT stop_requested_at_ms, stop_grace_ms FROM leases WHERE id = ?",
        lease["lease_id"],
    )
    # whichever came first, the lease is to stop and its window closes by the cancel plus the grace
    [polled] = await agent.leases(wait_ms=1000)
    assert (polled["desired"], polled["stop_reason"]) == ("stop", "cancelled")
    assert polled["window"]["closes_at_ms"] <= stop + grace
