"""Registry credentials for one pull, as the engine API takes them: the X-Registry-Auth header,
base64url of the JSON {username, password, serveraddress} (Docker's and Podman's compat API)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

REGISTRY_AUTH_HEADER = "X-Registry-Auth"


@dataclass(frozen=True, slots=True)
class RegistryCredentials:
    """What a job gave for its image's registry; the password never shows in a repr."""

    username: str
    password: str = field(repr=False)
    serveraddress: str

    @classmethod
    def from_wire(cls, auth: object) -> RegistryCredentials | None:
        """The credentials of a lease's job as the coordinator sends them; None if absent or
        not whole."""
        if not isinstance(auth, Mapping):
            return None
        try:
            return cls(str(auth["username"]), str(auth["password"]), str(auth["serveraddress"]))
        except KeyError:
            return None

    def header(self) -> dict[str, str]:
        document = {
            "username": self.username,
            "password": self.password,
            "serveraddress": self.serveraddress,
        }
        encoded = base64.urlsafe_b64encode(json.dumps(document).encode()).decode()
        return {REGISTRY_AUTH_HEADER: encoded}
