"""The audit's state file: the log key it pinned and the checkpoint it last verified, which
the next run's log must extend (a rewritten history is caught there)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from coordinator.client.audit.errors import AuditUsageError
from shared.clock import now_ms
from shared.identity import VerifierKey

STATE_VERSION = 1


def load_state(path: Path | None) -> dict[str, Any]:
    """What the previous run saved: the pinned log key and the checkpoint it verified."""
    if path is None or not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AuditUsageError(f"cannot read the audit state {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise AuditUsageError(f"{path} is not a suanli audit state file (version {STATE_VERSION})")
    return state


def save_state(path: Path, url: str, key: VerifierKey, note: str) -> None:
    """Replace the state file atomically, so an interrupted run never leaves half a state."""
    state = {
        "version": STATE_VERSION,
        "coordinator": url,
        "log_key": str(key),
        "checkpoint": note,
        "saved_at_ms": now_ms(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(state, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
