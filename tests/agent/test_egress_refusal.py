"""An agent that cannot give egress says why, tells the market so, and fails an egress lease
with that reason before anything is pulled or created: never a quiet fallback to none."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.config import AgentSettings
from agent.daemon import AgentDaemon
from agent.egress import EgressNetwork
from agent.egress.self_check import egress_checks
from agent.engine import Engine
from agent.lease import LeaseRecord, LeaseTerms
from agent.runner import LeaseRunner
from agent.state import AgentState
from shared.messages import agent_protocol as ap


def _daemon(tmp_path: Path, **settings: object) -> AgentDaemon:
    state = AgentState(tmp_path / "state")
    state.key_for_enrolment()
    state.save_enrolment(
        {"coordinator_url": "http://127.0.0.1:9", "agent_id": "x", "provider_id": "p"}
    )
    values = {
        "state_dir": str(state.directory),
        "engine_socket": str(tmp_path / "no-engine.sock"),
        **settings,
    }
    return AgentDaemon(AgentSettings(**values).validate(), state)  # type: ignore[arg-type]


def _egress_lease(network: str = "egress") -> LeaseRecord:
    terms = LeaseTerms.from_wire(
        {
            "lease_id": "lease-e",
            "job_id": "job-e",
            "gpu_uuids": [],
            "price_per_gpu_hour": 1,
            "job": {
                "image": "registry.example.cn/team/train:1",
                "command": ["true"],
                "env": {},
                "cpus_milli": 1000,
                "memory_bytes": 1 << 26,
                "network": network,
            },
        }
    )
    assert terms is not None
    return LeaseRecord(terms, created_at_ms=1)


@pytest.mark.parametrize("allow", [False, True])
async def test_an_egress_lease_fails_with_the_reason_on_an_agent_without_egress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow: bool
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nft on this "host"
    daemon = _daemon(tmp_path, allow_egress=allow)
    try:
        await daemon.egress.start()
        assert not daemon.egress.ready
        record = _egress_lease()
        runner = LeaseRunner(daemon, record)
        assert await runner._create_and_start() is False
        failure = record.container.failure
        assert failure is not None and failure.reason_code == "egress_unavailable"
        assert failure.reason == (
            "this provider's agent cannot run jobs with network egress: its egress network "
            "could not be set up (the provider's agent log and self-test say why)"
            if allow
            else "this provider's agent does not allow jobs with network egress"
        )
        assert str(tmp_path) not in failure.reason
        why = "nft is not installed" if allow else "allow_egress is false"
        assert daemon.egress.reason is not None and why in daemon.egress.reason
        assert record.container.container_id is None  # nothing was created on another network
    finally:
        await daemon.close()


async def test_self_test_says_why_egress_is_off_or_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(str(tmp_path / "no-engine.sock"))
    try:
        off = EgressNetwork(engine, allow=False, block=[], subnet="10.254.77.0/24")
        assert await egress_checks(off) == [
            ("egress", True, "off (allow_egress = false): jobs that ask egress are refused")
        ]
        monkeypatch.setenv("PATH", str(tmp_path))
        on = EgressNetwork(engine, allow=True, block=[], subnet="10.254.77.0/24")
        ((name, ok, detail),) = await egress_checks(on)
        assert (name, ok) == ("egress", False)
        assert "egress jobs are refused" in detail and "nft is not installed" in detail
    finally:
        await engine.close()


class _Heartbeats:
    """A coordinator client that keeps the first heartbeat's inventory and ends the loop."""

    def __init__(self) -> None:
        self.inventory: dict[str, Any] | None = None

    async def heartbeat(self, ask: int | None, inventory: dict[str, Any]) -> dict[str, Any]:
        self.inventory = inventory
        raise asyncio.CancelledError

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("ready", [False, True])
async def test_the_heartbeat_says_egress_is_allowed_only_once_it_is_set_up(
    tmp_path: Path, ready: bool
) -> None:
    daemon = _daemon(tmp_path, allow_egress=True)
    sent = _Heartbeats()
    daemon.client = sent  # type: ignore[assignment]
    try:
        daemon.egress.reason = None if ready else "nft is not installed"
        with contextlib.suppress(asyncio.CancelledError):
            await daemon._heartbeat_loop()
        assert sent.inventory is not None
        report = msgspec.convert(sent.inventory, ap.Inventory, strict=False)
        assert report.host.egress_allowed is ready
    finally:
        await daemon.close()
