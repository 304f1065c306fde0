"""The engine network egress jobs join, made through the engine's own API: a bridge of a fixed
name and subnet, IPv6 off, no DNS server of the engine's on the host side (Podman's
aardvark-dns would listen on a host address), inter-container traffic off (Docker's option;
the agent's bridge rules enforce it on both engines)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any
from urllib.parse import quote

from agent.engine import Engine, EngineError

LABEL_EGRESS = "suanli.egress"


class NetworkError(Exception):
    """The engine would not make or keep the egress network; the message says why."""


def docker_body(name: str, bridge: str, subnet: ipaddress.IPv4Network) -> dict[str, Any]:
    return {
        "Name": name,
        "Driver": "bridge",
        "CheckDuplicate": True,
        "EnableIPv6": False,
        "Internal": False,
        "IPAM": {"Driver": "default", "Config": [_docker_subnet(subnet)]},
        "Options": {
            "com.docker.network.bridge.name": bridge,
            "com.docker.network.bridge.enable_icc": "false",
        },
        "Labels": {LABEL_EGRESS: name},
    }


def libpod_body(name: str, bridge: str, subnet: ipaddress.IPv4Network) -> dict[str, Any]:
    return {
        "name": name,
        "driver": "bridge",
        "network_interface": bridge,
        "subnets": [{"subnet": str(subnet), "gateway": str(gateway(subnet))}],
        "ipv6_enabled": False,
        "internal": False,
        "dns_enabled": False,
        "labels": {LABEL_EGRESS: name},
    }


def gateway(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return subnet.network_address + 1


def _docker_subnet(subnet: ipaddress.IPv4Network) -> dict[str, str]:
    return {"Subnet": str(subnet), "Gateway": str(gateway(subnet))}


async def _inspect(engine: Engine, name: str) -> dict[str, Any] | None:
    status, body = await engine._call("GET", f"/networks/{quote(name)}", ok=(200, 404))
    return None if status == 404 else dict(json.loads(body))


def _matches(document: dict[str, Any], subnet: ipaddress.IPv4Network) -> bool:
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
        existing = await _inspect(engine, name)
        if existing is not None and _matches(existing, subnet):
            return
        if existing is not None:
            await remove_network(engine, name)
        if await engine._flavor() == "podman":
            body = libpod_body(name, bridge, subnet)
            await engine._call("POST", "/networks/create", json=body, libpod=True)
        else:
            await engine._call(
                "POST", "/networks/create", json=docker_body(name, bridge, subnet), ok=(201,)
            )
    except EngineError as exc:
        raise NetworkError(f"the engine would not make network {name}: {exc.detail}") from None


async def containers_on(engine: Engine, name: str) -> list[str]:
    filters = quote(json.dumps({"network": [name]}))
    _, body = await engine._call("GET", f"/containers/json?all=true&filters={filters}")
    return [str(c["Id"]) for c in json.loads(body)]


async def remove_network(engine: Engine, name: str) -> None:
    try:
        await engine._call("DELETE", f"/networks/{quote(name)}", ok=(200, 204, 404))
    except EngineError as exc:
        raise NetworkError(f"cannot remove network {name}: {exc.detail}") from None
