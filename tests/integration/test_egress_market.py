"""Egress end to end on Docker and on Podman: `suanli job submit --network egress` through a
coordinator to `suanli-agent run` with allow_egress. The job reaches an "internet" host the
test makes (198.18.0.0/15) but not a "LAN" host, the metadata address or a server on this
host; a job on network none reaches nothing."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_harness import AgentProcess, until_offered
from coordinator_harness import FAST_SETTINGS, Api, CoordinatorProcess
from engines import BUSYBOX_IMAGE, EngineService
from fake_nvml.fixture import FakeGpu
from netns import METADATA, PORT, World, world

from agent.egress import NETWORK_NAME

pytestmark = pytest.mark.integration
GPUS = [FakeGpu(uuid="GPU-e9e55000-0000-4000-8000-000000000001")]
TABLE = NETWORK_NAME.replace("-", "_")
PROBE = 'for where in "$@"; do echo "$where:$(echo x | nc -w 2 ${where%:*} ${where#*:} 2>&1)"; done'


@pytest.fixture
async def market(tmp_path: Path, engine_service: EngineService) -> AsyncIterator[tuple[Api, World]]:
    with world() as hosts:
        (tmp_path / "coordinator").mkdir()
        coordinator = CoordinatorProcess(
            tmp_path / "coordinator",
            settings={**FAST_SETTINGS, "heartbeat_timeout_ms": 15_000, "start_deadline_ms": 60_000},
        )
        coordinator.start()
        api = Api(coordinator.url, coordinator.add_enterprise(61))
        agent = AgentProcess(tmp_path / "agent", coordinator, engine_service.socket, GPUS)
        agent.settings |= {
            "allow_egress": True,
            "egress_subnet": f"10.254.{secrets.randbelow(200) + 20}.0/24",
            "egress_dns": [hosts.internet.address],
        }
        agent.workdir.mkdir()
        try:
            agent.enroll()
            agent.start()
            await until_offered(api, agent, len(GPUS))
            yield api, hosts
        finally:
            agent.stop()
            coordinator.stop()
            await api.close()
            for container in engine_service.containers_of(agent.agent_id):
                engine_service.request("DELETE", f"/v1.41/containers/{container['Id']}?force=true")
            for family in ("inet", "bridge"):
                subprocess.run(["nft", "delete", "table", family, TABLE], capture_output=True)
            engine_service.request("DELETE", f"/v1.41/networks/{NETWORK_NAME}")


async def _log_of(api: Api, network: str, *targets: str) -> str:
    status, job = await api.submit(
        image=BUSYBOX_IMAGE,
        command=["sh", "-c", PROBE, "probe", *targets],
        network=network,
        max_price_per_gpu_hour_micro_yuan=10_000_000,
    )
    assert status == 201, job
    ended = await api.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"), 90)
    assert ended["state"] == "succeeded", ended
    _, page = await api.call("GET", f"/v1/jobs/{job['id']}/logs")
    return str(page.get("data", ""))


async def test_an_egress_job_placed_by_the_market_reaches_the_internet_only(
    market: tuple[Api, World],
) -> None:
    api, hosts = market
    internet = f"{hosts.internet.address}:{PORT}"
    forbidden = [
        f"{hosts.lan.address}:{PORT}",
        f"{METADATA}:{PORT}",
        f"{hosts.internet.host_side}:{hosts.host_server_port}",
    ]
    log = await _log_of(api, "egress", internet, *forbidden)
    assert f"{internet}:internet" in log, log
    for where in forbidden:
        line = next(line for line in log.splitlines() if line.startswith(f"{where}:"))
        assert not line.endswith(("internet", "lan", "host")), log
    sealed = await _log_of(api, "none", internet)
    assert f"{internet}:internet" not in sealed, sealed
