"""What an egress job may never reach: the fixed blocked ranges, the operator's additions and
the host's own addresses, and the model of the firewall's verdict that tests check it by.

The list is explicit on purpose. "Everything that is not global" would also block ranges a
provider may legitimately reach (and the RFC 2544 range the tests use as their internet), and
would change with each Python release's idea of what is global.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import psutil

IPv4Net = ipaddress.IPv4Network
IPv6Net = ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# (range, why): every IPv4 destination an egress job's packet is dropped for.
BLOCKED_IPV4: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network (RFC 791)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local, with the cloud metadata address 169.254.169.254"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments, some host-local (RFC 6890)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, with the broadcast address 255.255.255.255"),
)
# IPv6 is off on the egress network (every IPv6 packet from it is dropped); these are the
# ranges that would matter first were it on, kept so the set reads complete.
BLOCKED_IPV6: tuple[tuple[str, str], ...] = (
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped, which would reach the IPv4 ranges above"),
    ("fc00::/7", "unique local (the IPv6 private ranges)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
)


class BlockedRangeError(ValueError):
    """An operator's egress_block entry is not a CIDR range."""


def parse_ranges(entries: Iterable[str], *, field: str = "egress_block") -> list[IPv4Net | IPv6Net]:
    """The operator's CIDR ranges ("203.0.113.0/24", "2001:db8::/32", a bare address)."""
    ranges: list[IPv4Net | IPv6Net] = []
    for entry in entries:
        try:
            ranges.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            raise BlockedRangeError(
                f'{field}: {entry!r} is not a CIDR range like "203.0.113.0/24"'
            ) from None
    return ranges


def blocked_ipv4(extra: Sequence[IPv4Net | IPv6Net] = ()) -> list[IPv4Net]:
    """The fixed IPv4 ranges and the operator's, collapsed (nft refuses overlapping intervals)."""
    nets = [ipaddress.IPv4Network(cidr) for cidr, _ in BLOCKED_IPV4]
    nets.extend(net for net in extra if isinstance(net, IPv4Net))
    return list(ipaddress.collapse_addresses(nets))


def blocked_ipv6(extra: Sequence[IPv4Net | IPv6Net] = ()) -> list[IPv6Net]:
    nets = [ipaddress.IPv6Network(cidr) for cidr, _ in BLOCKED_IPV6]
    nets.extend(net for net in extra if isinstance(net, IPv6Net))
    return list(ipaddress.collapse_addresses(nets))


def host_addresses() -> tuple[list[ipaddress.IPv4Address], list[ipaddress.IPv6Address]]:
    """Every address on every interface of this host, now (psutil reads the kernel's list)."""
    v4: set[ipaddress.IPv4Address] = set()
    v6: set[ipaddress.IPv6Address] = set()
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            try:
                parsed = ipaddress.ip_address(addr.address.split("%")[0])
            except ValueError:
                continue  # a MAC address
            if isinstance(parsed, ipaddress.IPv4Address):
                v4.add(parsed)
            else:
                v6.add(parsed)
    return sorted(v4), sorted(v6)


def refused(
    address: Address,
    blocked: Sequence[IPv4Net],
    host: Iterable[ipaddress.IPv4Address] = (),
) -> bool:
    """Whether the firewall drops a new connection from an egress job to `address`: the model
    the rule builder's sets are made from, and what the tests hold them to."""
    if isinstance(address, ipaddress.IPv6Address):
        return True  # IPv6 is off on the egress network
    return address in set(host) or any(address in net for net in blocked)
