"""Which registry an image reference names, read as Docker reads it: the agent's registry
policy checks that host, and registry credentials are given for it (the client picks them
from a Docker config.json by it, the coordinator refuses credentials for another host)."""

from __future__ import annotations

__all__ = ["DOCKER_HUB", "HUB_ALIASES", "hostname", "registry_host"]

DOCKER_HUB = "docker.io"
HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def registry_host(ref: str) -> str:
    """The registry host[:port] of an image reference, lowercased, read as Docker reads it:
    the first path component is a host when it has a '.' or ':', is "localhost", or has an
    upper-case letter; otherwise the image is on Docker Hub ("docker.io")."""
    name = ref.split("@", 1)[0]
    first, slash, _ = name.partition("/")
    if not slash or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        return DOCKER_HUB
    host = first.lower()
    return DOCKER_HUB if hostname(host) in HUB_ALIASES else host


def hostname(host: str) -> str:
    """host[:port] without the port and brackets, without a trailing dot."""
    if host.startswith("["):
        inside, _, _ = host[1:].partition("]")
        return inside
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")
