"""Only the leader relays: a standby answers a shell's upgrade and an agent's channel with the
same not_leader redirect as the rest of the API, and `suanli`'s client given both URLs follows
it to the leader (two coordinators on one PostgreSQL database)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from coordinator_harness import UNHURRIED_SETTINGS, Api, CoordinatorProcess
from databases import new_database
from test_following_the_leader import _until_role

from coordinator.client.api import CoordinatorApi
from coordinator.client.relay_socket import open_session
from shared.http_client import Refused


@pytest.mark.slow
async def test_a_standby_sends_shells_and_channels_to_the_leader(tmp_path: Path) -> None:
    database = new_database("postgresql", tmp_path)
    first, second = (tmp_path / "a", tmp_path / "b")
    first.mkdir(), second.mkdir()
    settings = {**UNHURRIED_SETTINGS, "log_key_file": str(tmp_path / "log.key")}
    leader = CoordinatorProcess(first, settings=settings, database=database).start()
    standby = None
    try:
        await _until_role(leader.url, "leader")
        standby = CoordinatorProcess(second, settings=settings, database=database).start()
        await _until_role(standby.url, "standby")
        token = leader.add_enterprise(41)
        api = Api(leader.url, token)
        status, job = await api.submit(gpus=1)
        await api.close()
        assert status == 201, job
        path = f"/v1/jobs/{job['id']}/exec"
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
        upgrade["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="
        async with aiohttp.ClientSession() as http:
            for where, headers in (
                (path + "?cmd=id", {"Authorization": f"Bearer {token}"}),
                ("/v1/agent/relay", {}),
            ):
                async with http.get(
                    standby.url + where, headers={**upgrade, **headers}, allow_redirects=False
                ) as answer:
                    body = await answer.read()  # JSON to a client, msgpack to an agent
                    assert answer.status == 307 and b"not_leader" in body, body
                    assert answer.headers["Location"] == leader.url + where
        client = CoordinatorApi([standby.url, leader.url], token)
        try:
            with pytest.raises(Refused) as pending:
                await open_session(client, path, {"cmd": ["id"]})
            # the leader's own answer: the job waits for an agent, so there is nothing to enter
            assert pending.value.status == 409 and "is pending" in pending.value.detail
            assert client.url == leader.url
        finally:
            await client.close()
    finally:
        if standby is not None:
            standby.stop()
        leader.stop()
