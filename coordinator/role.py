"""What this process is to its database: the leader, or a standby that names the leader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

LEADER: Final = "leader"
STANDBY: Final = "standby"


@dataclass
class Role:
    """Changed only by the serving loop (`coordinator.serving`); read by /healthz, /metrics and
    the standby's redirects."""

    name: Literal["leader", "standby"] = LEADER
    epoch: int | None = None  # None on SQLite, where there is no election
    leader_url: str | None = None
    takeovers: int = 0
