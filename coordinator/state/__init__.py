"""The coordinator's shared in-memory state, its rows in the database, and its loading at start."""

from coordinator.state.load import ALIVE_INTERVAL_MS, SKEW_MARGIN_MS, load_state
from coordinator.state.memory import State

__all__ = ["ALIVE_INTERVAL_MS", "SKEW_MARGIN_MS", "State", "load_state"]
