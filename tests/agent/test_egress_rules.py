"""The egress blocked set, its nftables rules and the settings that shape them, without a
network: the rule builder's sets refuse exactly what the model refuses, every address of a
blocked range and none of the global ones."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import AgentConfigError, AgentSettings, load_agent_settings
from agent.egress import BLOCKED_IPV4, BLOCKED_IPV6, EgressPlan, blocked_ipv4, refused, ruleset
from agent.egress.blocked import BlockedRangeError, parse_ranges
from agent.egress.ruleset import host_update, removal, sealed
from agent.egress.service import resolvers
from agent.engine import ContainerSpec, InvalidContainerSpec
from agent.engine.hardening import build_create_body, build_libpod_create_body
from agent.engine.networks import bridge_network_body, libpod_bridge_network_body
from agent.lease import JobTerms

HOST = [ipaddress.IPv4Address("198.18.5.1"), ipaddress.IPv4Address("192.0.2.2")]
EXTRA = parse_ranges(["203.0.113.0/24", "2001:db8::/32"])
PLAN = EgressPlan(
    table="suanli_egress",
    bridge="suanli-egress",
    subnet=ipaddress.IPv4Network("10.254.77.0/24"),
    blocked=blocked_ipv4(EXTRA),
    host=HOST,
)
ipv4s = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)


def _set(text: str, name: str) -> list[ipaddress.IPv4Network]:
    match = re.search(rf"set {name} {{[^}}]*elements = {{ ([^}}]*) }}", text)
    assert match, f"no elements in set {name}"
    return [ipaddress.IPv4Network(item.strip()) for item in match.group(1).split(",")]


RULES = ruleset(PLAN)
RULE_BLOCKED = _set(RULES, "blocked4") + _set(RULES, "host4")


@given(ipv4s)
def test_the_rules_refuse_exactly_what_the_model_refuses(address: ipaddress.IPv4Address) -> None:
    in_rules = any(address in net for net in RULE_BLOCKED)
    assert in_rules == refused(address, PLAN.blocked, HOST)


@given(st.sampled_from([cidr for cidr, _ in BLOCKED_IPV4]), st.integers(0, 2**32 - 1))
def test_every_address_of_a_blocked_range_is_refused(cidr: str, offset: int) -> None:
    net = ipaddress.IPv4Network(cidr)
    address = net.network_address + offset % net.num_addresses
    assert refused(address, PLAN.blocked)
    assert any(address in rule for rule in RULE_BLOCKED)


@given(ipv4s)
def test_no_global_unicast_address_is_refused_unless_the_operator_or_the_host_says(
    address: ipaddress.IPv4Address,
) -> None:
    unicast = not (address.is_multicast or address.is_reserved)  # Python calls those global
    if (
        address.is_global
        and unicast
        and not any(address in net for net in EXTRA)
        and address not in HOST
    ):
        assert not refused(address, PLAN.blocked, HOST)


@pytest.mark.parametrize(
    "address, blocked",
    [
        ("169.254.169.254", True),  # cloud metadata
        ("100.100.100.200", True),  # Alibaba Cloud's metadata, inside CGNAT
        ("127.0.0.1", True),
        ("255.255.255.255", True),
        ("224.0.0.251", True),
        ("0.0.0.0", True),
        ("192.168.1.1", True),
        ("172.31.255.254", True),
        ("203.0.113.7", True),  # the operator's egress_block
        ("198.18.5.1", True),  # one of the host's own addresses, in an open range
        ("198.18.9.9", False),  # RFC 2544: not global, yet not in the explicit list
        ("192.0.2.9", False),  # documentation range: the same
        ("1.1.1.1", False),
        ("::1", True),
        ("fe80::1", True),
        ("2606:4700::1111", True),  # IPv6 is off on the egress network
    ],
)
def test_table_of_verdicts(address: str, blocked: bool) -> None:
    assert refused(ipaddress.ip_address(address), PLAN.blocked, HOST) is blocked


def test_the_fixed_list_is_explicit_and_documented() -> None:
    assert {cidr for cidr, _ in BLOCKED_IPV4} >= {
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "100.64.0.0/10",
        "0.0.0.0/8",
        "224.0.0.0/4",
    }
    assert {cidr for cidr, _ in BLOCKED_IPV6} >= {"::1/128", "fe80::/10", "fc00::/7"}
    assert all(why for _, why in BLOCKED_IPV4 + BLOCKED_IPV6)


def test_the_rule_set_drops_inbound_ipv6_spoofing_and_hosts_and_nats_out() -> None:
    assert RULES.startswith("add table inet suanli_egress\ndelete table inet suanli_egress\n")
    for rule in (
        "meta nfproto ipv6 drop",
        "ip saddr != 10.254.77.0/24 drop",
        'oifname "suanli-egress" drop',  # nothing new inbound
        'iifname "suanli-egress" drop',  # nothing to the host itself
        'ip saddr 10.254.77.0/24 oifname != "suanli-egress" masquerade',
        "ip saddr 10.254.77.0/24 drop",  # the bridge table: job to job
    ):
        assert rule in RULES, rule
    assert "masquerade" not in sealed(PLAN)
    assert 'iifname "suanli-egress" drop' in sealed(PLAN)
    assert host_update(PLAN).startswith("flush set inet suanli_egress host4\n")
    assert "198.18.5.1" in host_update(PLAN)
    assert removal(PLAN).count("delete table") == 2


@pytest.mark.parametrize(
    "table, bridge", [("bad-name", "br0"), ("ok", "much-too-long-bridge"), ("ok", 'a"; drop')]
)
def test_plan_names_cannot_inject_rules(table: str, bridge: str) -> None:
    with pytest.raises(ValueError):
        EgressPlan(table=table, bridge=bridge, subnet=PLAN.subnet, blocked=PLAN.blocked)


def test_resolvers_skip_what_the_firewall_would_drop(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nnameserver 192.168.1.1\nnameserver 1.1.1.1\n")
    assert resolvers(None, list(PLAN.blocked), conf) == ("1.1.1.1",)
    assert resolvers(["9.9.9.9"], list(PLAN.blocked), conf) == ("9.9.9.9",)
    assert resolvers(None, list(PLAN.blocked), tmp_path / "missing") == ()


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"job_network": "bridge"}, "allow_egress = true"),
        ({"job_network": "host"}, 'job_network must be "none"'),
        ({"egress_block": ["10.0.0.0/33"]}, "egress_block: '10.0.0.0/33' is not a CIDR"),
        ({"egress_subnet": "10.254.77.0"}, "egress_subnet must be a /16 to /28"),
        ({"egress_subnet": "fd00::/64"}, "egress_subnet: 'fd00::/64' is not an IPv4 range"),
        ({"egress_dns": ["one.one"]}, "egress_dns: 'one.one' is not an IP address"),
        ({"egress_dns": ["192.168.1.1"]}, "egress_dns: 192.168.1.1 is in the egress blocked"),
    ],
)
def test_bad_network_settings_are_refused_by_name(settings: dict[str, object], words: str) -> None:
    with pytest.raises(AgentConfigError, match=re.escape(words)):
        AgentSettings(**settings).validate()  # type: ignore[arg-type]


def test_agent_toml_takes_the_egress_keys(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\nallow_egress = true\negress_block = ["203.0.113.0/24"]\n'
        'egress_dns = ["1.1.1.1"]\n'
    )
    settings = load_agent_settings(path)
    assert settings.allow_egress and settings.egress_block == ["203.0.113.0/24"]
    assert settings.egress_dns == ["1.1.1.1"]
    path.write_text('[agent]\negress_block = "203.0.113.0/24"\n')
    with pytest.raises(AgentConfigError, match="egress_block must be a list"):
        load_agent_settings(path)
    with pytest.raises(BlockedRangeError):
        parse_ranges(["nonsense"])


def _spec(**overrides: object) -> ContainerSpec:
    values: dict[str, object] = {
        "name": "job",
        "image": "busybox",
        "command": ["true"],
        "cpus_milli": 100,
        "memory_bytes": 64 << 20,
        "pids_limit": 16,
    }
    return ContainerSpec(**{**values, **overrides})  # type: ignore[arg-type]


def test_container_bodies_join_the_egress_network_or_none() -> None:
    none = _spec()
    assert build_create_body(none)["HostConfig"]["NetworkMode"] == "none"
    assert "Dns" not in build_create_body(none)["HostConfig"]
    assert build_libpod_create_body(none)["netns"] == {"nsmode": "none"}
    egress = _spec(network="egress", egress_network="sl-egress", dns=["1.1.1.1"])
    host = build_create_body(egress)["HostConfig"]
    assert host["NetworkMode"] == "sl-egress" and host["Dns"] == ["1.1.1.1"]
    assert host["Sysctls"]["net.ipv6.conf.all.disable_ipv6"] == "1"
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == []  # no NET_ADMIN, no NET_RAW
    libpod = build_libpod_create_body(egress)
    assert libpod["netns"] == {"nsmode": "bridge"} and list(libpod["Networks"]) == ["sl-egress"]
    assert libpod["dns_server"] == ["1.1.1.1"] and libpod["cap_drop"] == ["ALL"]
    for bad in ({"network": "bridge"}, {"network": "host"}, {"dns": ["1.1.1.1; rm"]}):
        with pytest.raises(InvalidContainerSpec):
            _spec(**bad)


def test_a_lease_names_its_network_or_is_not_read() -> None:
    job = {"image": "x", "command": [], "env": {}, "cpus_milli": 100, "memory_bytes": 1 << 26}
    assert JobTerms.from_wire(job).network == "none"  # type: ignore[union-attr]
    egress = JobTerms.from_wire({**job, "network": "egress"})
    assert egress is not None and egress.network == "egress"
    assert egress.to_wire()["network"] == "egress"
    assert JobTerms.from_wire({**job, "network": "bridge"}) is None


def test_the_engine_network_has_ipv6_icc_and_the_engines_dns_off() -> None:
    docker = bridge_network_body("sl-egress", "sl-egress", PLAN.subnet, {"suanli.egress": "x"})
    assert docker["EnableIPv6"] is False and docker["Internal"] is False
    assert docker["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert docker["IPAM"]["Config"] == [{"Subnet": "10.254.77.0/24", "Gateway": "10.254.77.1"}]
    podman = libpod_bridge_network_body("sl-egress", "sl-egress", PLAN.subnet, {})
    assert podman["ipv6_enabled"] is False and podman["dns_enabled"] is False
    assert podman["network_interface"] == "sl-egress"
