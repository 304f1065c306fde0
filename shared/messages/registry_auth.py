"""Credentials for the registry of a job's image, as the enterprise posts them and the winning
agent receives them in its lease (the engine API's X-Registry-Auth carries the same fields)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.messages.fields import UNICODE_TEXT, Message, require_printable

MAX_REGISTRY_USERNAME = 256
MAX_REGISTRY_PASSWORD = 8192  # registry tokens (a cloud's, say) run to a few kilobytes
MAX_REGISTRY_HOST = 255


class RegistryAuth(Message, forbid_unknown_fields=True):
    """Credentials for the registry of a job's image, as the engine API's X-Registry-Auth
    carries them; serveraddress is the image's registry host (docker.io for Docker Hub)."""

    username: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_REGISTRY_USERNAME,
            pattern=UNICODE_TEXT,
            extra={"expected": f"a user name of 1 to {MAX_REGISTRY_USERNAME} characters"},
        ),
    ]
    password: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_REGISTRY_PASSWORD,
            pattern=UNICODE_TEXT,
            extra={
                "expected": f"a password or token of 1 to {MAX_REGISTRY_PASSWORD} characters",
                "secret": True,
            },
        ),
    ]
    serveraddress: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_REGISTRY_HOST,
            extra={"expected": "the registry host[:port] of the job's image"},
        ),
    ]

    def __post_init__(self) -> None:
        require_printable(self, ("username", "serveraddress"), 1, MAX_REGISTRY_USERNAME)
