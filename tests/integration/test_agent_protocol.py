"""The agent protocol: enrolment, signed requests and their replay protection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from coordinator_harness import CoordinatorProcess, FakeAgent, inventory
from databases import new_database

from agent.coordinator_client import CoordinatorClient
from shared import canonical
from shared.http_client import CoordinatorError
from shared.identity import PrivateKey
from shared.signed_request import sign_request


async def test_enrolment_token_is_one_time(coordinator: CoordinatorProcess, cleanup: list) -> None:
    token = coordinator.add_provider(1, max_hosts=1)
    first, second = (
        FakeAgent(coordinator.url, ["GPU-1"], 1),
        FakeAgent(coordinator.url, ["GPU-2"], 1),
    )
    cleanup += [first, second]
    answer = await first.enrol(token)
    assert answer["agent_id"] == first.agent_id
    with pytest.raises(CoordinatorError, match="used up") as caught:
        await second.enrol(token)
    assert caught.value.status == 401


async def test_unknown_token_and_reenrolment_are_refused(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    agent = FakeAgent(coordinator.url, ["GPU-1"], 1)
    cleanup.append(agent)
    with pytest.raises(CoordinatorError, match="not known"):
        await agent.enrol("sk_enr_not-a-token")
    token = coordinator.add_provider(1, max_hosts=2)
    await agent.enrol(token)
    with pytest.raises(CoordinatorError, match="already enrolled") as caught:
        await agent.enrol(token)
    assert caught.value.status == 409


async def test_enrolment_must_be_signed_by_the_registered_key(
    coordinator: CoordinatorProcess,
) -> None:
    token = coordinator.add_provider(1)
    key, other = PrivateKey.generate(), PrivateKey.generate()
    request = sign_request(
        other,
        "POST",
        "/v1/agent/enroll",
        {"token": token, "hostname": "h"},
        time.time_ns() // 1_000_000,
    )
    client = CoordinatorClient(coordinator.url, key)
    try:
        with pytest.raises(CoordinatorError, match="not signed by the key") as caught:
            await client._post(
                "/v1/agent/enroll",
                canonical.encode({"public_key": key.public.raw, "request": request}),
            )
        assert caught.value.status == 401
    finally:
        await client.close()


async def _enrolled(
    coordinator: CoordinatorProcess,
    cleanup: list,
    uuids: list[str] | None = None,
    ask: int = 5_000_000,
) -> FakeAgent:
    agent = FakeAgent(coordinator.url, uuids or ["GPU-a0", "GPU-a1"], ask)
    cleanup.append(agent)
    await agent.enrol(coordinator.add_provider(len(cleanup)))
    return agent


async def test_unenrolled_key_is_refused(coordinator: CoordinatorProcess, cleanup: list) -> None:
    stranger = FakeAgent(coordinator.url, ["GPU-x"], 1)
    cleanup.append(stranger)
    with pytest.raises(CoordinatorError, match="not enrolled") as caught:
        await stranger.heartbeat()
    assert caught.value.status == 401


async def test_replayed_request_is_refused(coordinator: CoordinatorProcess, cleanup: list) -> None:
    agent = await _enrolled(coordinator, cleanup)
    body = sign_request(
        agent.key,
        "POST",
        "/v1/agent/heartbeat",
        {"ask_per_gpu_hour": 1, "inventory": inventory(["GPU-a0"])},
        time.time_ns() // 1_000_000,
    )
    await agent.client._post("/v1/agent/heartbeat", body)
    with pytest.raises(CoordinatorError, match="replayed") as caught:
        await agent.client._post("/v1/agent/heartbeat", body)
    assert caught.value.status == 401


@pytest.mark.parametrize("skew_ms", [-120_000, 120_000])
async def test_stale_or_future_request_is_refused(
    coordinator: CoordinatorProcess, cleanup: list, skew_ms: int
) -> None:
    agent = await _enrolled(coordinator, cleanup)
    body = sign_request(
        agent.key,
        "POST",
        "/v1/agent/heartbeat",
        {"ask_per_gpu_hour": 1, "inventory": inventory(["GPU-a0"])},
        time.time_ns() // 1_000_000 + skew_ms,
    )
    with pytest.raises(CoordinatorError, match="outside the accepted window"):
        await agent.client._post("/v1/agent/heartbeat", body)


async def test_request_signed_for_another_route_is_refused(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    agent = await _enrolled(coordinator, cleanup)
    body = sign_request(
        agent.key,
        "POST",
        "/v1/agent/leases",
        {"known_version": 0, "wait_ms": 0},
        time.time_ns() // 1_000_000,
    )
    with pytest.raises(CoordinatorError, match="signed for POST /v1/agent/leases"):
        await agent.client._post("/v1/agent/heartbeat", body)


async def test_tampered_request_is_refused(coordinator: CoordinatorProcess, cleanup: list) -> None:
    agent = await _enrolled(coordinator, cleanup)
    body = bytearray(
        sign_request(
            agent.key,
            "POST",
            "/v1/agent/heartbeat",
            {"ask_per_gpu_hour": 1, "inventory": inventory(["GPU-a0"])},
            time.time_ns() // 1_000_000,
        )
    )
    body[10] ^= 0x01
    with pytest.raises(CoordinatorError, match="signature") as caught:
        await agent.client._post("/v1/agent/heartbeat", bytes(body))
    assert caught.value.status == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"ask_per_gpu_hour": -1, "inventory": inventory(["G"])}, "ask_per_gpu_hour"),
        ({"ask_per_gpu_hour": 1, "inventory": {"gpus": "many"}}, "inventory.gpus"),
        ({"ask_per_gpu_hour": 1, "inventory": inventory(["G", "G"])}, "twice"),
        ({"ask_per_gpu_hour": 1, "inventory": inventory(["G"], memory=0)}, "memory_total_bytes"),
        ({"ask_per_gpu_hour": 1, "inventory": inventory(["G" * 200])}, "uuid"),
        ([1, 2, 3], "the body: expected a map with inventory"),
    ],
)
async def test_bad_heartbeats_are_refused_by_field(
    coordinator: CoordinatorProcess, cleanup: list, body: object, message: str
) -> None:
    agent = await _enrolled(coordinator, cleanup)
    with pytest.raises(CoordinatorError, match=message) as caught:
        await agent.client.signed("/v1/agent/heartbeat", body)
    assert caught.value.status == 422


async def test_agent_cannot_touch_another_agents_lease(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    from coordinator_harness import Api

    owner = await _enrolled(coordinator, cleanup, ["GPU-o0"], ask=1_000_000)
    intruder = await _enrolled(coordinator, cleanup, ["GPU-i0"], ask=2_000_000)
    # the admin command first: under load it can outlast the heartbeat timeout
    api = Api(coordinator.url, coordinator.add_enterprise(50))
    await owner.heartbeat()
    cleanup.append(api)
    status, job = await api.submit(max_price_per_gpu_hour_micro_yuan=1_500_000)
    assert status == 201
    lease = await owner.wait_for_lease()
    for call in (
        intruder.client.status(lease["lease_id"], "started"),
        intruder.client.log_chunk(lease["lease_id"], 0, b"forged"),
        intruder.client.status(lease["lease_id"], "exited", exit_code=0),
    ):
        with pytest.raises(CoordinatorError) as caught:
            await call
        assert caught.value.status == 404
    assert (await api.job(job["id"]))["state"] == "leased"


async def test_body_limit_and_content_type(coordinator: CoordinatorProcess, cleanup: list) -> None:
    import io

    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(
            coordinator.url + "/v1/agent/heartbeat",
            data=io.BytesIO(b"\x00" * ((1 << 20) + 1)),
            headers={"Content-Type": "application/msgpack"},
        ) as response:
            assert response.status == 413
            assert "larger than the limit" in canonical.decode(await response.read())["detail"]
        async with session.post(
            coordinator.url + "/v1/agent/heartbeat",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.status == 415
            assert canonical.decode(await response.read())["error"] == "unsupported_media_type"


async def test_log_chunks_are_idempotent_by_offset_and_bounded(
    tmp_path: Path, engine_name: str, cleanup: list
) -> None:
    from coordinator_harness import FAST_SETTINGS, Api

    coordinator = CoordinatorProcess(
        tmp_path,
        settings={**FAST_SETTINGS, "job_log_limit_bytes": 10},
        database=new_database(engine_name, tmp_path),
    ).start()
    try:
        agent = await _enrolled(coordinator, cleanup, ["GPU-l0"], ask=1)
        api = Api(coordinator.url, coordinator.add_enterprise(77))
        await agent.heartbeat()
        cleanup.append(api)
        _, job = await api.submit()
        lease = await agent.wait_for_lease()
        lease_id = lease["lease_id"]
        assert (await agent.client.log_chunk(lease_id, 0, b"hello"))["stored_bytes"] == 5
        assert (await agent.client.log_chunk(lease_id, 0, b"hello"))["stored_bytes"] == 5
        with pytest.raises(CoordinatorError) as caught:
            await agent.client.log_chunk(lease_id, 9, b"gap")
        assert (caught.value.status, caught.value.error) == (409, "log_gap")
        answer = await agent.client.log_chunk(lease_id, 3, b"lo world and more")
        assert answer == {"stored_bytes": 10, "truncated": True}
        status, log = await api.call("GET", f"/v1/jobs/{job['id']}/logs")
        assert (status, log["data"], log["next_offset"]) == (200, "hello worl", 10)
        status, tail = await api.call("GET", f"/v1/jobs/{job['id']}/logs?offset=6")
        assert tail["data"] == "worl"
    finally:
        coordinator.stop()


async def test_a_requeued_jobs_next_lease_adds_to_its_log(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    from coordinator_harness import Api

    api = Api(coordinator.url, coordinator.add_enterprise(78))
    cleanup.append(api)
    first = await _enrolled(coordinator, cleanup, ["GPU-q0"], ask=1_000_000)
    second = await _enrolled(coordinator, cleanup, ["GPU-q1"], ask=2_000_000)
    await first.heartbeat()
    await second.heartbeat()
    first.keep_alive()
    second.keep_alive()
    _, job = await api.submit(max_price_per_gpu_hour_micro_yuan=3_000_000)
    lease = await first.wait_for_lease()
    await first.client.log_chunk(lease["lease_id"], 0, b"pulling on the first host\n")
    # a host fault (not the job's): the job goes back to the market and to the other agent
    await first.client.status(
        lease["lease_id"], "failed", reason_code="gpu_unavailable", reason="GPU fell off the bus"
    )
    moved = await second.wait_for_lease()
    answer = await second.client.log_chunk(moved["lease_id"], 0, b"running on the second\n")
    assert answer == {"stored_bytes": 22, "truncated": False}
    late = await first.client.log_chunk(lease["lease_id"], 26, b"a late line\n")
    assert late["truncated"] is True, "the job moved on: the first lease's log is closed"
    status, page = await api.call("GET", f"/v1/jobs/{job['id']}/logs")
    assert page["data"] == "pulling on the first host\nrunning on the second\n", page
    with pytest.raises(CoordinatorError, match="send from offset 22"):
        await second.client.log_chunk(moved["lease_id"], 40, b"a gap\n")
