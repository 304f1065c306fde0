"""The engine network egress jobs join: a bridge of a fixed name and subnet with IPv6 off,
no DNS server of the engine's on the host side and inter-container traffic off (Docker's
option; the agent's bridge rules enforce it on both engines). Kept across agent restarts,
since jobs left running stay on it."""

from __future__ import annotations

import ipaddress
from typing import Any

from agent.engine import Engine, EngineError

LABEL_EGRESS = "suanli.egress"


class NetworkError(Exception):
    """The engine would not make or keep the egress network; the message says why."""


def _ours(document: dict[str, Any], subnet: ipaddress.IPv4Network) -> bool:
    configs = (document.get("IPAM") or {}).get("Config") or []
    return (
        document.get("Driver") == "bridge"
        and not document.get("EnableIPv6")
        and [c.get("Subnet") for c in configs] == [str(subnet)]
        and (document.get("Labels") or {}).get(LABEL_EGRESS) == document.get("Name")
    )


async def ensure_network(
    engine: Engine, name: str, bridge: str, subnet: ipaddress.IPv4Network
) -> None:
    """Make the network, or keep the one an earlier run of the agent made (its jobs may still
    be on it); one of that name made otherwise is replaced if nothing uses it, else refused."""
    try:
        existing = await engine.network(name)
        if existing is not None and _ours(existing, subnet):
            return
        if existing is not None:
            await engine.remove_network(name)
        await engine.create_bridge_network(name, bridge, subnet, {LABEL_EGRESS: name})
    except EngineError as exc:
        raise NetworkError(f"the engine would not make network {name}: {exc.detail}") from None


async def containers_on(engine: Engine, name: str) -> list[str]:
    return await engine.network_containers(name)


async def remove_network(engine: Engine, name: str) -> None:
    try:
        await engine.remove_network(name)
    except EngineError as exc:
        raise NetworkError(f"cannot remove network {name}: {exc.detail}") from None
