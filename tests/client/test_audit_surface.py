"""The auditor's package shows a small public surface: every name in `__all__` resolves, and
each room of the package says in its docstring what it is for."""

from __future__ import annotations

import importlib
from pathlib import Path

from coordinator.client import audit

ROOMS = sorted(p.stem for p in Path(audit.__file__).parent.glob("*.py") if p.stem != "__init__")


def test_audit_all_is_complete_and_resolves() -> None:
    assert len(set(audit.__all__)) == len(audit.__all__)
    for name in audit.__all__:
        assert getattr(audit, name) is not None, name
    assert {"verify_log", "replay_auctions", "check_receipt", "main"} <= set(audit.__all__)


def test_every_room_says_what_it_is_for() -> None:
    for room in ROOMS:
        module = importlib.import_module(f"coordinator.client.audit.{room}")
        assert module.__doc__, f"{room} says what it is for"
