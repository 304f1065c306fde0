"""Networks on the engine: an agent-owned bridge (Docker's compatible API, Podman's own), its
inspection, the containers on it, and its removal."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from agent.engine.api import EngineApi


def bridge_network_body(
    name: str, bridge: str, subnet: ipaddress.IPv4Network, labels: Mapping[str, str]
) -> dict[str, Any]:
    """Docker's `POST /networks/create` body: a bridge of that interface name and subnet,
    IPv6 off, containers on it not talking to each other (enable_icc)."""
    return {
        "Name": name,
        "Driver": "bridge",
        "CheckDuplicate": True,
        "EnableIPv6": False,
        "Internal": False,
        "IPAM": {
            "Driver": "default",
            "Config": [{"Subnet": str(subnet), "Gateway": str(subnet.network_address + 1)}],
        },
        "Options": {
            "com.docker.network.bridge.name": bridge,
            "com.docker.network.bridge.enable_icc": "false",
        },
        "Labels": dict(labels),
    }


def libpod_bridge_network_body(
    name: str, bridge: str, subnet: ipaddress.IPv4Network, labels: Mapping[str, str]
) -> dict[str, Any]:
    """The same network through Podman's own API, which names the interface and can leave
    out aardvark-dns (it would listen on the host side of the bridge)."""
    return {
        "name": name,
        "driver": "bridge",
        "network_interface": bridge,
        "subnets": [{"subnet": str(subnet), "gateway": str(subnet.network_address + 1)}],
        "ipv6_enabled": False,
        "internal": False,
        "dns_enabled": False,
        "labels": dict(labels),
    }


class NetworkCalls(EngineApi):
    """The network requests of the engine API."""

    async def network(self, name: str) -> dict[str, Any] | None:
        """The network's inspect document (Docker's shape on both engines); None: absent."""
        status, body = await self._call("GET", f"/networks/{quote(name, safe='')}", ok=(200, 404))
        return None if status == 404 else dict(json.loads(body))

    async def create_bridge_network(
        self, name: str, bridge: str, subnet: ipaddress.IPv4Network, labels: Mapping[str, str]
    ) -> None:
        if await self._flavor() == "podman":
            body = libpod_bridge_network_body(name, bridge, subnet, labels)
            await self._call("POST", "/networks/create", json=body, libpod=True)
        else:
            body = bridge_network_body(name, bridge, subnet, labels)
            await self._call("POST", "/networks/create", json=body, ok=(201,))

    async def remove_network(self, name: str) -> None:
        """Delete the network; absent is fine, one with containers on it is refused."""
        await self._call("DELETE", f"/networks/{quote(name, safe='')}", ok=(200, 204, 404))

    async def network_containers(self, name: str) -> list[str]:
        """Ids of the containers, running or not, on the network."""
        filters = json.dumps({"network": [name]})
        _, body = await self._call(
            "GET", "/containers/json", params={"all": "true", "filters": filters}
        )
        return [str(container["Id"]) for container in json.loads(body)]
