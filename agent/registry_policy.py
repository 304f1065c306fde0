"""Which registries the provider's engine may pull a job's image from (agent.toml).

An enterprise names the image, hence the host the provider's engine connects to: without a
policy, `127.0.0.1:PORT/x` makes the provider's own engine call a service on the provider's
loopback. The policy takes the registry host the way Docker reads an image reference (none
means Docker Hub), checks it against the operator's allow-list, and by default refuses hosts
that are loopback, link-local, private, shared (CGNAT) or otherwise not global, by literal
address, by name ("localhost"), and by what the name resolves to just before the pull.

The policy sees only the first hop. Resolving is a best effort against DNS rebinding: the
engine resolves the name again when it connects, and an attacker's DNS may answer
differently then. And an allowed registry can still send the engine elsewhere: blob
downloads follow HTTP redirects and token auth follows the realm URL the registry names.
Only an allow-list of registries the operator trusts, or an egress rule for the engine's
own traffic (no loopback, link-local or private destinations), closes those.

A refusal by name tells the enterprise which of its own registry hosts was refused; one by
what the name resolves to reads as an ordinary pull failure. Neither says why: an address or
a DNS answer would describe the provider's network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from shared.errors import SuanliError
from shared.image_refs import DOCKER_HUB, registry_host
from shared.image_refs import hostname as _hostname

__all__ = [
    "DOCKER_HUB",
    "RegistryAddressRefused",
    "RegistryPolicy",
    "RegistryRefused",
    "non_global_address",
    "pull_failed_sentence",
    "registry_host",
]

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_S = 5.0

Resolver = Callable[[str], Awaitable[Sequence[str]]]


class RegistryRefused(SuanliError):
    """The provider's registry policy refuses the image's registry host."""

    code = "registry_refused"


class RegistryAddressRefused(RegistryRefused):
    """The registry's name resolves to a non-global address, or to nothing. Reported to the
    enterprise as an ordinary pull failure, in the very words of one: "refused" here against
    "not found" there would let an enterprise map which names the provider's DNS knows."""

    code = "image_pull_failed"


def pull_failed_sentence(ref: str) -> str:
    """What the enterprise learns of any failed pull; the engine's own words stay in the
    agent's log, since they name addresses, resolvers and proxies of the provider."""
    return f"the provider's engine could not pull image {ref}"


def non_global_address(text: str) -> bool:
    """True for an address a public registry can never have: loopback, link-local, RFC 1918,
    CGNAT 100.64/10, ULA fc00::/7, unspecified, multicast, reserved, documentation..."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


async def _resolve(name: str) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
    )
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class RegistryPolicy:
    """allow: registry hosts (host or host:port; "*.example.cn" for any subdomain;
    "docker.io" for Docker Hub) that images may come from; None: any host.
    refuse_private: refuse hosts that are, or resolve to, non-global addresses."""

    allow: tuple[str, ...] | None = None
    refuse_private: bool = True

    def _allowed(self, host: str) -> bool:
        if self.allow is None:
            return True
        name = _hostname(host)
        for entry in (e.lower().rstrip(".") for e in self.allow):
            if entry.startswith("*."):
                if name.endswith(entry[1:]):
                    return True
            elif entry in (host, name):
                return True
        return False

    def check_name(self, ref: str) -> str:
        """The image's registry host if the reference alone passes the policy; else raise."""
        host = registry_host(ref)
        if not self._allowed(host):
            self._refuse(ref, host, "it is not in registry_allow")
        name = _hostname(host)
        if self.refuse_private and host != DOCKER_HUB:
            if name == "localhost" or name.endswith(".localhost"):
                self._refuse(ref, host, "it names the host itself")
            if non_global_address(name):
                self._refuse(ref, host, "it is a non-global address")
        return host

    async def check(self, ref: str, resolve: Resolver = _resolve) -> str:
        """check_name, then (refuse_private) resolve the host and refuse it if any address is
        non-global or it does not resolve. Call it just before a pull."""
        host = self.check_name(ref)
        name = _hostname(host)
        if not self.refuse_private or host == DOCKER_HUB or _is_literal(name):
            return host
        try:
            addresses = list(await resolve(name))
        except (OSError, TimeoutError, UnicodeError) as exc:
            # Refused alike: "does not resolve" versus "resolves privately" would tell an
            # enterprise probing names which ones the provider's DNS knows.
            self._refuse(ref, host, f"it does not resolve ({exc})", by_address=True)
        bad = [a for a in addresses if non_global_address(a)]
        if bad or not addresses:
            self._refuse(
                ref, host, f"it resolves to {', '.join(bad) or 'nothing'}", by_address=True
            )
        return host

    @staticmethod
    def _refuse(ref: str, host: str, why: str, by_address: bool = False) -> NoReturn:
        log.warning("registry policy refuses image %s: registry %s, because %s", ref, host, why)
        if by_address:
            raise RegistryAddressRefused(pull_failed_sentence(ref))
        raise RegistryRefused(f"the provider's registry policy refuses registry {host}")


def _is_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True
