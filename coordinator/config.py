"""Coordinator settings: one table of name, default and help, read from TOML and overridden by
flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from coordinator.storage import is_postgres_url, sqlite_path
from shared.errors import SuanliError
from shared.settings_file import describe, read_table, setting, typed_values

MAX_RECEIPT_WORKERS = 256


class ConfigError(SuanliError):
    """The coordinator's configuration file or flags are invalid."""

    code = "bad_config"


@dataclass(frozen=True)
class Settings:
    listen: str = setting("127.0.0.1:8420", "HOST:PORT to serve on")
    tls_cert: str | None = setting(None, "PEM certificate chain; serve HTTPS when given")
    tls_key: str | None = setting(None, "PEM private key for tls_cert")
    request_body_limit_bytes: int = setting(1 << 20, "largest request body accepted")
    signed_request_window_ms: int = setting(
        60_000, "how far an agent's request time may be from ours"
    )
    heartbeat_interval_ms: int = setting(10_000, "how often agents are told to heartbeat")
    heartbeat_timeout_ms: int = setting(45_000, "silence after which an agent's leases are lost")
    start_deadline_ms: int = setting(120_000, "time an agent has to start a leased job")
    rejections_per_agent_per_day: int = setting(
        10_000,
        "refused receipts kept for auditors per agent and day; a flood past it is "
        "answered and counted (metric suanli_receipt_rejections_dropped_total), not stored",
    )
    settle_grace_ms: int = setting(
        3_600_000,
        "how long after a job ends its reservation still holds for receipts that may "
        "arrive late (a lease its coordinator ended); a job whose receipts are all in settles "
        "at once",
    )
    stop_grace_ms: int = setting(
        60_000,
        "time an agent has to stop a job after a cancel or revocation; nothing is billed "
        "after it, and an agent that has not ended the lease by its window's close plus this "
        "is ended by the coordinator and penalised",
    )
    max_attempts: int = setting(3, "leases a job may lose before it is marked lost")
    long_poll_max_ms: int = setting(25_000, "longest an agent's lease poll is held open")
    job_log_limit_bytes: int = setting(1 << 20, "log bytes kept per job; the rest is dropped")
    relay_sessions_per_job: int = setting(4, "shells, copies and forwarded ports open at once")
    relay_session_bytes: int = setting(16 << 30, "bytes one relayed session may carry, both ways")
    relay_idle_ms: int = setting(1_800_000, "a relayed session silent this long is closed")
    max_jobs_per_enterprise: int = setting(10_000, "unfinished jobs one enterprise may hold")
    scheduler_interval_ms: int = setting(1_000, "how often pending jobs are re-auctioned")
    reliability_penalty_ppm: int = setting(
        200_000, "reliability lost per failed start or lost lease"
    )
    reliability_half_life_ms: int = setting(86_400_000, "time for a reliability penalty to halve")
    agent_requests_per_s: int = setting(
        100, "requests a second one agent may make on average (0: no limit); the rest get 429"
    )
    agent_request_burst: int = setting(1_000, "requests one agent may make at once above its rate")
    token_requests_per_s: int = setting(
        50, "requests a second one API token may make on average (0: no limit); the rest get 429"
    )
    token_request_burst: int = setting(
        500, "requests one API token may make at once above its rate"
    )
    quote_requests_per_minute: int = setting(
        2,
        "job quotes one enterprise may ask for a minute on average (0: no limit): a quote is "
        "an auction nobody pays for, and each tells a little about the asks",
    )
    quote_request_burst: int = setting(10, "job quotes one enterprise may ask for at once")
    header_timeout_s: int = setting(
        20,
        "a connection that has not sent a whole request head in this long, or sat idle, is closed",
    )
    body_timeout_s: int = setting(
        30, "a request whose body has not arrived in this long is refused"
    )
    receipt_workers: int = setting(
        os.cpu_count() or 1,
        "worker processes that verify large receipt batches (default: one per CPU; 0: the event "
        "loop does)",
    )

    database: str | None = setting(
        None,
        "the database when --db is not given: a SQLite file, or postgresql://USER@HOST/DBNAME "
        "(a password is better kept in ~/.pgpass than here)",
    )
    log_key_file: str | None = setting(
        None,
        "the log's signing key file (default: beside a SQLite database, as DB.key); needed on "
        "PostgreSQL, where a leader and its standbys each hold a copy of the same key",
    )
    public_url: str | None = setting(
        None,
        "the base URL agents and clients reach this coordinator at; standbys name the leader by "
        "it in their redirects (default: http://LISTEN)",
    )
    leader_lease_ms: int = setting(
        3_000,
        "PostgreSQL only: how long the leader's lease lasts without renewal; a standby takes "
        "over once it lapses (at once when the leader's database session ends)",
    )
    standby_refresh_ms: int = setting(
        2_000, "PostgreSQL only: how often a standby reloads its read-only view of the market"
    )

    def __post_init__(self) -> None:
        if not 0 <= self.receipt_workers <= MAX_RECEIPT_WORKERS:
            raise ConfigError(
                f"receipt_workers must be from 0 to {MAX_RECEIPT_WORKERS}, "
                f"not {self.receipt_workers}"
            )
        if self.leader_lease_ms < 500 or self.standby_refresh_ms < 100:
            raise ConfigError(
                "leader_lease_ms must be at least 500 and standby_refresh_ms at least 100, not "
                f"{self.leader_lease_ms} and {self.standby_refresh_ms}"
            )
        for name in ("stop_grace_ms", "settle_grace_ms", "rejections_per_agent_per_day"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"{name} must be 0 or more, not {value}")

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        return describe(cls)

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def log_key_location(settings: Settings, database: str) -> Path:
    """Where the log's signing key is: `log_key_file`, or beside a SQLite database."""
    if settings.log_key_file:
        return Path(settings.log_key_file)
    if is_postgres_url(database):
        raise ConfigError(
            "a coordinator on PostgreSQL keeps its log key in a file: set log_key_file in "
            "coordinator.toml ([coordinator] table) to the same key on the leader and standbys"
        )
    return Path(f"{sqlite_path(database)}.key")


def load_settings(path: Path | None) -> Settings:
    if path is None:
        return Settings()
    section = read_table(path, "coordinator", ConfigError, whole_file=True)
    return Settings(**typed_values(section, Settings, path, ConfigError, skip_tables=True))
