"""Attacks on the coordinator by its own users, each through a real coordinator process.

Every test plays one hostile party (a rogue agent, a rogue enterprise, a nosy auditor, a
network replayer) and asserts the attack is refused by a named rule or a 4xx, and that
nothing was charged or grown by it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import databases
import msgpack
import pytest
from coordinator_harness import FAST_SETTINGS, Api, CoordinatorProcess, FakeAgent, inventory
from databases import new_database

from shared import canonical
from shared.http_client import CoordinatorError
from shared.identity import PrivateKey
from shared.signed_request import sign_request

MSGPACK = "application/msgpack"
SECRET = "hunter2-sk-live-0123456789"


def _now() -> int:
    return time.time_ns() // 1_000_000


def _rows(
    coordinator: CoordinatorProcess, sql: str, params: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    return coordinator.rows(sql, params)


def _count(
    coordinator: CoordinatorProcess, table: str, where: str = "1 = 1", params: tuple[Any, ...] = ()
) -> int:
    return int(_rows(coordinator, f"SELECT COUNT(*) FROM {table} WHERE {where}", params)[0][0])


def _money(coordinator: CoordinatorProcess) -> tuple[int, int]:
    return (_count(coordinator, "ledger_postings"), _count(coordinator, "receipts"))


async def _eventually(check: Any, timeout_s: float = 5.0, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout_s} s")
        await asyncio.sleep(0.1)


async def _agent(
    coordinator: CoordinatorProcess,
    cleanup: list,
    uuids: list[str],
    ask: int = 1_000_000,
    provider: int | None = None,
) -> FakeAgent:
    agent = FakeAgent(coordinator.url, uuids, ask)
    cleanup.append(agent)
    await agent.enrol(coordinator.add_provider(provider or 100 + len(cleanup)))
    await agent.heartbeat()
    return agent


async def _enterprise(coordinator: CoordinatorProcess, cleanup: list, n: int) -> Api:
    api = Api(coordinator.url, coordinator.add_enterprise(n))
    cleanup.append(api)
    return api


async def _run(*command: Any, env: dict[str, str], check: bool = True) -> Any:
    """A command line run off the event loop (the coordinator under test shares nothing with it)."""
    import subprocess

    return await asyncio.to_thread(
        subprocess.run,
        [str(c) for c in command],
        capture_output=True,
        text=True,
        env=env,
        check=check,
    )


def _started(tmp_path: Path, engine: str = "sqlite", **settings: Any) -> CoordinatorProcess:
    """A coordinator with these settings; the HTTP attacks that start one themselves run on
    SQLite alone, since what they test (limits, timeouts) lies above the storage."""
    database = new_database(engine, tmp_path)
    return CoordinatorProcess(
        tmp_path, settings={**FAST_SETTINGS, **settings}, database=database
    ).start()


@pytest.fixture
def roomy(tmp_path: Path, engine_name: str) -> Any:
    """A coordinator whose agents stay online without heartbeating for the whole test, on each
    engine."""
    process = _started(
        tmp_path, engine_name, heartbeat_timeout_ms=600_000, start_deadline_ms=600_000
    )
    try:
        yield process
    finally:
        process.stop()


# -- a rogue enterprise: nesting, floods ------------------------------------------------------


@pytest.mark.parametrize("depth", [40, 100_000])
async def test_deeply_nested_json_is_refused_with_400_class_not_500(
    coordinator: CoordinatorProcess, cleanup: list, depth: int
) -> None:
    api = await _enterprise(coordinator, cleanup, 1)
    body = b"[" * depth + b"]" * depth
    status, answer = await api.call(
        "POST", "/v1/jobs", data=body, headers={"Content-Type": "application/json"}
    )
    assert status == 422 and answer["error"] == "too_deep", answer
    assert set(answer) == {"error", "detail"}
    nested: Any = "x"
    for _ in range(depth if depth < 1000 else 50):
        nested = {"a": nested}
    status, answer = await api.submit(env={"A": nested})
    assert status == 422 and answer["error"] == "too_deep", answer
    assert _count(coordinator, "jobs") == 0
    assert "Traceback" not in coordinator.log()


@pytest.mark.parametrize("path", ["/v1/agent/enroll", "/v1/agent/heartbeat"])
async def test_deeply_nested_msgpack_is_refused(coordinator: CoordinatorProcess, path: str) -> None:
    for depth in (17, 5_000, 200_000):
        body = b"\x91" * depth + b"\xc0"
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                coordinator.url + path, data=body, headers={"Content-Type": MSGPACK}
            ) as response,
        ):
            assert 400 <= response.status < 500, await response.read()
            answer = canonical.decode(await response.read())
            assert set(answer) == {"error", "detail"}
    assert _count(coordinator, "agents") == 0
    assert "Traceback" not in coordinator.log()


async def test_a_token_flood_gets_429_with_retry_after_and_spares_others(
    tmp_path: Path, cleanup: list
) -> None:
    coordinator = _started(tmp_path, token_requests_per_s=1, token_request_burst=5)
    try:
        flooder = await _enterprise(coordinator, cleanup, 1)
        bystander = await _enterprise(coordinator, cleanup, 2)
        began, ok, refused = time.monotonic(), 0, None
        for _ in range(200):
            async with flooder.session.get(
                coordinator.url + "/v1/market", headers=flooder._headers()
            ) as response:
                if response.status == 429:
                    refused = (dict(response.headers), await response.json())
                    break
                assert response.status == 200
                ok += 1
        assert refused is not None, "the flood was never refused"
        assert 5 <= ok <= 5 + int(time.monotonic() - began) + 1
        headers, answer = refused
        assert int(headers["Retry-After"]) >= 1
        assert answer["error"] == "rate_limited" and "retry after" in answer["detail"]
        statuses = [(await flooder.submit())[0] for _ in range(3)]
        assert 429 in statuses, statuses
        assert (await bystander.call("GET", "/v1/market"))[0] == 200
        assert _count(coordinator, "jobs") == statuses.count(201)
    finally:
        coordinator.stop()


async def test_an_agent_flood_gets_429_after_its_signature_is_checked(
    tmp_path: Path, cleanup: list
) -> None:
    coordinator = _started(tmp_path, agent_requests_per_s=1, agent_request_burst=5)
    try:
        flooder = await _agent(coordinator, cleanup, ["GPU-f0"])
        bystander = await _agent(coordinator, cleanup, ["GPU-b0"])
        # forged requests in the flooder's name spend nothing of its allowance
        forger = PrivateKey.generate()
        for _ in range(20):
            payload, _key_id, signature = msgpack.unpackb(
                sign_request(
                    forger, "POST", "/v1/agent/leases", {"known_version": -1, "wait_ms": 0}, _now()
                )
            )
            envelope = msgpack.packb(
                [payload, flooder.key.public.key_id, signature], use_bin_type=True
            )
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    coordinator.url + "/v1/agent/leases",
                    data=envelope,
                    headers={"Content-Type": MSGPACK},
                ) as response,
            ):
                assert response.status == 401, await response.read()
        began, ok, refused = time.monotonic(), 0, 0
        for _ in range(30):
            try:
                await flooder.leases()
                ok += 1
            except CoordinatorError as exc:
                assert (exc.status, exc.error) == (429, "rate_limited"), exc
                refused += 1
        assert refused > 0
        assert ok <= 5 + int(time.monotonic() - began) + 1  # the forgeries spent none of it
        await bystander.leases()
    finally:
        coordinator.stop()


# -- a rogue agent: enrolment races, UUID theft and churn, log floods ----------------------------


async def test_concurrent_enrolments_with_one_key_give_one_201_and_409s(
    coordinator: CoordinatorProcess,
) -> None:
    token = coordinator.add_provider(1, max_hosts=20)
    key = PrivateKey.generate()
    path = "/v1/agent/enroll"

    async def enrol(session: aiohttp.ClientSession) -> int:
        request = sign_request(key, "POST", path, {"token": token, "hostname": "racer"}, _now())
        body = canonical.encode({"public_key": key.public.raw, "request": request})
        async with session.post(
            coordinator.url + path, data=body, headers={"Content-Type": MSGPACK}
        ) as response:
            answer = canonical.decode(await response.read())
            if response.status == 409:
                assert answer["error"] == "conflict" and "already enrolled" in answer["detail"]
            return response.status

    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(enrol(session) for _ in range(12)))
    assert sorted(statuses) == [201] + [409] * 11, statuses
    assert _count(coordinator, "agents") == 1
    assert _rows(coordinator, "SELECT uses_left FROM tokens WHERE role = 'enrolment'") == [(19,)]
    assert "IntegrityError" not in coordinator.log()


async def test_uuid_theft_flags_the_thief_and_clears_when_its_claim_goes(
    roomy: CoordinatorProcess, cleanup: list
) -> None:
    victim = await _agent(roomy, cleanup, ["GPU-victim"], ask=2_000_000)
    thief = await _agent(roomy, cleanup, ["GPU-thief-own"], ask=1_000_000)
    thief.uuids = ["GPU-thief-own", "GPU-victim"]
    answer = await thief.heartbeat()
    assert answer["flags"] == [{"gpu_uuid": "GPU-victim", "kind": "uuid_conflict"}]
    for _ in range(5):  # repeating the claim adds no flag row
        await thief.heartbeat()
    assert (await victim.heartbeat())["flags"] == []
    assert _rows(
        roomy, "SELECT agent_id, kind FROM capacity_flags WHERE cleared_at_ms IS NULL"
    ) == [(thief.agent_id, "uuid_conflict")]
    assert _rows(roomy, "SELECT agent_id FROM gpus WHERE uuid = 'GPU-victim'") == [
        (victim.agent_id,)
    ]

    # the victim's GPU is still sold, and to the victim, although the thief asks less
    api = await _enterprise(roomy, cleanup, 3)
    _, first = await api.submit(max_price_per_gpu_hour_micro_yuan=5_000_000)
    _, second = await api.submit(max_price_per_gpu_hour_micro_yuan=5_000_000)
    leases = {
        (await api.wait_for(j["id"], lambda j: j["state"] == "leased"))["agent_id"]
        for j in (first, second)
    }
    assert leases == {victim.agent_id, thief.agent_id}
    shown = [await api.job(j["id"]) for j in (first, second)]
    assert {tuple(j["gpu_uuids"]) for j in shown} == {("GPU-victim",), ("GPU-thief-own",)}

    thief.uuids = ["GPU-thief-own"]
    assert (await thief.heartbeat())["flags"] == []
    assert _count(roomy, "capacity_flags", "cleared_at_ms IS NULL") == 0
    flags = roomy.admin_json("flags", "--all")["flags"]
    assert [(f["kind"], f["cleared_at_ms"] is not None) for f in flags] == [("uuid_conflict", True)]
    assert _money(roomy) == (0, 0)


async def test_operators_list_and_clear_flags_on_the_running_server(
    roomy: CoordinatorProcess, cleanup: list
) -> None:
    agent = await _agent(roomy, cleanup, ["GPU-k0", "GPU-k1"])
    agent.uuids = ["GPU-k0"]
    assert (await agent.heartbeat())["flags"] == [{"gpu_uuid": "GPU-k1", "kind": "gpu_missing"}]
    [flag] = roomy.admin_json("flags")["flags"]
    assert (flag["kind"], flag["gpu_uuid"], flag["agent_id"]) == (
        "gpu_missing",
        "GPU-k1",
        agent.agent_id,
    )
    text = roomy.admin("flags").stdout
    assert "gpu_missing" in text and "GPU-k1" in text
    assert roomy.admin_json("clear-flag", str(flag["id"]))["cleared_at_ms"] is not None

    async def forgotten() -> bool:
        return (await agent.heartbeat())["flags"] == []

    await _eventually(forgotten, what="the cleared flag reaching the server")
    assert roomy.admin_json("flags")["flags"] == []
    assert _rows(roomy, "SELECT uuid FROM gpus ORDER BY uuid") == [("GPU-k0",)]
    again = roomy.admin("clear-flag", str(flag["id"]), check=False)
    assert again.returncode == 1 and "already cleared" in again.stderr
    missing = roomy.admin("clear-flag", "999", check=False)
    assert missing.returncode == 1 and "no flag 999" in missing.stderr


async def test_a_cleared_uuid_conflict_hands_the_gpu_to_its_claimant(
    roomy: CoordinatorProcess, cleanup: list
) -> None:
    # the host really moved: its old agent still names the GPU, the operator says who has it
    old = await _agent(roomy, cleanup, ["GPU-moved"])
    new = await _agent(roomy, cleanup, ["GPU-moved"])
    [flag] = roomy.admin_json("flags")["flags"]
    assert flag["agent_id"] == new.agent_id
    roomy.admin_json("clear-flag", str(flag["id"]))

    async def handed_over() -> bool:
        return (await new.heartbeat())["flags"] == []

    await _eventually(handed_over, what="the claim becoming the holding")
    assert (await old.heartbeat())["flags"] == [{"gpu_uuid": "GPU-moved", "kind": "uuid_conflict"}]
    assert _rows(roomy, "SELECT agent_id FROM gpus WHERE uuid = 'GPU-moved'") == [(new.agent_id,)]


async def test_uuid_churn_is_bounded(roomy: CoordinatorProcess, cleanup: list) -> None:
    agent = await _agent(roomy, cleanup, [f"GPU-c0-{i}" for i in range(8)])
    refused = None
    for round_ in range(1, 40):
        agent.uuids = [f"GPU-c{round_}-{i}" for i in range(8)]
        try:
            await agent.heartbeat()
        except CoordinatorError as exc:
            refused = exc
            break
    assert refused is not None, "fresh UUIDs were accepted without end"
    assert refused.status in (409, 429) and refused.error in ("too_many_gpus", "uuid_churn"), (
        refused
    )
    assert _count(roomy, "gpus") <= 64
    assert _count(roomy, "capacity_flags") <= 64
    # a thief that names and drops a rival's UUID over and over runs out of new names too
    victim = await _agent(roomy, cleanup, ["GPU-rival"])
    thief = await _agent(roomy, cleanup, ["GPU-t0"])
    before = _count(roomy, "capacity_flags")
    with pytest.raises(CoordinatorError) as caught:
        for _ in range(200):
            thief.uuids = ["GPU-t0", "GPU-rival"]
            await thief.heartbeat()
            thief.uuids = ["GPU-t0"]
            await thief.heartbeat()
    assert (caught.value.status, caught.value.error) == (429, "uuid_churn")
    assert _count(roomy, "capacity_flags") - before <= 64
    assert (await victim.heartbeat())["flags"] == []


async def test_a_flood_of_64_fresh_uuids_per_heartbeat_grows_nothing(
    roomy: CoordinatorProcess, cleanup: list
) -> None:
    agent = await _agent(roomy, cleanup, [f"GPU-r0-{i}" for i in range(64)])
    with pytest.raises(CoordinatorError) as caught:
        for round_ in range(1, 50):
            agent.uuids = [f"GPU-r{round_}-{i}" for i in range(64)]
            await agent.heartbeat()
    assert (caught.value.status, caught.value.error) == (409, "too_many_gpus")
    assert _count(roomy, "gpus") == 64
    assert _count(roomy, "capacity_flags") == 0


async def _running_lease(
    coordinator: CoordinatorProcess, cleanup: list, **job: Any
) -> tuple[FakeAgent, Api, dict[str, Any], str]:
    agent = await _agent(coordinator, cleanup, ["GPU-l0"])
    api = await _enterprise(coordinator, cleanup, 7)
    status, submitted = await api.submit(**job)
    assert status == 201, submitted
    lease = await agent.wait_for_lease()
    await agent.client.status(lease["lease_id"], "started")
    return agent, api, lease, str(submitted["id"])


async def test_a_log_flood_of_tiny_chunks_is_coalesced_and_rate_limited(
    roomy: CoordinatorProcess, cleanup: list
) -> None:
    agent, api, lease, job_id = await _running_lease(roomy, cleanup)
    stored = 0
    refused = None
    for _ in range(5_000):
        try:
            stored = (await agent.client.log_chunk(lease["lease_id"], stored, b"x"))["stored_bytes"]
        except CoordinatorError as exc:
            refused = exc
            break
    assert refused is not None and (refused.status, refused.error) == (429, "rate_limited"), refused
    assert stored >= 100
    assert _count(roomy, "job_logs") == 1  # one row, however many chunks
    status, page = await api.call("GET", f"/v1/jobs/{job_id}/logs?offset=10&limit=7")
    assert (status, page["data"], page["next_offset"]) == (200, "x" * 7, 17)


# -- a nosy auditor and the enterprise's secrets ------------------------------------------------


async def test_auditors_see_job_metadata_but_not_env_values_or_logs(
    roomy: CoordinatorProcess, cleanup: list
) -> None:
    agent, api, lease, job_id = await _running_lease(
        roomy, cleanup, env={"PLAIN": "visible-to-owner"}
    )
    await agent.client.log_chunk(lease["lease_id"], 0, b"the model's private output\n")
    auditor = Api(roomy.url, roomy.admin_json("add-auditor", "--name", "Nosy")["token"])
    cleanup.append(auditor)
    status, job = await auditor.call("GET", f"/v1/jobs/{job_id}")
    assert status == 200 and job["spec"]["env"] == {"PLAIN": "<redacted>"}
    assert job["state"] == "running" and job["agent_id"] == agent.agent_id
    status, listing = await auditor.call("GET", "/v1/jobs")
    assert status == 200 and "visible-to-owner" not in json.dumps(listing)
    status, answer = await auditor.call("GET", f"/v1/jobs/{job_id}/logs")
    assert (status, answer["error"]) == (403, "forbidden")
    status, own = await api.call("GET", f"/v1/jobs/{job_id}")
    assert own["spec"]["env"] == {"PLAIN": "visible-to-owner"}


async def test_secret_env_reaches_only_the_winning_agent_and_is_erased_at_the_end(
    roomy: CoordinatorProcess, cleanup: list
) -> None:
    bystander = await _agent(roomy, cleanup, ["GPU-by"], ask=9_000_000)
    agent, api, lease, job_id = await _running_lease(
        roomy, cleanup, secret_env={"API_KEY": SECRET}, max_price_per_gpu_hour_micro_yuan=5_000_000
    )
    assert lease["job"]["env"] == {"API_KEY": SECRET}
    assert await bystander.leases() == []
    status, shown = await api.call("GET", f"/v1/jobs/{job_id}")
    assert shown["spec"]["secret_env"] == {"API_KEY": "<redacted>"}
    assert SECRET not in json.dumps(shown)
    status, listing = await api.call("GET", "/v1/jobs")
    assert SECRET not in json.dumps(listing)
    # the job prints its secret: the log keeps the bytes' places, not the secret
    line = f"connecting with {SECRET}\n".encode()
    await agent.client.log_chunk(lease["lease_id"], 0, line)
    status, page = await api.call("GET", f"/v1/jobs/{job_id}/logs")
    assert SECRET not in page["data"] and page["next_offset"] == len(line)
    assert page["data"] == "connecting with " + "*" * len(SECRET) + "\n"
    # printed in two writes, the secret reaches the coordinator in two chunks: masked still
    half, rest = f"again {SECRET[:6]}".encode(), f"{SECRET[6:]}\n".encode()
    await agent.client.log_chunk(lease["lease_id"], len(line), half)
    await agent.client.log_chunk(lease["lease_id"], len(line) + len(half), rest)
    status, page = await api.call("GET", f"/v1/jobs/{job_id}/logs")
    masked_line = "*" * len(SECRET) + "\n"
    assert page["data"] == "connecting with " + masked_line + "again " + masked_line
    logged = page["next_offset"]
    # a retry with the same key but another secret is a conflict, not the same job
    key = shown["idempotency_key"]
    status, answer = await api.submit(
        secret_env={"API_KEY": "other"},
        idempotency_key=key,
        max_price_per_gpu_hour_micro_yuan=5_000_000,
    )
    assert status == 409, answer
    assert _count(roomy, "job_secrets") == 1

    await agent.client.status(lease["lease_id"], "exited", exit_code=0)
    await api.wait_for(job_id, lambda j: j["state"] == "succeeded")
    assert _count(roomy, "job_secrets") == 0
    # after the end its values are gone, so nothing could be masked: the log takes no more
    late = await agent.client.log_chunk(lease["lease_id"], logged, f"late {SECRET}\n".encode())
    assert (late["stored_bytes"], late["truncated"]) == (logged, True)
    status, page = await api.call("GET", f"/v1/jobs/{job_id}/logs")
    assert page["next_offset"] == logged and SECRET not in page["data"]
    roomy.stop()
    if roomy.engine == "sqlite":  # secure_delete: the deleted row's bytes are gone from the file
        assert SECRET.encode() not in Path(roomy.db).read_bytes()
    assert SECRET not in databases.dump(roomy.db)
    assert SECRET not in roomy.log()
    assert SECRET not in _rows_text(roomy)


def _rows_text(coordinator: CoordinatorProcess) -> str:
    return json.dumps(_rows(coordinator, "SELECT spec FROM jobs"))


async def test_secret_env_in_the_cli_is_sent_apart_and_shown_redacted(
    roomy: CoordinatorProcess, cleanup: list
) -> None:
    from coordinator_harness import BIN, clean_env

    token = roomy.add_enterprise(9)
    env = {**clean_env(), "SUANLI_COORDINATOR": roomy.url, "SUANLI_TOKEN": token}
    submitted = await _run(
        BIN / "suanli",
        "job",
        "submit",
        "--image",
        "busybox:latest",
        "--gpus",
        "1",
        "--max-duration",
        "60s",
        "--max-price-per-gpu-hour",
        "1",
        "--env",
        "PLAIN=1",
        "--secret-env",
        f"TOKEN={SECRET}",
        "--json",
        "--",
        "true",
        env=env,
    )
    job = json.loads(submitted.stdout)
    assert job["spec"]["secret_env"] == {"TOKEN": "<redacted>"} and job["spec"]["env"] == {
        "PLAIN": "1"
    }
    shown = (await _run(BIN / "suanli", "job", "show", job["id"], env=env)).stdout
    assert "TOKEN=<redacted>" in shown and SECRET not in shown
    both = await _run(
        BIN / "suanli",
        "job",
        "submit",
        "--image",
        "busybox:latest",
        "--gpus",
        "1",
        "--max-duration",
        "60s",
        "--max-price-per-gpu-hour",
        "1",
        "--env",
        "A=1",
        "--secret-env",
        "A=2",
        env=env,
        check=False,
    )
    assert both.returncode == 2 and "both" in both.stderr


# -- revocations on the running server ----------------------------------------------------------


async def test_a_revoked_token_stops_working_within_a_second(
    roomy: CoordinatorProcess, cleanup: list
) -> None:
    token = roomy.add_enterprise(5)
    api = Api(roomy.url, token)
    cleanup.append(api)
    assert (await api.call("GET", "/v1/account"))[0] == 200  # now in the server's cache
    revoked = roomy.admin_json("revoke-token", "--token", token)
    assert len(revoked["revoked_token_hashes"]) == 1
    began = time.monotonic()

    async def refused() -> bool:
        return (await api.call("GET", "/v1/account"))[0] == 401

    await _eventually(refused, timeout_s=5, what="the revoked token being refused")
    assert time.monotonic() - began < 5  # a poll is 0.5 s; the rest is this machine's load
    status, _ = await api.submit()
    assert status == 401
    assert _count(roomy, "jobs") == 0
    unknown = roomy.admin("revoke-token", "--token", "sk_ent_nope", check=False)
    assert unknown.returncode == 1 and "no such token" in unknown.stderr


async def test_a_revoked_agent_is_refused_out_of_the_market_and_its_leases_lost(
    roomy: CoordinatorProcess, cleanup: list
) -> None:
    agent, api, lease, job_id = await _running_lease(roomy, cleanup)
    roomy.admin_json("revoke-agent", agent.agent_id)

    async def refused() -> CoordinatorError | None:
        try:
            await agent.heartbeat()
        except CoordinatorError as exc:
            return exc
        return None

    error = await _eventually(refused, timeout_s=5, what="the revoked agent being refused")
    assert (error.status, error.error) == (401, "agent_revoked")
    job = await api.wait_for(job_id, lambda j: j["state"] == "pending")
    assert job["attempts"] == 1 and job["charged_micro_yuan"] == 0

    async def lease_lost() -> bool:  # committed just after the agent is refused
        return _rows(roomy, "SELECT state, end_reason FROM leases") == [("ended", "agent_revoked")]

    await _eventually(lease_lost, what="the revoked agent's lease ending as lost")
    _, market = await api.call("GET", "/v1/market")
    assert market["models"] == [] and market["agents_online"] == 0
    with pytest.raises(CoordinatorError) as caught:
        await agent.client.log_chunk(lease["lease_id"], 0, b"after revocation")
    assert caught.value.status == 401
    # a replacement agent may now hold the GPU the revoked one had
    other = await _agent(roomy, cleanup, ["GPU-l0"])
    assert (await other.heartbeat())["flags"] == []
    assert (await other.wait_for_lease())["job_id"] == job_id
    roomy.restart()
    await agent.client.close()
    with pytest.raises(CoordinatorError) as caught:
        await agent.heartbeat()
    assert caught.value.status == 401
    assert _money(roomy) == (0, 0)


# -- a network replayer and slow clients ----------------------------------------------------------


async def test_a_request_replayed_after_a_restart_is_refused(
    coordinator: CoordinatorProcess, cleanup: list
) -> None:
    agent = await _agent(coordinator, cleanup, ["GPU-p0"])
    body = sign_request(
        agent.key,
        "POST",
        "/v1/agent/heartbeat",
        {"ask_per_gpu_hour": 1, "inventory": inventory(["GPU-p0"])},
        _now(),
    )
    await agent.client._post("/v1/agent/heartbeat", body)
    for kill in (False, True):
        coordinator.stop(kill=kill)
        coordinator.start()
        await agent.client.close()  # its pooled connection was to the old process
        with pytest.raises(CoordinatorError, match="restarted") as caught:
            await agent.client._post("/v1/agent/heartbeat", body)
        assert (caught.value.status, caught.value.error) == (401, "signed_before_restart")
        await agent.heartbeat()  # a fresh request is fine (re-signed while the floor holds)


def test_a_half_sent_request_head_is_disconnected(tmp_path: Path) -> None:
    coordinator = _started(tmp_path, header_timeout_s=1)
    try:
        with socket.create_connection(("127.0.0.1", coordinator.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
            began = time.monotonic()
            assert sock.recv(1024) == b""  # closed by the server, not answered
            assert time.monotonic() - began < 5
    finally:
        coordinator.stop()


def test_a_half_sent_body_is_refused_and_disconnected(tmp_path: Path) -> None:
    coordinator = _started(tmp_path, body_timeout_s=1, header_timeout_s=30)
    try:
        token = coordinator.add_enterprise(1)
        with socket.create_connection(("127.0.0.1", coordinator.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + token.encode() + b'\r\nContent-Length: 500\r\n\r\n{"im'
            )
            began = time.monotonic()
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
                if b"\r\n\r\n" in answer and b"}" in answer.split(b"\r\n\r\n", 1)[1]:
                    break
            assert time.monotonic() - began < 5
            assert answer.startswith(b"HTTP/1.1 400"), answer
            assert b"body_timeout" in answer
        assert _count(coordinator, "jobs") == 0
    finally:
        coordinator.stop()


def test_msgpack_depth_limits_hold_in_the_shared_decoder() -> None:
    from shared.errors import EncodingError

    with pytest.raises(EncodingError, match="deeper"):
        nested: Any = 1
        for _ in range(18):
            nested = [nested]
        canonical.decode(msgpack.packb(nested))


def test_rate_buckets_refill_name_their_wait_and_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from coordinator import limits
    from coordinator.errors import TooManyRequests

    now = [0.0]
    limiter = limits.RateLimiter(2, 4, "this agent", clock=lambda: now[0])
    for _ in range(4):
        limiter.take("a")
    with pytest.raises(TooManyRequests) as caught:
        limiter.take("a")
    assert caught.value.retry_after_s == 1 and caught.value.status == 429
    limiter.take("b")  # another principal's bucket is its own
    now[0] += 0.5
    limiter.take("a")
    monkeypatch.setattr(limits, "MAX_BUCKETS", 10)
    for n in range(100):
        now[0] += 10
        limiter.take(f"p{n}")
    assert len(limiter._buckets) <= 11


# -- key rotation -------------------------------------------------------------------------------


async def test_an_agent_rotates_its_key_and_later_receipts_verify_with_the_new_one(
    roomy: CoordinatorProcess, cleanup: list, tmp_path: Path
) -> None:
    import os

    from coordinator_harness import BIN, clean_env

    from shared.money import usage_amount
    from shared.receipts import GENESIS_PREV, Receipt, seal_receipt

    state = tmp_path / "agent-state"
    token = roomy.add_provider(1)
    await _run(
        BIN / "suanli-agent",
        "enroll",
        "--coordinator",
        roomy.url,
        "--token",
        token,
        "--state-dir",
        state,
        "--hostname",
        "rotating-host",
        env=clean_env(),
    )
    from agent.state import AgentState
    from shared.identity import load_private_key

    old_key = load_private_key(AgentState(state).key_path)
    old = FakeAgent(roomy.url, ["GPU-rot0"], 1_000_000)
    old.key, old.client.key = old_key, old_key
    cleanup.append(old)
    await old.heartbeat()

    # a busy agent may not rotate: its leases are billed under the key that won them
    api = await _enterprise(roomy, cleanup, 4)
    _, busy_job = await api.submit()
    lease = await old.wait_for_lease()
    with pytest.raises(CoordinatorError) as caught:
        await old.client.rotate_key(PrivateKey.generate())
    assert (caught.value.status, caught.value.error) == (409, "agent_busy")
    await old.client.status(lease["lease_id"], "started")
    await old.client.status(lease["lease_id"], "exited", exit_code=0)
    await api.wait_for(busy_job["id"], lambda j: j["state"] == "succeeded")

    rotated = await _run(
        BIN / "suanli-agent", "rotate-key", "--state-dir", state, env=clean_env(), check=False
    )
    assert rotated.returncode == 0, rotated.stderr
    new_key = load_private_key(AgentState(state).key_path)
    assert new_key.public.agent_id != old_key.public.agent_id
    assert oct(os.stat(AgentState(state).key_path).st_mode & 0o777) == "0o600"
    assert (
        json.loads(AgentState(state).enrolment_path.read_text())["agent_id"]
        == new_key.public.agent_id
    )
    with pytest.raises(CoordinatorError) as caught:
        await old.heartbeat()
    assert (caught.value.status, caught.value.error) == (401, "agent_revoked")

    new = FakeAgent(roomy.url, ["GPU-rot0"], 1_000_000)
    new.key, new.client.key = new_key, new_key
    cleanup.append(new)
    assert (await new.heartbeat())["flags"] == []  # the GPU came with the key
    _, market = await api.call("GET", "/v1/market")
    assert market["agents_total"] == 1 and market["models"][0]["gpus"] == 1
    _, job = await api.submit()
    lease = await new.wait_for_lease()
    await new.client.status(lease["lease_id"], "started")
    await asyncio.sleep(0.2)
    gpus = tuple(lease["gpu_uuids"])
    receipt = Receipt(
        lease_id=lease["lease_id"],
        job_id=job["id"],
        agent_id=new.agent_id,
        seq=1,
        prev=GENESIS_PREV,
        issued_at_ms=_now(),
        gpu_uuids=gpus,
        gpu_ms=10,
        energy_mj=10,
        utilization_pct=50,
        peak_memory_bytes=1 << 30,
        price_per_gpu_hour=lease["price_per_gpu_hour"],
        amount=usage_amount(10, lease["price_per_gpu_hour"]),
        final=False,
        exit_code=None,
    )
    answer = await new.client.signed(
        "/v1/agent/receipts", {"receipts": [seal_receipt(receipt, new_key).envelope]}
    )
    assert answer["results"][0]["status"] == "accepted", answer
    logged = _rows(roomy, "SELECT size FROM log_meta WHERE id = 1")[0][0]

    async def audited() -> dict[str, Any] | None:
        audit = await _run(
            BIN / "suanli",
            "audit",
            "verify",
            "--coordinator",
            roomy.url,
            "--json",
            env=clean_env(),
            check=False,
        )
        assert audit.returncode == 0, audit.stdout + audit.stderr
        report = json.loads(audit.stdout)
        # checkpoints are signed every few seconds: wait for one that covers the receipt
        return report if report["size"] >= logged else None

    report = await _eventually(audited, timeout_s=15, what="a checkpoint covering the receipt")
    assert report["agents"] == 2  # the old key's entry, and the new one's
