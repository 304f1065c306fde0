"""Jobs through a real coordinator: auction, lease, status, cancel, deadlines, lost agents."""

from __future__ import annotations

import pytest
from coordinator_harness import GIB, Api, CoordinatorProcess, FakeAgent


async def _agent(
    coordinator: CoordinatorProcess, cleanup: list, uuids: list[str], ask: int, **gpu: object
) -> FakeAgent:
    agent = FakeAgent(coordinator.url, uuids, ask, **gpu)
    cleanup.append(agent)
    await agent.enrol(coordinator.add_provider(len(cleanup)))
    await agent.heartbeat()
    agent.keep_alive()
    return agent


async def _api(coordinator: CoordinatorProcess, cleanup: list, n: int = 100) -> Api:
    api = Api(coordinator.url, coordinator.add_enterprise(n))
    cleanup.append(api)
    return api


async def test_lowest_ask_wins_and_pays_the_second_lowest(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    cheap = await _agent(coordinator, cleanup, ["GPU-c0", "GPU-c1"], 4_000_000)
    middle = await _agent(coordinator, cleanup, ["GPU-m0", "GPU-m1"], 6_000_000)
    await _agent(coordinator, cleanup, ["GPU-e0", "GPU-e1"], 9_000_000)
    api = await _api(coordinator, cleanup)
    _, job = await api.submit(gpus=2, max_price_per_gpu_hour_micro_yuan=8_000_000)
    lease = await cheap.wait_for_lease()
    assert lease["job_id"] == job["id"]
    assert lease["price_per_gpu_hour"] == 6_000_000
    assert sorted(lease["gpu_uuids"]) == ["GPU-c0", "GPU-c1"]
    assert lease["job"]["image"] == "busybox:latest"
    shown = await api.job(job["id"])
    assert (shown["state"], shown["agent_id"], shown["price_per_gpu_hour_micro_yuan"]) == (
        "leased",
        cheap.agent_id,
        6_000_000,
    )
    assert await middle.leases() == []

    # the cheap agent is now full; the next job goes to the middle ask, priced at the next ask
    # capped at the job's maximum
    _, second = await api.submit(gpus=2, max_price_per_gpu_hour_micro_yuan=7_000_000)
    lease = await middle.wait_for_lease()
    assert (lease["job_id"], lease["price_per_gpu_hour"]) == (second["id"], 7_000_000)


async def test_a_single_eligible_offer_is_paid_the_max_price(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    agent = await _agent(coordinator, cleanup, ["GPU-s0"], 3_000_000)
    await _agent(coordinator, cleanup, ["GPU-t0"], 20_000_000)
    api = await _api(coordinator, cleanup)
    await api.submit(max_price_per_gpu_hour_micro_yuan=5_000_000)
    assert (await agent.wait_for_lease())["price_per_gpu_hour"] == 5_000_000


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"min_gpu_memory_bytes": 200 * GIB}, "no_agent_with_enough_gpu_memory"),
        ({"gpus": 4}, "no_agent_with_enough_gpus"),
        ({"gpu_models": ["H200"]}, "no_agent_with_that_model"),
        ({"max_price_per_gpu_hour_micro_yuan": 1_000}, "no_agent_at_or_below_max_price"),
    ],
)
async def test_pending_jobs_say_why(
    coordinator: CoordinatorProcess, cleanup: list, fields: dict, reason: str
) -> None:
    agent = await _agent(coordinator, cleanup, ["GPU-p0", "GPU-p1"], 2_000_000)
    api = await _api(coordinator, cleanup)
    _, job = await api.submit(**fields)
    shown = await api.wait_for(job["id"], lambda j: j["reason"] == reason)
    assert shown["state"] == "pending" and shown["reason_detail"]
    assert await agent.leases() == []


async def test_model_filter_accepts_a_family_name(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    await _agent(coordinator, cleanup, ["GPU-a0"], 1_000_000, name="NVIDIA A100-SXM4-80GB")
    h100 = await _agent(coordinator, cleanup, ["GPU-h0"], 5_000_000)
    api = await _api(coordinator, cleanup)
    _, job = await api.submit(gpu_models=["h100"])
    assert (await h100.wait_for_lease())["job_id"] == job["id"]
    assert (await api.job(job["id"]))["spec"]["gpu_models"] == ["H100 NVL", "H100 PCIe", "H100 SXM"]


async def test_run_to_success_and_to_failure(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    agent = await _agent(coordinator, cleanup, ["GPU-r0", "GPU-r1"], 1_000_000)
    api = await _api(coordinator, cleanup)
    _, ok_job = await api.submit()
    _, bad_job = await api.submit()
    leases = {}
    while len(leases) < 2:
        for lease in await agent.leases(wait_ms=1000):
            leases[lease["job_id"]] = lease
    await agent.client.status(leases[ok_job["id"]]["lease_id"], "started")
    running = await api.job(ok_job["id"])
    assert running["state"] == "running" and running["started_at_ms"]
    await agent.client.status(leases[ok_job["id"]]["lease_id"], "exited", exit_code=0)
    await agent.client.status(leases[bad_job["id"]]["lease_id"], "started")
    await agent.client.status(leases[bad_job["id"]]["lease_id"], "exited", exit_code=3)
    done = await api.job(ok_job["id"])
    assert (done["state"], done["exit_code"], done["reason"]) == ("succeeded", 0, None)
    failed = await api.job(bad_job["id"])
    assert (failed["state"], failed["exit_code"], failed["reason"]) == ("failed", 3, "nonzero_exit")
    assert await agent.leases() == [], "ended leases leave the agent's list"


async def test_cancel_reaches_the_agent_and_ends_the_job(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    agent = await _agent(coordinator, cleanup, ["GPU-x0"], 1_000_000)
    api = await _api(coordinator, cleanup)
    _, job = await api.submit()
    lease = await agent.wait_for_lease()
    await agent.client.status(lease["lease_id"], "started")
    status, shown = await api.call("POST", f"/v1/jobs/{job['id']}/cancel")
    assert status == 200 and shown["cancel_requested"]
    updated = await agent.leases(wait_ms=2000)
    assert [(lease["desired"], lease["stop_reason"]) for lease in updated] == [
        ("stop", "cancelled")
    ]
    await agent.client.status(lease["lease_id"], "exited", exit_code=143)
    assert (await api.job(job["id"]))["state"] == "cancelled"


async def test_cancel_pending_job_at_once(coordinator: CoordinatorProcess, cleanup: list) -> None:
    api = await _api(coordinator, cleanup)
    _, job = await api.submit()
    status, shown = await api.call("POST", f"/v1/jobs/{job['id']}/cancel")
    assert (status, shown["state"]) == (200, "cancelled")


async def test_failed_start_by_job_fault_fails_the_job(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    agent = await _agent(coordinator, cleanup, ["GPU-f0"], 1_000_000)
    api = await _api(coordinator, cleanup)
    _, job = await api.submit(image="no/such-image:1")
    lease = await agent.wait_for_lease()
    await agent.client.status(
        lease["lease_id"],
        "failed",
        reason_code="image_not_found",
        reason="image no/such-image:1 was not found",
    )
    shown = await api.job(job["id"])
    assert (shown["state"], shown["reason"]) == ("failed", "image_not_found")


async def test_missed_start_deadline_requeues_elsewhere(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    slow = await _agent(coordinator, cleanup, ["GPU-slow"], 1_000_000)
    other = await _agent(coordinator, cleanup, ["GPU-other"], 2_000_000)
    api = await _api(coordinator, cleanup)
    _, job = await api.submit()
    first = await slow.wait_for_lease()
    second = await other.wait_for_lease(timeout_s=15)
    assert second["job_id"] == job["id"] and second["lease_id"] != first["lease_id"]
    shown = await api.job(job["id"])
    assert shown["attempts"] == 1 and shown["agent_id"] == other.agent_id
    assert await slow.leases() == []


async def test_silent_agent_loses_its_lease_and_the_job_moves(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    doomed = await _agent(coordinator, cleanup, ["GPU-d0"], 1_000_000)
    backup = await _agent(coordinator, cleanup, ["GPU-b0"], 2_000_000)
    api = await _api(coordinator, cleanup)
    _, job = await api.submit()
    lease = await doomed.wait_for_lease()
    await doomed.client.status(lease["lease_id"], "started")
    await doomed.stop_heartbeats()
    moved = await backup.wait_for_lease(timeout_s=15)
    assert moved["job_id"] == job["id"]
    shown = await api.job(job["id"])
    assert shown["attempts"] == 1 and shown["state"] == "leased"


async def test_capacity_conflicts_flag_the_newcomers_claim_and_withdraw_it(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    first = await _agent(coordinator, cleanup, ["GPU-shared", "GPU-f1"], 1_000_000)
    second = FakeAgent(coordinator.url, ["GPU-shared"], 1_000_000)
    cleanup.append(second)
    await second.enrol(coordinator.add_provider(99))
    answer = await second.heartbeat()
    assert answer["flags"] == [{"gpu_uuid": "GPU-shared", "kind": "uuid_conflict"}]
    answer = await first.heartbeat()
    assert answer["flags"] == []  # the holder keeps its GPU: naming a UUID takes nothing

    first.gpu = {"memory": 40 * GIB}
    answer = await first.heartbeat()
    assert {"gpu_uuid": "GPU-f1", "kind": "memory_changed"} in answer["flags"]
    assert {"gpu_uuid": "GPU-shared", "kind": "memory_changed"} in answer["flags"]

    api = await _api(coordinator, cleanup)
    _, market = await api.call("GET", "/v1/market")
    row = market["models"][0]
    assert (row["gpus"], row["free"], row["unavailable"]) == (2, 0, 2)
    _, job = await api.submit()
    shown = await api.wait_for(job["id"], lambda j: j["reason"] == "no_agent_with_enough_gpus")
    assert shown["state"] == "pending"


async def test_vanished_gpu_is_flagged_until_it_returns(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    agent = await _agent(coordinator, cleanup, ["GPU-v0", "GPU-v1"], 1_000_000)
    await agent.stop_heartbeats()
    agent.uuids = ["GPU-v0"]
    answer = await agent.heartbeat()
    assert answer["flags"] == [{"gpu_uuid": "GPU-v1", "kind": "gpu_missing"}]
    agent.uuids = ["GPU-v0", "GPU-v1"]
    assert (await agent.heartbeat())["flags"] == []


async def test_unhealthy_gpus_are_not_offered(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    agent = await _agent(coordinator, cleanup, ["GPU-u0"], 1_000_000, healthy=False)
    api = await _api(coordinator, cleanup)
    _, job = await api.submit()
    await api.wait_for(job["id"], lambda j: j["reason"] == "no_agent_with_enough_gpus")
    agent.gpu = {}
    assert (await agent.wait_for_lease())["job_id"] == job["id"]


async def test_restart_keeps_accounts_jobs_and_leases(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    agent = await _agent(coordinator, cleanup, ["GPU-k0", "GPU-k1"], 1_000_000)
    api = await _api(coordinator, cleanup)
    _, leased = await api.submit()
    lease = await agent.wait_for_lease()
    _, waiting = await api.submit(gpus=8)
    await api.wait_for(waiting["id"], lambda j: j["reason"] == "no_agent_with_enough_gpus")
    coordinator.restart()
    assert (await api.job(leased["id"]))["state"] == "leased"
    assert (await api.job(waiting["id"]))["reason"] == "no_agent_with_enough_gpus"
    agent.version = -1
    assert [offered["lease_id"] for offered in await agent.leases()] == [lease["lease_id"]]
    await agent.client.status(lease["lease_id"], "started")
    await agent.client.status(lease["lease_id"], "exited", exit_code=0)
    assert (await api.job(leased["id"]))["state"] == "succeeded"
    _, market = await api.call("GET", "/v1/market")
    assert market["models"][0]["gpus"] == 2
