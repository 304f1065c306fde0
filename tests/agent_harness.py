"""Run the real `suanli-agent` as a process: fake NVML GPUs, a real engine, a real coordinator."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator_harness import BIN, Api, CoordinatorProcess
from fake_nvml.fixture import FakeGpu, build, environment, write_config

AGENT_SETTINGS: dict[str, Any] = {
    "heartbeat_interval_s": 1,
    "sample_interval_ms": 200,
    "receipt_interval_s": 1,
    "acceptance_deadline_s": 60,
    "stop_grace_s": 1,
    "gpu_mode": "none",
    "job_network": "none",
}


@dataclass
class AgentProcess:
    workdir: Path
    coordinator: CoordinatorProcess
    engine_socket: Path
    gpus: list[FakeGpu]
    ask: str = "6.00"
    settings: dict[str, Any] = field(default_factory=lambda: dict(AGENT_SETTINGS))
    process: subprocess.Popen[bytes] | None = None

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def nvml_config(self) -> Path:
        return self.workdir / "fake-nvml.conf"

    def env(self) -> dict[str, str]:
        return environment(build(), self.nvml_config)

    def enroll(self, provider: int = 1) -> str:
        write_config(self.nvml_config, self.gpus)
        token = self.coordinator.add_provider(provider)
        result = subprocess.run(
            [
                BIN / "suanli-agent",
                "enroll",
                "--coordinator",
                self.coordinator.url,
                "--token",
                token,
                "--state-dir",
                str(self.state_dir),
                "--hostname",
                "gpu-host-1",
            ],
            capture_output=True,
            text=True,
            env=self.env(),
            check=True,
        )
        return result.stdout

    @property
    def agent_id(self) -> str:
        return str(json.loads((self.state_dir / "enrolment.json").read_text())["agent_id"])

    def start(self) -> AgentProcess:
        config = self.workdir / "agent.toml"
        settings = {
            **self.settings,
            "engine_socket": str(self.engine_socket),
            "state_dir": str(self.state_dir),
            "ask_per_gpu_hour": self.ask,
        }
        config.write_text(
            "[agent]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
        )
        log = open(self.workdir / "agent.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [BIN / "suanli-agent", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
        )
        log.close()
        return self

    def stop(self, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None

    def log(self) -> str:
        path = self.workdir / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what}")


async def until_offered(api: Api, agent: AgentProcess, gpus: int, timeout_s: float = 30) -> None:
    """Wait until the market shows the agent's `gpus` GPUs free, or fail with its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, market = await api.call("GET", "/v1/market")
        if market.get("models") and market["models"][0]["free"] == gpus:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the agent's GPUs never reached the market:\n{agent.log()}")
