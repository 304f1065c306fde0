"""The agent's settings: one table of name, default and help; TOML file, then flags on top."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from shared.errors import SuanliError
from shared.money import parse_yuan


class AgentConfigError(SuanliError):
    """The agent's configuration file or flags are invalid."""

    code = "bad_agent_config"


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class AgentSettings:
    coordinator_url: str | None = _setting(None, "coordinator URL (taken from enrolment when unset)")
    ca_file: str | None = _setting(None, "CA bundle that signs the coordinator's certificate")
    state_dir: str = _setting("/var/lib/suanli-agent", "key, enrolment and receipt spool live here")
    ask_per_gpu_hour: str | None = _setting(None, "ask price in yuan per GPU-hour, e.g. \"12.50\"; unset: offer nothing")
    offered_gpus: list[int] | None = _setting(None, "GPU indexes offered to the market; unset: all")
    engine_socket: str = _setting("/run/docker.sock", "Docker Engine API socket (Docker or Podman)")
    gpu_mode: str = _setting("auto", "GPU pinning: auto, nvidia-runtime, cdi or none")
    heartbeat_interval_s: int = _setting(10, "seconds between heartbeats")
    sample_interval_ms: int = _setting(1000, "milliseconds between NVML samples")
    receipt_interval_s: int = _setting(60, "seconds between signed receipts of a running lease")
    acceptance_deadline_s: int = _setting(600, "stop a job if none of its receipts is accepted by then")
    job_network: str = _setting("none", "container network: none or bridge")
    max_job_log_bytes: int = _setting(16 << 20, "job log bytes shipped to the coordinator per lease")
    pids_limit: int = _setting(4096, "most processes one job may run")
    stop_grace_s: int = _setting(30, "seconds between SIGTERM and SIGKILL when stopping a job")
    image_pull_timeout_s: int = _setting(1800, "longest an image pull may take")
    image_max_bytes: int = _setting(64 << 30, "largest image the agent will pull")
    disk_path: str = _setting("/", "filesystem reported as the host's disk")

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        return [(f.name, f.default, f.metadata["help"]) for f in fields(cls)]

    def with_overrides(self, **overrides: Any) -> AgentSettings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def ask_micro_yuan(self) -> int | None:
        if self.ask_per_gpu_hour is None:
            return None
        return parse_yuan(self.ask_per_gpu_hour, field="ask_per_gpu_hour")

    def validate(self) -> AgentSettings:
        self.ask_micro_yuan  # noqa: B018 - raises on a bad price
        if self.gpu_mode not in ("auto", "nvidia-runtime", "cdi", "none"):
            raise AgentConfigError("gpu_mode must be auto, nvidia-runtime, cdi or none")
        if self.job_network not in ("none", "bridge"):
            raise AgentConfigError("job_network must be none or bridge")
        for name in ("heartbeat_interval_s", "receipt_interval_s", "acceptance_deadline_s",
                     "sample_interval_ms", "max_job_log_bytes", "pids_limit", "stop_grace_s",
                     "image_pull_timeout_s", "image_max_bytes"):
            if getattr(self, name) <= 0:
                raise AgentConfigError(f"{name} must be positive")
        return self


def load_agent_settings(path: Path | None) -> AgentSettings:
    if path is None:
        return AgentSettings()
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AgentConfigError(f"no configuration file at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentConfigError(f"{path} is not valid TOML: {exc}") from None
    section = data.get("agent", data)
    known = {f.name: f for f in fields(AgentSettings)}
    values: dict[str, Any] = {}
    for name, value in section.items():
        if name not in known:
            raise AgentConfigError(f"{path}: unknown setting {name!r}")
        if name == "offered_gpus":
            if type(value) is not list or not all(type(i) is int and i >= 0 for i in value):
                raise AgentConfigError(f"{path}: offered_gpus must be a list of GPU indexes")
        elif name == "ask_per_gpu_hour":
            if type(value) is not str:
                raise AgentConfigError(f"{path}: ask_per_gpu_hour must be a quoted yuan amount like \"12.50\"")
        else:
            default = known[name].default
            expected = type(default) if default is not None else str
            if type(value) is not expected:
                raise AgentConfigError(f"{path}: {name} must be a {expected.__name__}")
        values[name] = value
    return AgentSettings(**values).validate()
