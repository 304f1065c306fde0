"""The nftables rules of the egress network, as text for `nft -f`: pure functions of a plan.

Two tables the agent owns, both named after the network: an `inet` one (drops on the way out
and in, and the NAT) and a `bridge` one (no frame from one job's port to another's). IPv6 is
off on the network (every IPv6 packet from it dropped, and the containers' IPv6 disabled). Each
script replaces its tables in one transaction, so a restart after a crash starts clean and a
reader never sees half a rule set. A drop in any table is final whatever the engine's own
rules (Docker's or netavark's iptables) accept, so these rules hold with theirs in place.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,30}")
_IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
# Before conntrack and DNAT (-200, -100): the destination the job wrote is the one checked.
_PREROUTING_PRIORITY = -300


@dataclass(frozen=True)
class EgressPlan:
    """The egress network's names and addresses, and the destinations its jobs may not reach."""

    table: str  # nftables table name, the same in both families
    bridge: str  # the engine network's bridge interface on the host
    subnet: ipaddress.IPv4Network
    blocked: Sequence[ipaddress.IPv4Network]
    host: Sequence[ipaddress.IPv4Address] = ()

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.table):
            raise ValueError(f"nftables table name {self.table!r} must be [a-z][a-z0-9_]*")
        if not _IFNAME_RE.fullmatch(self.bridge):
            raise ValueError(f"bridge name {self.bridge!r} must be an interface name")


def _elements(items: Sequence[object]) -> str:
    return ", ".join(str(item) for item in items)


def _replace(family: str, table: str) -> str:
    # `add` makes the table exist so that `delete` cannot fail: together, "replace".
    return f"add table {family} {table}\ndelete table {family} {table}\n"


def _host_set(plan: EgressPlan) -> str:
    elements = f" elements = {{ {_elements(plan.host)} }}" if plan.host else ""
    return f"    set host4 {{ type ipv4_addr;{elements} }}\n"


def ruleset(plan: EgressPlan) -> str:
    """The whole rule set of the egress network: replaces whatever the agent left before."""
    br, subnet = f'"{plan.bridge}"', plan.subnet
    return (
        _replace("inet", plan.table)
        + _replace("bridge", plan.table)
        + f"""table inet {plan.table} {{
    set blocked4 {{ type ipv4_addr; flags interval; elements = {{ {_elements(plan.blocked)} }} }}
{_host_set(plan)}
    chain job_out {{
        meta nfproto ipv6 drop
        ip saddr != {subnet} drop
        ip daddr @blocked4 drop
        ip daddr @host4 drop
    }}
    chain prerouting {{
        type filter hook prerouting priority {_PREROUTING_PRIORITY}; policy accept;
        iifname {br} jump job_out
    }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        iifname {br} ct state established,related accept
        iifname {br} drop
    }}
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        oifname {br} ct state established,related accept
        oifname {br} drop
        iifname {br} ct state invalid drop
        iifname {br} jump job_out
        iifname {br} accept
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat - 10; policy accept;
        ip saddr {subnet} oifname != {br} masquerade
    }}
}}
{_bridge_table(plan)}"""
    )


def _bridge_table(plan: EgressPlan) -> str:
    # This kernel family cannot name the bridge (no `meta ibrname` everywhere), so the rule
    # names the job subnet, which only the egress bridge carries: a frame between two ports
    # from or to a job's address, another job's port its only way there. The gateway (the
    # host) is not a port, so what goes to it is not forwarded here.
    return f"""table bridge {plan.table} {{
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        ip saddr {plan.subnet} drop
        ip daddr {plan.subnet} drop
    }}
}}
"""


def host_update(plan: EgressPlan) -> str:
    """Replace the host's addresses in the rule set, in one transaction."""
    script = f"flush set inet {plan.table} host4\n"
    if plan.host:
        script += f"add element inet {plan.table} host4 {{ {_elements(plan.host)} }}\n"
    return script


def sealed(plan: EgressPlan) -> str:
    """While the agent is stopped and jobs stay on the network: nothing in or out of it."""
    br = f'"{plan.bridge}"'
    return (
        _replace("inet", plan.table)
        + _replace("bridge", plan.table)
        + f"""table inet {plan.table} {{
    chain prerouting {{
        type filter hook prerouting priority {_PREROUTING_PRIORITY}; policy accept;
        iifname {br} drop
    }}
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        oifname {br} drop
    }}
}}
{_bridge_table(plan)}"""
    )


def removal(plan: EgressPlan) -> str:
    return _replace("inet", plan.table) + _replace("bridge", plan.table)
