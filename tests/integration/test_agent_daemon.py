"""The agent daemon end to end: real process, fake NVML, real Docker and Podman, a coordinator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_harness import AgentProcess
from coordinator_harness import FAST_SETTINGS, Api, CoordinatorProcess
from databases import new_database
from engines import BUSYBOX_IMAGE, EngineService
from fake_nvml.fixture import FakeGpu

from agent.spool import Spool

GPUS = [
    FakeGpu(uuid="GPU-0b7f6a52-0000-4000-8000-000000000001", power_mw=300_000),
    FakeGpu(uuid="GPU-0b7f6a52-0000-4000-8000-000000000002", power_mw=300_000),
]

# these tests restart and kill processes on a loaded machine; none of them is about losing an
# agent, so the coordinator waits longer than the harness's 3 s before it calls one lost
UNHURRIED = {**FAST_SETTINGS, "heartbeat_timeout_ms": 15_000}  # restarts, not losses


class Stack:
    def __init__(
        self, coordinator: CoordinatorProcess, agent: AgentProcess, api: Api, engine: EngineService
    ) -> None:
        self.coordinator, self.agent, self.api, self.engine = coordinator, agent, api, engine

    async def submit(self, command: list[str], **fields: Any) -> str:
        status, job = await self.api.submit(
            image=BUSYBOX_IMAGE,
            command=command,
            max_price_per_gpu_hour_micro_yuan=10_000_000,
            **fields,
        )
        assert status == 201, job
        return str(job["id"])

    async def wait_state(
        self, job_id: str, states: set[str], timeout_s: float = 30
    ) -> dict[str, Any]:
        try:
            return await self.api.wait_for(job_id, lambda j: j["state"] in states, timeout_s)
        except AssertionError as timed_out:
            raise AssertionError(
                f"{await self.api.job(job_id)}\n--- agent log ---\n{self.agent.log()[-4000:]}"
            ) from timed_out

    def receipts(self, lease_id: str) -> list[tuple[int, int, int, int]]:
        return self.coordinator.rows(  # type: ignore[return-value]
            "SELECT seq, final, gpu_ms, amount FROM receipts WHERE lease_id = ? ORDER BY seq",
            [lease_id],
        )

    def rejections(self) -> list[tuple[str, str]]:
        return self.coordinator.rows("SELECT rule, detail FROM receipt_rejections")  # type: ignore[return-value]

    def containers(self) -> list[dict[str, Any]]:
        return self.engine.containers_of(self.agent.agent_id)


@pytest.fixture
async def stack(
    tmp_path: Path, engine_service: EngineService, engine_name: str, cleanup: list
) -> AsyncIterator[Stack]:
    """A real agent on a container engine, and a coordinator on each database engine."""
    (tmp_path / "coordinator").mkdir()
    coordinator = CoordinatorProcess(
        tmp_path / "coordinator",
        settings=UNHURRIED,
        database=new_database(engine_name, tmp_path / "coordinator"),
    )
    coordinator.start()
    agent = AgentProcess(tmp_path / "agent", coordinator, engine_service.socket, GPUS)
    agent.workdir.mkdir()
    agent.enroll()
    agent.start()
    api = Api(coordinator.url, coordinator.add_enterprise(5))
    cleanup.append(api)
    stack = Stack(coordinator, agent, api, engine_service)
    await _until_market_has_gpus(api)
    try:
        yield stack
    finally:
        agent.stop()
        coordinator.stop()
        for container in stack.containers():
            engine_service.request("DELETE", f"/v1.41/containers/{container['Id']}?force=true")


async def _until_market_has_gpus(api: Api, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, market = await api.call("GET", "/v1/market")
        if market.get("models") and market["models"][0]["free"] == 2:
            assert market["models"][0]["model"] == "H100 SXM"
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the agent's GPUs never reached the market")


async def test_a_job_runs_in_a_container_and_is_billed_by_signed_receipts(stack: Stack) -> None:
    job_id = await stack.submit(
        ["sh", "-c", "echo hello from the job; echo to stderr >&2; sleep 3"], gpus=2
    )
    job = await stack.wait_state(job_id, {"succeeded", "failed"})
    assert (job["state"], job["exit_code"]) == ("succeeded", 0), job
    receipts = await asyncio.to_thread(lambda: _wait_for_final(stack, job["lease_id"]))
    seqs = [r[0] for r in receipts]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 2
    assert receipts[-1][1] == 1, "the last receipt is final"
    gpu_ms, amount = receipts[-1][2], receipts[-1][3]
    assert 2 * 2_500 <= gpu_ms <= 2 * 8_000, "2 GPUs for about 3 s"
    assert amount == gpu_ms * job["price_per_gpu_hour_micro_yuan"] // 3_600_000
    assert (await stack.api.job(job_id))["charged_micro_yuan"] == amount
    assert stack.rejections() == []
    _, log = await stack.api.call("GET", f"/v1/jobs/{job_id}/logs")
    assert "hello from the job" in log["data"] and "to stderr" in log["data"], stack.agent.log()[
        -3000:
    ]
    # the agent removes the container once its final receipt is sent, a moment after it lands
    deadline = time.monotonic() + 10
    while stack.containers() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert stack.containers() == [], "finished containers are removed"


def _wait_for_receipts(stack: Stack, lease_id: str) -> None:
    deadline = time.monotonic() + 20
    while not stack.receipts(lease_id):
        if time.monotonic() > deadline:
            raise AssertionError(f"no receipt stored for {lease_id}\n{stack.agent.log()[-3000:]}")
        time.sleep(0.2)


def _wait_for_final(stack: Stack, lease_id: str) -> list[tuple[int, int, int, int]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        receipts = stack.receipts(lease_id)
        if receipts and receipts[-1][1]:
            return receipts
        time.sleep(0.2)
    raise AssertionError(
        f"no final receipt: {stack.receipts(lease_id)}\n{stack.agent.log()[-3000:]}"
    )


async def test_cancel_stops_the_container_and_the_billing(stack: Stack) -> None:
    job_id = await stack.submit(["sleep", "300"], gpus=2)
    running = await stack.wait_state(job_id, {"running"})
    await asyncio.sleep(1.5)
    status, _ = await stack.api.call("POST", f"/v1/jobs/{job_id}/cancel")
    assert status == 200
    job = await stack.wait_state(job_id, {"cancelled"}, timeout_s=20)
    receipts = await asyncio.to_thread(lambda: _wait_for_final(stack, running["lease_id"]))
    elapsed_ms = job["ended_at_ms"] - running["started_at_ms"]
    assert receipts[-1][2] <= 2 * (elapsed_ms + 3_000), "billing stopped with the container"
    await asyncio.sleep(1.5)
    assert stack.receipts(running["lease_id"]) == receipts, "no receipts after the final one"
    assert stack.containers() == []


async def test_a_memory_hog_is_killed_and_reported(stack: Stack) -> None:
    job_id = await stack.submit(
        ["sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"], memory_bytes=64 << 20
    )
    job = await stack.wait_state(job_id, {"succeeded", "failed"}, timeout_s=60)
    assert (job["state"], job["exit_code"], job["reason"]) == ("failed", 137, "killed")


async def test_a_missing_image_fails_the_job_clearly(stack: Stack) -> None:
    status, job = await stack.api.submit(
        image="registry.invalid/nobody/nothing:1",
        command=["true"],
        max_price_per_gpu_hour_micro_yuan=10_000_000,
    )
    job = await stack.wait_state(job["id"], {"failed"}, timeout_s=60)
    assert job["reason"] in ("image_not_found", "image_pull_failed")
    assert "registry.invalid" in job["reason_detail"]


async def test_agent_killed_and_restarted_readopts_its_container(stack: Stack) -> None:
    job_id = await stack.submit(["sh", "-c", "echo before; sleep 6; echo after"], gpus=2)
    running = await stack.wait_state(job_id, {"running"})
    await asyncio.sleep(2)
    stack.agent.stop(kill=True)
    assert len(stack.containers()) == 1, "the job keeps running without its agent"
    await asyncio.sleep(1)
    stack.agent.start()
    job = await stack.wait_state(job_id, {"succeeded", "failed"}, timeout_s=40)
    assert job["state"] == "succeeded", job
    assert job["lease_id"] == running["lease_id"], "the same lease, not a requeue"
    receipts = await asyncio.to_thread(lambda: _wait_for_final(stack, running["lease_id"]))
    assert [r[0] for r in receipts] == list(range(1, len(receipts) + 1))
    assert stack.rejections() == [], "the chain continued across the restart"
    assert receipts[-1][2] >= 2 * 5_000, "billed for the whole run, including the agent's downtime"
    _, log = await stack.api.call("GET", f"/v1/jobs/{job_id}/logs")
    assert log["data"].count("before") == 1 and "after" in log["data"], "logs shipped once"


@pytest.mark.slow
async def test_coordinator_outage_does_not_stop_the_job(stack: Stack) -> None:
    job_id = await stack.submit(["sh", "-c", "sleep 8"], gpus=2)
    running = await stack.wait_state(job_id, {"running"})
    stack.coordinator.stop()
    await asyncio.sleep(2)
    assert len(stack.containers()) == 1, stack.agent.log()[-3000:]
    stack.coordinator.start()
    job = await stack.wait_state(job_id, {"succeeded", "failed"}, timeout_s=40)
    assert job["state"] == "succeeded"
    receipts = await asyncio.to_thread(lambda: _wait_for_final(stack, running["lease_id"]))
    assert stack.rejections() == []
    assert receipts[-1][2] >= 2 * 7_000


async def test_spool_holds_every_signed_receipt_until_acknowledged(stack: Stack) -> None:
    job_id = await stack.submit(["sh", "-c", "sleep 2"])
    job = await stack.wait_state(job_id, {"succeeded"})
    await asyncio.to_thread(lambda: _wait_for_final(stack, job["lease_id"]))
    await asyncio.sleep(0.5)
    spool = Spool(stack.agent.state_dir / "spool.db")
    try:
        kept = spool.receipts(job["lease_id"])
    finally:
        spool.close()
    assert kept and all(r.acked_at_ms is not None for r in kept)
    assert [r.seq for r in kept] == [r[0] for r in stack.receipts(job["lease_id"])]


@pytest.mark.slow
async def test_an_unpaid_job_is_stopped_at_the_acceptance_deadline(
    tmp_path: Path, engine_service: EngineService, cleanup: list
) -> None:
    coordinator = CoordinatorProcess(tmp_path / "coordinator", settings=UNHURRIED)
    coordinator.workdir.mkdir()
    coordinator.start()
    agent = AgentProcess(tmp_path / "agent", coordinator, engine_service.socket, GPUS)
    agent.settings["acceptance_deadline_s"] = 3
    agent.workdir.mkdir()
    agent.enroll()
    agent.start()
    api = Api(coordinator.url, coordinator.add_enterprise(5))
    cleanup.append(api)
    stack = Stack(coordinator, agent, api, engine_service)
    try:
        await _until_market_has_gpus(api)
        job_id = await stack.submit(["sleep", "300"])
        job = await stack.wait_state(job_id, {"running"})
        # "running" shows as soon as the start is in memory; a stored receipt proves the start
        # was committed (receipts are refused before it), so the kill cannot undo it
        await asyncio.to_thread(lambda: _wait_for_receipts(stack, job["lease_id"]))
        coordinator.stop(kill=True)
        deadline = time.monotonic() + 20
        while stack.containers() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert stack.containers() == [], "the agent stopped the job nobody was paying for"
        assert "acceptance deadline" in agent.log()
        coordinator.start()
        job = await stack.wait_state(job_id, {"failed"}, timeout_s=30)
        assert job["reason"] == "stopped_by_agent" and "acceptance deadline" in job["reason_detail"]
    finally:
        agent.stop()
        coordinator.stop()
