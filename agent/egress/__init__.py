"""Egress for jobs that ask `network: egress`: the internet yes, the provider's LAN, link-local
and metadata addresses, the host itself and other jobs no; nothing inbound.

A dedicated engine network (a bridge the agent names) plus nftables tables the agent owns,
installed at start and removed at stop. The blocked set is `BLOCKED_IPV4` (and IPv6, which
is off on the network), the operator's `egress_block` and every address of the host.
"""

from agent.egress.blocked import (
    BLOCKED_IPV4,
    BLOCKED_IPV6,
    BlockedRangeError,
    blocked_ipv4,
    host_addresses,
    parse_ranges,
    refused,
)
from agent.egress.ruleset import EgressPlan, ruleset
from agent.egress.service import NETWORK_NAME, EgressAttachment, EgressNetwork

__all__ = [
    "BLOCKED_IPV4",
    "BLOCKED_IPV6",
    "NETWORK_NAME",
    "BlockedRangeError",
    "EgressAttachment",
    "EgressNetwork",
    "EgressPlan",
    "blocked_ipv4",
    "host_addresses",
    "parse_ranges",
    "refused",
    "ruleset",
]
