"""A rogue enterprise quoting to read a sealed ask the market view does not show: it singles
one agent out by the job's needs (the only one with two free GPUs) and bisects its max price
on "would run now". It learns the ask only to two significant figures (coordinator.jobs.quote),
and a suspended enterprise learns nothing of the auction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from coordinator_harness import UNHURRIED_SETTINGS, Api, CoordinatorProcess, FakeAgent
from databases import new_database

from coordinator.jobs.quote import rounded_up

TARGET = 4_123_456
OTHERS = [1_000_000, 2_000_000, 3_000_000, 5_000_000, 6_000_000, 7_000_000, 9_000_000]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    workdir = tmp_path_factory.mktemp("quote-attacks")
    settings = {**UNHURRIED_SETTINGS, "quote_requests_per_minute": 1, "quote_request_burst": 200}
    process = CoordinatorProcess(
        workdir, settings=settings, database=new_database("sqlite", workdir)
    ).start()
    try:
        yield process
    finally:
        process.stop()


async def test_bisecting_a_lone_agents_ask_finds_only_its_two_figure_ceiling(
    server: CoordinatorProcess, cleanup: list[Any]
) -> None:
    api = Api(server.url, server.add_enterprise(77))
    cleanup.append(api)
    for i, ask in enumerate([TARGET, *OTHERS]):
        uuids = [f"GPU-q{i}-{k}" for k in range(2 if ask == TARGET else 1)]
        agent = FakeAgent(server.url, uuids, ask)
        cleanup.append(agent)
        await agent.enrol(server.add_provider(100 + i))
        await agent.heartbeat()
        agent.keep_alive()
    _, market = await api.call("GET", "/v1/market")
    row = market["models"][0]
    body = {"image": "busybox:latest", "gpus": 2, "max_duration_s": 600}

    async def runs_now(price: int) -> bool:
        status, quote = await api.call(
            "POST", "/v1/jobs/quote", {**body, "max_price_per_gpu_hour_micro_yuan": price}
        )
        assert status == 200, quote
        assert quote["agents"] == 1, "the job's needs single the target out"
        return bool(quote["runs_now"])

    low, high = row["ask_min_micro_yuan"], row["ask_max_micro_yuan"]
    assert await runs_now(high)
    while low < high:
        middle = (low + high) // 2
        if await runs_now(middle):
            high = middle
        else:
            low = middle + 1
    assert low == rounded_up(TARGET) == 4_200_000, "the ask itself stays sealed"
    status, quote = await api.call(
        "POST", "/v1/jobs/quote", {**body, "max_price_per_gpu_hour_micro_yuan": 4_190_000}
    )
    assert quote["runs_now"] is False and "rounded down to 2 figures" in quote["reason_detail"]
