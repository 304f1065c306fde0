"""Shells, copies and forwarded ports relayed between `suanli` and the agent running a job."""

from coordinator.relay.hub import RelayHub, RelaySession
from coordinator.relay.routes import HUB, mount

__all__ = ["HUB", "RelayHub", "RelaySession", "mount"]
