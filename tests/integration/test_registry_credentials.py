"""Registry credentials and secret env values through a real coordinator: sealed at rest, given
to the winning agent only, shown to nobody, masked in logs, erased when the job ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
from typing import Any

import databases
import pytest
from coordinator_harness import Api, CoordinatorProcess, FakeAgent, seller_and_buyer

from shared.http_client import Unreachable

PASSWORD = "registry-pw-5f0c1e9a7b"
SECRET = "env-secret-77d2c4b1e0"
IMAGE = "registry.example:5000/team/train:1.4"
AUTH = {"username": "team", "password": PASSWORD, "serveraddress": "registry.example:5000"}


async def _lease_after_restart(agent: FakeAgent) -> dict[str, Any]:
    agent.version = -1
    for _ in range(50):
        with contextlib.suppress(Unreachable):
            return await agent.wait_for_lease()
        await asyncio.sleep(0.1)
    raise AssertionError("the restarted coordinator never answered the lease poll")


def _secret_rows(coordinator: CoordinatorProcess) -> list[tuple[Any, ...]]:
    return coordinator.rows("SELECT job_id, name, value FROM job_secrets ORDER BY name")


async def test_credentials_are_sealed_delivered_to_the_winner_only_and_erased_at_the_end(
    unhurried_coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    coordinator = unhurried_coordinator
    agent, api = await seller_and_buyer(coordinator, cleanup, ["GPU-win"], ask=1_000_000)
    bystander = FakeAgent(coordinator.url, ["GPU-by"], 9_000_000)
    cleanup.append(bystander)
    await bystander.enrol(coordinator.add_provider(3))
    await bystander.heartbeat()
    status, job = await api.submit(
        image=IMAGE,
        registry_auth=AUTH,
        secret_env={"HF_TOKEN": SECRET},
        max_price_per_gpu_hour_micro_yuan=5_000_000,
    )
    assert status == 201, job
    lease = await agent.wait_for_lease()
    assert lease["job"]["registry_auth"] == AUTH
    assert lease["job"]["env"] == {"HF_TOKEN": SECRET}
    assert await bystander.leases() == []

    # a restarted coordinator opens them again for the lease not yet started
    coordinator.restart()
    again = await _lease_after_restart(agent)
    assert again["job"]["registry_auth"] == AUTH and again["job"]["env"] == {"HF_TOKEN": SECRET}
    await agent.client.status(lease["lease_id"], "started")
    # once its container started, the credentials are not sent again
    agent.version = -1
    started = await agent.wait_for_lease()
    assert started["state"] == "running" and started["job"]["registry_auth"] is None
    assert started["job"]["env"] == {"HF_TOKEN": SECRET}

    # shown to nobody: the owner and an auditor see only that credentials came
    auditor = Api(coordinator.url, coordinator.admin_json("add-auditor", "--name", "A")["token"])
    cleanup.append(auditor)
    for viewer in (api, auditor):
        for path in (f"/v1/jobs/{job['id']}", "/v1/jobs"):
            status, shown = await viewer.call("GET", path)
            assert status == 200 and PASSWORD not in json.dumps(shown), shown
    view = await api.job(job["id"])
    assert view["spec"]["registry_auth"] is True
    assert (await auditor.job(job["id"]))["spec"]["registry_auth"] is True

    # sealed at rest, beside the log key, in a key file only its owner reads
    rows = _secret_rows(coordinator)
    assert [name for _, name, _ in rows] == ["@registry_auth", "HF_TOKEN"]
    assert all(value.startswith("sealed1:") for _, _, value in rows)
    dumped = databases.dump(coordinator.db)
    assert PASSWORD not in dumped and SECRET not in dumped
    key_file = coordinator.log_key_file.with_suffix(".secrets-key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    # a job that prints its password has it masked in its log
    line = f"login {PASSWORD} {SECRET}\n".encode()
    await agent.client.log_chunk(lease["lease_id"], 0, line)
    status, page = await api.call("GET", f"/v1/jobs/{job['id']}/logs")
    assert PASSWORD not in page["data"] and SECRET not in page["data"]

    await agent.client.status(lease["lease_id"], "exited", exit_code=0)
    ended = await api.wait_for(job["id"], lambda j: j["state"] == "succeeded")
    assert ended["spec"]["registry_auth"] is True
    assert _secret_rows(coordinator) == []
    coordinator.stop()
    dumped = databases.dump(coordinator.db)
    assert PASSWORD not in dumped and SECRET not in dumped
    assert PASSWORD not in coordinator.log() and SECRET not in coordinator.log()


async def test_credentials_for_another_registry_than_the_images_are_refused(
    coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    _, api = await seller_and_buyer(coordinator, cleanup, ["GPU-a"], ask=1_000_000)
    status, answer = await api.submit(
        image=IMAGE, registry_auth={**AUTH, "serveraddress": "attacker.example"}
    )
    assert status == 422, answer
    assert "registry_auth" in answer["detail"] and "registry.example:5000" in answer["detail"]
    assert "attacker.example" in answer["detail"] and PASSWORD not in json.dumps(answer)
    status, answer = await api.submit(image=IMAGE, registry_auth={**AUTH, "password": ""})
    assert status == 422 and "password" in answer["detail"], answer
    # a refused secret is never repeated back (nor logged with the refusal)
    status, answer = await api.submit(
        image=IMAGE, registry_auth={**AUTH, "password": "\0" + PASSWORD}
    )
    assert status == 422 and answer["detail"].startswith("registry_auth.password: expected")
    assert PASSWORD not in json.dumps(answer)
    status, answer = await api.submit(image=IMAGE, secret_env={"HF_TOKEN": SECRET + "\0"})
    assert status == 422 and answer["detail"].startswith("secret_env.HF_TOKEN: expected")
    assert SECRET not in json.dumps(answer)
    status, answer = await api.submit(image=IMAGE, registry_auth={**AUTH, "token": "x"})
    assert status == 422 and "token" in answer["detail"], answer
    # a Docker Hub image takes credentials for docker.io
    status, job = await api.submit(
        image="team/private:1", registry_auth={**AUTH, "serveraddress": "docker.io"}
    )
    assert status == 201, job
    assert coordinator.rows("SELECT COUNT(*) FROM job_secrets")[0][0] == 1
    assert PASSWORD not in coordinator.log() and SECRET not in coordinator.log()


async def test_a_retry_with_other_credentials_is_a_conflict(
    coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    _, api = await seller_and_buyer(coordinator, cleanup, ["GPU-a"], ask=1_000_000)
    fields = {"image": IMAGE, "registry_auth": AUTH, "idempotency_key": "k-1"}
    assert (await api.submit(**fields))[0] == 201
    assert (await api.submit(**fields))[0] == 200
    status, answer = await api.submit(**{**fields, "registry_auth": {**AUTH, "password": "x"}})
    assert (status, answer["error"]) == (409, "idempotency_conflict")
    status, answer = await api.submit(**{**fields, "registry_auth": None})
    assert (status, answer["error"]) == (409, "idempotency_conflict")


async def test_secrets_a_coordinator_left_in_clear_are_sealed_at_the_next_start(
    unhurried_coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    coordinator = unhurried_coordinator
    agent, api = await seller_and_buyer(coordinator, cleanup, ["GPU-old"], ask=1_000_000)
    status, job = await api.submit(secret_env={"HF_TOKEN": SECRET})
    assert status == 201, job
    lease = await agent.wait_for_lease()
    await agent.client.status(lease["lease_id"], "started")
    coordinator.stop()
    # as a coordinator from before sealing wrote it
    databases.write(coordinator.db, "UPDATE job_secrets SET value = ?", [SECRET])
    coordinator.start()
    ((_, _, value),) = _secret_rows(coordinator)
    assert value.startswith("sealed1:") and SECRET not in databases.dump(coordinator.db)
    again = await _lease_after_restart(agent)
    assert again["job"]["env"] == {"HF_TOKEN": SECRET}


async def test_a_sealed_value_moved_to_another_job_does_not_open(
    unhurried_coordinator: CoordinatorProcess, cleanup: list[Any]
) -> None:
    coordinator = unhurried_coordinator
    _, api = await seller_and_buyer(coordinator, cleanup, ["GPU-x"], ask=9_000_000)
    first = (await api.submit(secret_env={"HF_TOKEN": SECRET}))[1]
    second = (await api.submit(secret_env={"HF_TOKEN": "other"}))[1]
    coordinator.stop()
    databases.write(
        coordinator.db,
        "UPDATE job_secrets SET value = (SELECT value FROM job_secrets WHERE job_id = ?) "
        "WHERE job_id = ?",
        [first["id"], second["id"]],
    )
    with pytest.raises(RuntimeError, match="does not open with the key"):
        coordinator.start()
