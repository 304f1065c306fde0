"""Coordinator settings: one table of name, default and help, read from TOML and overridden by flags."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from shared.errors import SuanliError


class ConfigError(SuanliError):
    """The coordinator's configuration file or flags are invalid."""

    code = "bad_config"


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    listen: str = _setting("127.0.0.1:8420", "HOST:PORT to serve on")
    tls_cert: str | None = _setting(None, "PEM certificate chain; serve HTTPS when given")
    tls_key: str | None = _setting(None, "PEM private key for tls_cert")
    request_body_limit_bytes: int = _setting(1 << 20, "largest request body accepted")
    signed_request_window_ms: int = _setting(60_000, "how far an agent's request time may be from ours")
    heartbeat_interval_ms: int = _setting(10_000, "how often agents are told to heartbeat")
    heartbeat_timeout_ms: int = _setting(45_000, "silence after which an agent's leases are lost")
    start_deadline_ms: int = _setting(120_000, "time an agent has to start a leased job")
    max_attempts: int = _setting(3, "leases a job may lose before it is marked lost")
    long_poll_max_ms: int = _setting(25_000, "longest an agent's lease poll is held open")
    job_log_limit_bytes: int = _setting(1 << 20, "log bytes kept per job; the rest is dropped")
    max_jobs_per_enterprise: int = _setting(10_000, "unfinished jobs one enterprise may hold")
    scheduler_interval_ms: int = _setting(1_000, "how often pending jobs are re-auctioned")
    reliability_penalty_ppm: int = _setting(200_000, "reliability lost per failed start or lost lease")
    reliability_half_life_ms: int = _setting(86_400_000, "time for a reliability penalty to halve")

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        return [(f.name, f.default, f.metadata["help"]) for f in fields(cls)]

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def load_settings(path: Path | None) -> Settings:
    if path is None:
        return Settings()
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"no configuration file at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    section = data.get("coordinator", data)
    known = {f.name: f for f in fields(Settings)}
    values: dict[str, Any] = {}
    for name, value in section.items():
        if isinstance(value, dict):
            continue
        if name not in known:
            raise ConfigError(f"{path}: unknown setting {name!r}")
        default = known[name].default
        expected = type(default) if default is not None else str
        if type(value) is not expected:
            raise ConfigError(f"{path}: {name} must be a {expected.__name__}")
        values[name] = value
    return Settings(**values)
