"""The real agent daemon, given both coordinators' URLs, keeps its job running through the
leader's kill -9: its receipts reach the new leader, each once, and the job is billed what it
signed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from agent_harness import AgentProcess
from coordinator_harness import FAST_SETTINGS, Api, CoordinatorProcess
from databases import new_database
from engines import BUSYBOX_IMAGE, EngineService
from fake_nvml.fixture import FakeGpu
from test_takeover import _until_role

GPU = FakeGpu(uuid="GPU-7a6b5c4d-0000-4000-8000-000000000001", power_mw=300_000)
SETTINGS = {**FAST_SETTINGS, "heartbeat_timeout_ms": 15_000, "start_deadline_ms": 15_000}


@pytest.mark.slow
async def test_a_job_runs_on_through_a_takeover_and_is_billed_once(
    tmp_path: Path, docker_service: EngineService, cleanup: list
) -> None:
    database = new_database("postgresql", tmp_path)
    settings = {**SETTINGS, "log_key_file": str(tmp_path / "log.key")}
    pair = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        pair.append(CoordinatorProcess(tmp_path / name, settings=dict(settings), database=database))
    leader, standby = pair
    leader.start()
    await _until_role(leader.url, "leader")
    standby.start()
    await _until_role(standby.url, "standby")
    (tmp_path / "agent").mkdir()
    agent = AgentProcess(tmp_path / "agent", leader, docker_service.socket, [GPU])
    agent.settings["coordinator_urls"] = [leader.url, standby.url]
    try:
        agent.enroll()
        agent.start()
        api = Api(leader.url, leader.add_enterprise(5))
        cleanup.append(api)
        deadline = time.monotonic() + 20
        while (await api.call("GET", "/v1/market"))[1].get("agents_online") != 1:
            assert time.monotonic() < deadline, agent.log()[-3000:]
            await asyncio.sleep(0.2)
        status, job = await api.submit(
            image=BUSYBOX_IMAGE,
            command=["sh", "-c", "sleep 8"],
            max_price_per_gpu_hour_micro_yuan=10_000_000,
        )
        assert status == 201, job
        await api.wait_for(job["id"], lambda j: j["state"] == "running", timeout_s=30)
        await asyncio.sleep(2)  # a few receipts reach the first leader
        killed_at_ms = time.time_ns() // 1_000_000
        leader.stop(kill=True)
        await _until_role(standby.url, "leader")
        on_new = Api(standby.url, api.token)
        cleanup.append(on_new)
        try:
            done = await on_new.wait_for(
                job["id"], lambda j: j["state"] in ("succeeded", "failed", "lost"), 60
            )
        except AssertionError as timed_out:
            raise AssertionError(agent.log()[-4000:]) from timed_out
        assert (done["state"], done["attempts"]) == ("succeeded", 0), done
        deadline = time.monotonic() + 30
        while not standby.rows("SELECT 1 FROM receipts WHERE final = 1"):
            assert time.monotonic() < deadline, agent.log()[-3000:]
            await asyncio.sleep(0.2)
        receipts = standby.rows("SELECT seq, amount FROM receipts ORDER BY seq")
        assert [seq for seq, _ in receipts] == list(range(1, len(receipts) + 1))
        done = await on_new.job(job["id"])
        assert done["charged_micro_yuan"] == receipts[-1][1] > 0
        assert standby.rows("SELECT COUNT(*) FROM receipt_rejections") == [(0,)]
        accepted = [at for (at,) in standby.rows("SELECT accepted_at_ms FROM receipts")]
        assert min(accepted) < killed_at_ms < max(accepted), "receipts went to both leaders"
    finally:
        agent.stop()
        standby.stop()
        leader.stop()
    check = standby.admin("check-ledger", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
