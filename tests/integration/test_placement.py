"""Egress and scratch placement through a real coordinator: jobs ask for them, agents' signed
heartbeats say what they allow and have free, the auction respects both, pending jobs say
why, the lease carries them, and `suanli audit verify` replays the rounds that decided."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from coordinator_harness import GIB, Api, CoordinatorProcess, FakeAgent, inventory

SUANLI = Path(sys.executable).parent / "suanli"


class HostAgent(FakeAgent):
    """A fake agent whose heartbeats report egress and free scratch as it claims."""

    def __init__(self, url: str, uuids: list[str], ask: int, **host: Any) -> None:
        super().__init__(url, uuids, ask)
        self.host = host
        self.beating: asyncio.Task[None] | None = None

    def report(self) -> dict[str, Any]:
        body = inventory(self.uuids)
        body["host"].update(self.host)
        return body

    async def heartbeat(self) -> dict[str, Any]:
        return await self.client.heartbeat(self.ask, self.report())

    def beat(self) -> None:
        async def forever() -> None:
            while True:
                await asyncio.sleep(0.3)
                with contextlib.suppress(Exception):
                    await self.heartbeat()

        self.beating = asyncio.create_task(forever())

    async def close(self) -> None:
        if self.beating is not None:
            self.beating.cancel()
        await super().close()


@pytest.fixture
async def agents(coordinator: CoordinatorProcess) -> AsyncIterator[list[HostAgent]]:
    made: list[HostAgent] = []
    yield made
    for agent in made:
        await agent.close()


async def _agent(
    coordinator: CoordinatorProcess, made: list[HostAgent], uuids: list[str], ask: int, **host: Any
) -> HostAgent:
    agent = HostAgent(coordinator.url, uuids, ask, **host)
    made.append(agent)
    await agent.enrol(coordinator.add_provider(len(made)))
    await agent.heartbeat()
    agent.beat()
    return agent


@pytest.fixture
async def api(coordinator: CoordinatorProcess) -> AsyncIterator[Api]:
    client = Api(coordinator.url, coordinator.add_enterprise(31))
    yield client
    await client.close()


async def test_an_egress_job_goes_only_where_egress_is_allowed(
    coordinator: CoordinatorProcess, agents: list[HostAgent], api: Api
) -> None:
    closed = await _agent(coordinator, agents, ["GPU-n0", "GPU-n1"], 1_000_000)
    _, job = await api.submit(network="egress")
    shown = await api.wait_for(job["id"], lambda j: j["reason"] == "no_agent_allows_egress")
    assert shown["state"] == "pending"
    assert shown["reason_detail"].startswith("no agent allows egress")
    assert shown["spec"]["network"] == "egress"

    # a dearer agent that allows egress gets it; the cheaper one never does
    open_agent = await _agent(coordinator, agents, ["GPU-e0"], 3_000_000, egress_allowed=True)
    lease = await open_agent.wait_for_lease(timeout_s=15)
    assert (lease["job_id"], lease["job"]["network"]) == (job["id"], "egress")
    _, plain = await api.submit()
    lease = await closed.wait_for_lease()
    assert (lease["job_id"], lease["job"]["network"]) == (plain["id"], "none")


async def test_scratch_is_placed_by_what_is_free_less_what_leases_hold(
    coordinator: CoordinatorProcess, agents: list[HostAgent], api: Api
) -> None:
    await _agent(coordinator, agents, ["GPU-x0", "GPU-x1"], 1_000_000)  # no scratch_dir
    _, first = await api.submit(scratch_bytes=64 * GIB)
    shown = await api.wait_for(first["id"], lambda j: j["reason"] == "no_agent_with_enough_scratch")
    assert "no agent has 64 GiB of free scratch" in shown["reason_detail"]

    disk = await _agent(
        coordinator, agents, ["GPU-s0", "GPU-s1", "GPU-s2"], 2_000_000, scratch_free_bytes=100 * GIB
    )
    lease = await disk.wait_for_lease(timeout_s=15)
    assert (lease["job_id"], lease["job"]["scratch_bytes"]) == (first["id"], 64 * GIB)
    # two GPUs are still free there, but only 36 GiB of its scratch
    _, second = await api.submit(scratch_bytes=64 * GIB)
    shown = await api.wait_for(
        second["id"], lambda j: j["reason"] == "no_agent_with_enough_scratch"
    )
    assert shown["state"] == "pending"
    _, small = await api.submit(scratch_bytes=32 * GIB)
    await api.wait_for(small["id"], lambda j: j["state"] == "leased")
    assert (await api.job(small["id"]))["agent_id"] == disk.agent_id

    # the first lease ends: its scratch is free again and the waiting job is placed
    await disk.client.status(lease["lease_id"], "started")
    await disk.client.status(lease["lease_id"], "exited", exit_code=0)
    await api.wait_for(second["id"], lambda j: j["state"] == "leased", timeout_s=15)

    auditor = coordinator.admin_json("add-auditor", "--name", "Placement bureau")["token"]
    audited = await asyncio.to_thread(_audit, coordinator, auditor)
    assert audited.returncode == 0, audited.stdout + audited.stderr
    report = json.loads(audited.stdout)
    assert report.get("discrepancies", []) == []
    # rounds for: no scratch anywhere, the first lease, the second waiting, the small job,
    # and the second placed
    assert report["auctions_replayed"] >= 5


def _audit(coordinator: CoordinatorProcess, token: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUANLI_")}
    command = [SUANLI, "audit", "verify", "--coordinator", coordinator.url, "--token", token]
    return subprocess.run(
        [*command, "--json"], capture_output=True, text=True, env=env, check=False, timeout=120
    )


async def test_a_rogue_agent_claiming_scratch_it_lacks_only_delays_the_job(
    coordinator: CoordinatorProcess, agents: list[HostAgent], api: Api
) -> None:
    """Attack: an agent heartbeats 2^62 bytes of free scratch at the lowest ask. It wins, then
    cannot make the volume: the job goes back to the market without it, and the honest agent
    runs it."""
    rogue = await _agent(coordinator, agents, ["GPU-r0"], 100_000, scratch_free_bytes=1 << 62)
    honest = await _agent(coordinator, agents, ["GPU-h0"], 2_000_000, scratch_free_bytes=GIB << 10)
    _, job = await api.submit(scratch_bytes=512 * GIB)
    lease = await rogue.wait_for_lease()
    await rogue.client.status(
        lease["lease_id"],
        "failed",
        reason_code="scratch_unavailable",
        reason="could not make a scratch volume",
    )
    moved = await honest.wait_for_lease(timeout_s=15)
    assert moved["job_id"] == job["id"]
    shown = await api.job(job["id"])
    assert shown["attempts"] == 1 and shown["agent_id"] == honest.agent_id


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"scratch_bytes": 1 << 50}, "scratch_bytes"),  # a rogue enterprise's 1 PiB
        ({"scratch_bytes": 10}, "scratch_bytes"),
        ({"scratch_bytes": -1}, "scratch_bytes"),
        ({"network": "bridge"}, "network"),
        ({"network": "host"}, "network"),
    ],
)
async def test_bad_scratch_and_network_are_refused_naming_the_field(
    coordinator: CoordinatorProcess, api: Api, fields: dict[str, Any], named: str
) -> None:
    status, answer = await api.submit(**fields)
    assert status == 422, answer
    assert named in answer["detail"]
