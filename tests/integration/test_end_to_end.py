"""Black-box: real coordinator, two real agents, a real engine, and the `suanli` command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agent_harness import AgentProcess
from coordinator_harness import CoordinatorProcess
from databases import new_database
from engines import BUSYBOX_IMAGE, EngineService
from fake_nvml.fixture import FakeGpu

SUANLI = Path(sys.executable).parent / "suanli"


@dataclass
class Market:
    coordinator: CoordinatorProcess
    cheap: AgentProcess
    dear: AgentProcess
    token: str
    engine: EngineService

    async def suanli(self, *args: str) -> Any:
        env = {**os.environ, "SUANLI_COORDINATOR": self.coordinator.url, "SUANLI_TOKEN": self.token}
        result = await asyncio.to_thread(
            subprocess.run,
            [SUANLI, "--json", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    async def submit(self, *args: str) -> str:
        job = await self.suanli(
            "job",
            "submit",
            "--image",
            BUSYBOX_IMAGE,
            "--cpus",
            "0.5",
            "--memory",
            "128MiB",
            "--max-duration",
            "10m",
            *args,
        )
        return str(job["id"])

    async def until(self, job_id: str, predicate: Any, timeout_s: float = 45) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            job = await self.suanli("job", "show", job_id)
            if predicate(job):
                return dict(job)
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"{job}\n--- cheap ---\n{self.cheap.log()[-2000:]}\n--- dear ---\n"
                    f"{self.dear.log()[-2000:]}"
                )
            await asyncio.sleep(0.3)

    def receipts(self, lease_id: str) -> list[tuple[int, int]]:
        return self.coordinator.rows(  # type: ignore[return-value]
            "SELECT seq, amount FROM receipts WHERE lease_id = ? ORDER BY seq", [lease_id]
        )


@pytest.fixture
async def market(
    tmp_path: Path, docker_service: EngineService, engine_name: str
) -> AsyncIterator[Market]:
    (tmp_path / "coordinator").mkdir()
    coordinator = CoordinatorProcess(
        tmp_path / "coordinator", database=new_database(engine_name, tmp_path / "coordinator")
    )
    coordinator.start()
    agents = []
    for name, ask, prefix in (("cheap", "4.00", "1"), ("dear", "7.50", "2")):
        agent = AgentProcess(
            tmp_path / name,
            coordinator,
            docker_service.socket,
            [FakeGpu(uuid=f"GPU-{prefix}0000000-0000-4000-8000-00000000000{i}") for i in range(2)],
            ask=ask,
        )
        agent.workdir.mkdir()
        agent.enroll(provider=len(agents) + 1)
        agent.start()
        agents.append(agent)
    market = Market(
        coordinator, agents[0], agents[1], coordinator.add_enterprise(9), docker_service
    )
    for _ in range(100):
        summary = await market.suanli("market")
        if summary["models"] and summary["models"][0]["free"] == 4:
            break
        await asyncio.sleep(0.2)
    try:
        yield market
    finally:
        for agent in agents:
            agent.stop()
        coordinator.stop()
        status, body = docker_service.request("GET", "/v1.41/containers/json?all=true")
        for container in json.loads(body) if status == 200 else []:
            docker_service.request("DELETE", f"/v1.41/containers/{container['Id']}?force=true")


async def test_the_lowest_ask_wins_and_the_bill_matches_time_and_price(market: Market) -> None:
    job_id = await market.submit(
        "--gpus", "2", "--max-price-per-gpu-hour", "6.00", "--", "sh", "-c", "echo working; sleep 3"
    )
    job = await market.until(job_id, lambda j: j["state"] in ("succeeded", "failed"))
    assert job["state"] == "succeeded", job
    assert job["agent_id"] == market.cheap.agent_id
    assert job["price_per_gpu_hour_micro_yuan"] == 6_000_000, (
        "second ask ¥7.50, capped at the bid ¥6"
    )
    job = await market.until(
        job_id,
        lambda j: (
            market.receipts(j["lease_id"])
            and j["charged_micro_yuan"] == market.receipts(j["lease_id"])[-1][1]
        ),
    )
    expected = 2 * (job["ended_at_ms"] - job["started_at_ms"]) * 6_000_000 // 3_600_000
    one_interval = 2 * 1_000 * 6_000_000 // 3_600_000
    assert abs(job["charged_micro_yuan"] - expected) <= one_interval, (
        job["charged_micro_yuan"],
        expected,
    )
    assert job["voucher_micro_yuan"] + job["deferred_micro_yuan"] == job["charged_micro_yuan"]


async def test_a_job_no_agent_can_hold_stays_pending_and_says_why(market: Market) -> None:
    job_id = await market.submit(
        "--gpus", "1", "--min-gpu-memory", "200GiB", "--max-price-per-gpu-hour", "50", "--", "true"
    )
    job = await market.until(job_id, lambda j: j["reason"] == "no_agent_with_enough_gpu_memory")
    assert job["state"] == "pending" and job["agent_id"] is None


@pytest.mark.slow
async def test_an_agent_killed_mid_job_loses_the_lease_and_the_job_moves(market: Market) -> None:
    job_id = await market.submit(
        "--gpus", "2", "--max-price-per-gpu-hour", "10", "--", "sleep", "30"
    )
    first = await market.until(job_id, lambda j: j["state"] == "running")
    assert first["agent_id"] == market.cheap.agent_id
    await asyncio.sleep(2.5)
    market.cheap.stop(kill=True)
    billed_before = market.receipts(first["lease_id"])
    moved = await market.until(
        job_id, lambda j: j["state"] == "running" and j["agent_id"] == market.dear.agent_id
    )
    assert moved["attempts"] == 1 and moved["lease_id"] != first["lease_id"]
    lost = market.receipts(first["lease_id"])
    assert lost and lost[-1][1] <= billed_before[-1][1] + 2 * 2_000 * 10_000_000 // 3_600_000
    first_lease_charge = lost[-1][1]
    await asyncio.sleep(2)
    assert market.receipts(first["lease_id"]) == lost, "nothing more billed on the lost lease"
    # the second lease is still billing: its part of the charge is the cumulative amount of one
    # of its accepted receipts, no older than those read before the charge, none newer than after
    before = market.receipts(moved["lease_id"])
    shown = await market.suanli("job", "show", job_id)
    after = market.receipts(moved["lease_id"])
    second_part = shown["charged_micro_yuan"] - first_lease_charge
    assert second_part in {0} | {amount for _, amount in after}, (second_part, after)
    assert (before[-1][1] if before else 0) <= second_part <= (after[-1][1] if after else 0)
    await market.suanli("job", "cancel", job_id)
    await market.until(job_id, lambda j: j["state"] == "cancelled")
