"""`suanli-agent run` with allow_egress on a real engine: the egress network and the nftables
tables appear at start, survive a kill -9 as they were, are replaced (not doubled) by the
next start, and are gone after a clean stop. An agent without egress says so."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_harness import AgentProcess
from coordinator_harness import FAST_SETTINGS, CoordinatorProcess
from engines import EngineService
from fake_nvml.fixture import FakeGpu

from agent.egress import NETWORK_NAME

pytestmark = pytest.mark.integration
TABLE = NETWORK_NAME.replace("-", "_")
GPUS = [FakeGpu(uuid="GPU-0b7f6a52-0000-4000-8000-0000000000e1", power_mw=300_000)]


def _tables() -> list[str]:
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return [line.strip() for line in listed.splitlines() if line.strip().endswith(f" {TABLE}")]


def _network(engine: EngineService) -> int:
    status, _ = engine.request("GET", f"/v1.41/networks/{NETWORK_NAME}")
    return status


def _until(
    predicate: Callable[[], bool], what: str, agent: AgentProcess, timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout_s:g} s\n--- agent log ---\n{agent.log()[-3000:]}")


def test_the_agent_sets_egress_up_at_start_and_removes_it_at_stop(
    tmp_path: Path, engine_service: EngineService
) -> None:
    if _tables() or _network(engine_service) == 200:
        pytest.skip(f"{TABLE} is in use on this host by something else")
    (tmp_path / "coordinator").mkdir()
    coordinator = CoordinatorProcess(tmp_path / "coordinator", settings=dict(FAST_SETTINGS))
    coordinator.start()
    agent = AgentProcess(tmp_path / "agent", coordinator, engine_service.socket, GPUS)
    agent.settings |= {
        "allow_egress": True,
        "egress_subnet": f"10.254.{secrets.randbelow(200) + 20}.0/24",
        "egress_dns": ["1.1.1.1"],
    }
    agent.workdir.mkdir()
    agent.enroll()
    try:
        agent.start()
        _until(
            lambda: _tables() == [f"table inet {TABLE}", f"table bridge {TABLE}"],
            "the egress tables did not appear",
            agent,
        )
        assert _network(engine_service) == 200
        assert "egress network suanli-egress ready" in agent.log()
        agent.stop(kill=True)  # a crash: the rules stay as they were
        assert len(_tables()) == 2
        agent.start()
        _until(
            lambda: agent.log().count("egress network suanli-egress ready") == 2,
            "the restarted agent did not set egress up again",
            agent,
        )
        assert len(_tables()) == 2  # replaced, not doubled
        agent.stop()
        assert _tables() == [] and _network(engine_service) == 404
        # an agent without egress says so, and makes nothing
        agent.settings["allow_egress"] = False
        agent.start()
        _until(
            lambda: "egress off (allow_egress = false)" in agent.log(),
            "the agent without egress did not say why",
            agent,
        )
        assert _tables() == []
    finally:
        agent.stop()
        coordinator.stop()
        subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True)
        subprocess.run(["nft", "delete", "table", "bridge", TABLE], capture_output=True)
        engine_service.request("DELETE", f"/v1.41/networks/{NETWORK_NAME}")
