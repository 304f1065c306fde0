"""A job's secrets as the coordinator keeps them until the job ends: its secret env values and
its image's registry credentials, in one map of name to value (`State.secrets`, the
job_secrets rows), so that they are delivered, masked and erased together."""

from __future__ import annotations

import msgspec

from shared.messages import api
from shared.messages.registry_auth import RegistryAuth

# no env name can take it: they start with a letter or _
REGISTRY_AUTH = "@registry_auth"


def submitted_secrets(body: api.JobSubmit) -> dict[str, str]:
    """The secrets a submission carries, by name."""
    secrets = dict(body.secret_env)
    if body.registry_auth is not None:
        secrets[REGISTRY_AUTH] = msgspec.json.encode(body.registry_auth).decode()
    return secrets


def secret_env(secrets: dict[str, str]) -> dict[str, str]:
    """The secret env values, for the winning agent's container."""
    return {name: value for name, value in secrets.items() if name != REGISTRY_AUTH}


def registry_auth(secrets: dict[str, str]) -> dict[str, str] | None:
    """The registry credentials, for the winning agent's pull; None for a public image."""
    stored = secrets.get(REGISTRY_AUTH)
    if stored is None:
        return None
    auth = msgspec.json.decode(stored, type=RegistryAuth)
    return {
        "username": auth.username,
        "password": auth.password,
        "serveraddress": auth.serveraddress,
    }


def masked_values(secrets: dict[str, str]) -> list[str]:
    """What a job's log must never show: its secret env values and its registry password."""
    values = list(secret_env(secrets).values())
    auth = registry_auth(secrets)
    if auth is not None:
        values.append(auth["password"])
    return values
