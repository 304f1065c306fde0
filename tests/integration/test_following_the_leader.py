"""The clients given every coordinator's URL follow the leader through a real takeover: two
coordinators on one PostgreSQL database, the `suanli` API client and an agent's client each
given both URLs with the standby first, the leader killed with SIGKILL; the same client
objects carry on with the new leader, each call bounded, none sent twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from coordinator_harness import UNHURRIED_SETTINGS, CoordinatorProcess, FakeAgent, inventory
from databases import new_database

from agent.coordinator_client import CoordinatorClient
from coordinator.client.api import CoordinatorApi
from shared.http_client import CoordinatorError

PRICE = 36_000_000  # µ¥ per GPU-hour


async def _role(url: str) -> str | None:
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/healthz", timeout=aiohttp.ClientTimeout(2)) as answer:
                return str((await answer.json())["role"])
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
        return None


async def _until_role(url: str, role: str) -> None:
    deadline = time.monotonic() + 30
    while await _role(url) != role:
        assert time.monotonic() < deadline, f"{url} never became the {role}"
        await asyncio.sleep(0.05)


async def _until_served(call: Any) -> tuple[Any, int]:
    """The first answer of repeated calls (each one bounded by the client), and how many
    calls failed before it."""
    failed = 0
    deadline = time.monotonic() + 60
    while True:
        try:
            return await call(), failed
        except CoordinatorError:
            failed += 1
            assert time.monotonic() < deadline, "no coordinator took over"
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_clients_given_both_urls_follow_the_leader_through_a_kill(tmp_path: Path) -> None:
    database = new_database("postgresql", tmp_path)
    key = str(tmp_path / "log.key")
    first, second = (tmp_path / "a", tmp_path / "b")
    first.mkdir(), second.mkdir()
    settings = {**UNHURRIED_SETTINGS, "log_key_file": key}
    leader = CoordinatorProcess(first, settings=settings, database=database).start()
    await _until_role(leader.url, "leader")
    standby = CoordinatorProcess(second, settings=settings, database=database).start()
    await _until_role(standby.url, "standby")
    urls = [standby.url, leader.url]  # the standby first: the clients must find the leader
    things: list[Any] = []
    try:
        agent = FakeAgent(leader.url, ["GPU-f0"], PRICE)
        things.append(agent)
        await agent.enrol(leader.add_provider(1))
        following = CoordinatorClient(urls, agent.key)
        api = CoordinatorApi(urls, leader.add_enterprise(2))
        things += [following, api]

        beat = await following.heartbeat(PRICE, inventory(["GPU-f0"]))
        assert "heartbeat_interval_ms" in beat and following.url == leader.url
        job = await api.submit_job(
            {
                "image": "busybox:latest",
                "command": ["true"],
                "gpus": 1,
                "max_duration_s": 600,
                "max_price_per_gpu_hour_micro_yuan": PRICE,
            }
        )
        assert api.url == leader.url

        leader.stop(kill=True)
        killed = time.monotonic()
        _, heartbeats_failed = await _until_served(
            lambda: following.heartbeat(PRICE, inventory(["GPU-f0"]))
        )
        followed_s = time.monotonic() - killed
        shown, _ = await _until_served(lambda: api.job(job["id"]))
        cancelled, _ = await _until_served(lambda: api.cancel_job(job["id"]))
        await _until_role(standby.url, "leader")
    finally:
        for thing in things:
            await thing.close()
        leader.stop(kill=True)
        standby.stop()
    assert following.url == standby.url and api.url == standby.url
    assert shown["id"] == cancelled["id"] == job["id"]  # the cancel reached the new leader
    print(
        f"\nthe agent's heartbeat reached the new leader {followed_s:.2f} s after the kill, "
        f"after {heartbeats_failed} failed calls"
    )
