"""The agent's state directory: its key (0600), its enrolment (with the coordinator URLs it
was made with), and its receipt spool."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from shared.errors import SuanliError
from shared.identity import PrivateKey, load_private_key, save_private_key

KEY_FILE = "agent.key"
ENROLMENT_FILE = "enrolment.json"
SPOOL_FILE = "spool.db"


class NotEnrolled(SuanliError):
    """The agent has no enrolment in its state directory."""

    code = "not_enrolled"


class AgentState:
    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def spool_path(self) -> Path:
        return self.directory / SPOOL_FILE

    @property
    def enrolment_path(self) -> Path:
        return self.directory / ENROLMENT_FILE

    def ensure(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def key_for_enrolment(self) -> PrivateKey:
        """The existing key, or a new one written 0600 (an interrupted enrolment reuses it)."""
        self.ensure()
        if self.key_path.exists():
            return load_private_key(self.key_path)
        key = PrivateKey.generate()
        save_private_key(self.key_path, key)
        return key

    def load_key(self) -> PrivateKey:
        if not self.enrolment_path.exists():
            raise NotEnrolled(
                f"this host is not enrolled (no {self.enrolment_path}); run "
                "suanli-agent enroll --coordinator URL --token TOKEN first"
            )
        return load_private_key(self.key_path)

    def save_enrolment(self, data: dict[str, Any]) -> None:
        temporary = self.enrolment_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
        temporary.chmod(0o600)
        temporary.replace(self.enrolment_path)

    def enrolment(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.enrolment_path.read_text()))
        except FileNotFoundError:
            raise NotEnrolled(f"this host is not enrolled (no {self.enrolment_path})") from None

    def coordinator_urls(self) -> list[str]:
        """The coordinator URLs of the enrolment: its `coordinator_urls`, or the one
        `coordinator_url` of an enrolment made before several were possible."""
        enrolment = self.enrolment()
        urls = enrolment.get("coordinator_urls")
        if urls is None and isinstance(enrolment.get("coordinator_url"), str):
            urls = [enrolment["coordinator_url"]]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise NotEnrolled(
                f"{self.enrolment_path} names no coordinator URL; remove {self.directory} and "
                "enrol again"
            )
        return urls
