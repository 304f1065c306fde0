"""A coordinator that stops listening (paused, starved of CPU) does not blame the agents for
the silence it did not hear: an agent that kept heartbeating keeps its lease, and one that
really fell silent is still lost once its silence, less the pause, outlasts the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from coordinator_harness import FAST_SETTINGS, CoordinatorProcess, StartedLease, started_lease

TIMEOUT_MS = FAST_SETTINGS["heartbeat_timeout_ms"]
PRICE = 36_000_000


def _now() -> int:
    return time.time_ns() // 1_000_000


async def _stalls(url: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        text = await response.text()
    [line] = [ln for ln in text.splitlines() if ln.startswith("suanli_event_loop_stalls_total ")]
    return float(line.split()[1])


def _pause(coordinator: CoordinatorProcess, seconds: float) -> int:
    """SIGSTOP the coordinator for `seconds`; returns the moment it was let go again."""
    assert coordinator.process is not None
    coordinator.process.send_signal(signal.SIGSTOP)
    time.sleep(seconds)
    resumed = _now()
    coordinator.process.send_signal(signal.SIGCONT)
    return resumed


@contextlib.asynccontextmanager
async def _running_lease(tmp_path: Path) -> AsyncIterator[tuple[CoordinatorProcess, StartedLease]]:
    """A coordinator on SQLite with one started lease; stopped (and its clients closed) after."""
    coordinator = CoordinatorProcess(tmp_path).start()
    cleanup: list[Any] = []
    try:
        yield coordinator, await started_lease(coordinator, cleanup, PRICE)
    finally:
        for thing in cleanup:
            await thing.close()
        coordinator.stop()


@pytest.mark.slow
async def test_an_agent_heartbeating_through_a_paused_coordinator_keeps_its_lease(
    tmp_path: Path,
) -> None:
    async with _running_lease(tmp_path) as (coordinator, at_hand):
        before = await _stalls(coordinator.url)
        # the agent's heartbeats queue up unanswered while the coordinator is stopped
        await asyncio.to_thread(_pause, coordinator, TIMEOUT_MS / 1000 + 1.5)
        await asyncio.sleep(1.5)  # several scheduler passes after it woke
        job = await at_hand.api.job(at_hand.job_id)
        assert job["state"] == "running", job
        assert job["attempts"] == 0, job
        assert await _stalls(coordinator.url) > before
    [(ended, reason)] = coordinator.rows("SELECT ended_at_ms, end_reason FROM leases")
    assert (ended, reason) == (None, None)


@pytest.mark.slow
async def test_a_silent_agent_is_lost_once_its_silence_outside_the_pause_outlasts_the_timeout(
    tmp_path: Path,
) -> None:
    paused_s = TIMEOUT_MS / 1000 + 1.5
    async with _running_lease(tmp_path) as (coordinator, at_hand):
        await at_hand.agent.stop_heartbeats()
        await asyncio.to_thread(_pause, coordinator, paused_s)
        deadline = time.monotonic() + TIMEOUT_MS / 1000 + 20
        while (job := await at_hand.api.job(at_hand.job_id))["attempts"] == 0:
            assert time.monotonic() < deadline, f"the silent agent was never lost: {job}"
            await asyncio.sleep(0.2)
    [(ended, reason)] = coordinator.rows(
        "SELECT ended_at_ms, end_reason FROM leases WHERE id = ?", [at_hand.lease["lease_id"]]
    )
    [(last_seen,)] = coordinator.rows(
        "SELECT last_seen_ms FROM agents WHERE agent_id = ?", [at_hand.agent.agent_id]
    )
    assert reason == "agent_lost"
    # the pause is credited to the agent, once: it is lost after the timeout plus the pause
    assert ended - last_seen > TIMEOUT_MS + paused_s * 1000, "blamed for unheard silence"
    assert ended - last_seen < TIMEOUT_MS + paused_s * 1000 + 10_000
