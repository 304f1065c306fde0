"""Egress for real, on both engines: a job on the agent's egress network reaches the
"internet" namespace and nothing else (the LAN namespace, the metadata address, this host's
addresses, another job), nothing connects into it, and a hostile job cannot route, spoof or
use IPv6 around the rules. Network namespaces, nft tables and engine networks are removed."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from engines import BUSYBOX_IMAGE
from netns import METADATA, PORT, World, ip, leftovers, world

from agent.egress import EgressNetwork
from agent.egress.self_check import egress_checks
from agent.engine import ContainerSpec, Engine, EngineError

pytestmark = pytest.mark.integration

# Each line of a probe's output: "<label> open" when the line came back, "<label> closed".
_PROBE = """
try() {
    got=$(echo x | nc -w 2 "$2" "$3" 2>/dev/null)
    [ -n "$got" ] && echo "$1 open" || echo "$1 closed"
}
may() { label=$1; shift; "$@" >/dev/null 2>&1 && echo "$label open" || echo "$label closed"; }
"""


def _tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout


@pytest.fixture
def hosts() -> Any:
    with world() as made:
        yield made
    assert not [name for name in leftovers() if name.endswith(made.internet.name[-6:])]


@pytest.fixture
async def egress(engine: Engine, hosts: World) -> AsyncIterator[EgressNetwork]:
    tag = secrets.token_hex(3)
    network = EgressNetwork(
        engine,
        allow=True,
        block=[],
        subnet=f"10.254.{secrets.randbelow(200) + 20}.0/24",
        dns=[hosts.internet.address],  # the internet host's resolver
        name=f"sl-egt{tag}",
    )
    await network.start()
    try:
        yield network
    finally:
        for container in await engine.list({"suanli.test": network.name}):
            with contextlib.suppress(EngineError):
                await engine.remove(container["Id"], force=True)
        await network.close()
        assert network.plan.table not in _tables()
        assert await engine.network(network.name) is None


def _spec(egress: EgressNetwork, name: str, script: str, network: str = "egress") -> ContainerSpec:
    return ContainerSpec(
        name=f"{egress.name}-{name}",
        image=BUSYBOX_IMAGE,
        command=["sh", "-c", _PROBE + script],
        cpus_milli=500,
        memory_bytes=64 << 20,
        pids_limit=64,
        labels={"suanli.test": egress.name},
        network=network,
        egress_network=egress.attachment.network,
        dns=egress.attachment.dns,
        read_only_rootfs=True,
        tmpfs={"/tmp": 1 << 20},
    )


async def _run(engine: Engine, spec: ContainerSpec) -> str:
    container = await engine.create(spec)
    await engine.start(container)
    await engine.wait(container, timeout_s=120)
    return b"".join([chunk async for _, chunk in engine.logs(container)]).decode()


async def _start(engine: Engine, spec: ContainerSpec) -> tuple[str, str]:
    """Start a long-running container; its id and its address on the egress network."""
    container = await engine.create(spec)
    await engine.start(container)
    networks = (await engine.inspect(container))["NetworkSettings"]["Networks"]
    return container, str(next(iter(networks.values()))["IPAddress"])


def _verdicts(output: str) -> dict[str, str]:
    pairs = (
        line.rsplit(" ", 1) for line in output.splitlines() if line.endswith(("open", "closed"))
    )
    return dict(pairs)


async def test_an_egress_job_reaches_the_internet_and_nothing_of_the_provider(
    engine: Engine, egress: EgressNetwork, hosts: World
) -> None:
    assert egress.ready, egress.reason
    neighbour, neighbour_ip = await _start(
        engine,
        _spec(egress, "neighbour", "while true; do echo neighbour | nc -l -p 7000; done"),
    )
    gateway = str(egress.plan.subnet.network_address + 1)
    port = hosts.host_server_port
    script = f"""
try internet {hosts.internet.address} {PORT}
try lan {hosts.lan.address} {PORT}
try metadata {METADATA} {PORT}
try host-gateway {gateway} {port}
try host-eth {hosts.internet.host_side} {port}
try host-lan-side {hosts.lan.host_side} {port}
try neighbour {neighbour_ip} 7000
"""
    for address in sorted({str(a) for a in egress.plan.host} - {"127.0.0.1"}):
        script += f"try host-{address} {address} {port}\n"
    verdicts = _verdicts(await _run(engine, _spec(egress, "probe", script)))
    assert verdicts.pop("internet") == "open", verdicts
    assert verdicts and set(verdicts.values()) == {"closed"}, verdicts
    # the controls: each of those servers answers whoever may reach it
    assert hosts.lan.connects(hosts.lan.host_side, port)
    assert hosts.internet.connects(METADATA, PORT)
    probe_self = await _run(
        engine, _spec(egress, "self", "nc -l -p 7001 -e echo me & sleep 1; try self 127.0.0.1 7001")
    )
    assert _verdicts(probe_self) == {"self": "open"}
    # inbound: the LAN cannot open a connection to a job
    assert not hosts.lan.connects(neighbour_ip, 7000)
    await engine.remove(neighbour, force=True)


async def test_an_egress_job_resolves_names_through_the_resolver_it_is_given(
    engine: Engine, egress: EgressNetwork, hosts: World
) -> None:
    """Podman writes the resolver into the job's resolv.conf; Docker's embedded resolver
    forwards to it from the job's own namespace, so both pass the same rules."""
    output = await _run(engine, _spec(egress, "dns", "nslookup -type=a files.example.test"))
    assert f"Address: {hosts.internet.address}" in output, output


async def test_self_test_shows_what_egress_jobs_cannot_reach(
    engine: Engine, egress: EgressNetwork
) -> None:
    checks = {name: (ok, detail) for name, ok, detail in await egress_checks(egress)}
    ok, detail = checks["egress"]
    assert ok and f"network {egress.name} in use by 0 job(s)" in detail, detail
    ok, detail = checks["egress blocked"]
    assert ok and "10.0.0.0/8" in detail and "169.254.0.0/16" in detail and "IPv6" in detail
    assert checks["egress resolvers"] == (True, egress.attachment.dns[0])


async def test_a_new_host_address_joins_the_blocked_set_before_the_next_egress_job(
    engine: Engine, egress: EgressNetwork, hosts: World
) -> None:
    added = hosts.internet.host_side.rsplit(".", 1)[0] + ".77"  # in the open 198.18/15

    def host_set() -> str:
        command = ["nft", "list", "set", "inet", egress.plan.table, "host4"]
        return subprocess.run(command, capture_output=True, text=True).stdout

    ip("addr", "add", f"{added}/32", "dev", hosts.internet.link)
    try:
        await egress.refresh_host_addresses()
        assert added in host_set()
        script = f"try new-host-address {added} {hosts.host_server_port}"
        assert _verdicts(await _run(engine, _spec(egress, "newaddr", script))) == {
            "new-host-address": "closed"
        }
    finally:
        ip("addr", "del", f"{added}/32", "dev", hosts.internet.link)
    await egress.refresh_host_addresses()
    assert added not in host_set()


async def test_a_job_with_network_none_reaches_nothing(
    engine: Engine, egress: EgressNetwork, hosts: World
) -> None:
    script = f"try internet {hosts.internet.address} {PORT}\ntry lan {hosts.lan.address} {PORT}\n"
    verdicts = _verdicts(await _run(engine, _spec(egress, "none", script, network="none")))
    assert verdicts == {"internet": "closed", "lan": "closed"}


async def test_a_hostile_job_cannot_route_spoof_or_use_ipv6_around_the_rules(
    engine: Engine, egress: EgressNetwork, hosts: World
) -> None:
    lan, inet = hosts.lan.address, hosts.internet.address
    script = f"""
may route-added ip route add {lan}/32 dev eth0
may addr-added ip addr add {hosts.lan.host_side}/32 dev eth0
may promisc ip link set eth0 promisc on
may raw-ping ping -c 1 -W 1 {inet}
may ipv6-on sh -c 'echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6'
may ipv6-address sh -c '[ -n "$(ip -6 addr show)" ]'
try ipv6-host-link-local fe80::1%eth0 {PORT}
try metadata-again {METADATA} {PORT}
try lan-again {lan} {PORT}
try internet {inet} {PORT}
"""
    verdicts = _verdicts(await _run(engine, _spec(egress, "hostile", script)))
    assert verdicts.pop("internet") == "open", verdicts
    assert set(verdicts.values()) == {"closed"}, verdicts
    assert len(verdicts) == 9


async def test_egress_set_up_twice_replaces_the_rules_and_sealing_keeps_jobs_offline(
    engine: Engine, egress: EgressNetwork, hosts: World
) -> None:
    """A restart after a crash finds the rules and network of the last run; a stop with a job
    left on the network seals it rather than leaving it unfiltered."""
    again = EgressNetwork(
        engine,
        allow=True,
        block=[f"{hosts.internet.address}/32"],  # the operator's addition
        subnet=str(egress.plan.subnet),
        name=egress.name,
    )
    await again.start()
    assert again.ready, again.reason
    assert _tables().count(egress.plan.table) == 2  # inet and bridge, once each
    verdicts = _verdicts(
        await _run(
            engine, _spec(egress, "blocked", f"try internet {hosts.internet.address} {PORT}")
        )
    )
    assert verdicts == {"internet": "closed"}
    await egress.start()  # back to no operator additions
    sleeper, _ = await _start(
        engine, _spec(egress, "sleeper", f"sleep 3; try internet {hosts.internet.address} {PORT}")
    )
    await egress.close()  # the sleeper is still on the network: sealed
    assert egress.plan.table in _tables()
    await engine.wait(sleeper, timeout_s=60)
    output = b"".join([c async for _, c in engine.logs(sleeper)]).decode()
    assert _verdicts(output) == {"internet": "closed"}
    await engine.remove(sleeper, force=True)
    await egress.start()
    await asyncio.sleep(0)


async def test_an_agent_without_egress_says_why(engine: Engine) -> None:
    off = EgressNetwork(engine, allow=False, block=[], subnet="10.254.9.0/24", name="sl-egoff")
    await off.start()
    assert not off.ready
    assert off.refusal() == "this provider's agent does not allow jobs with network egress"
    assert off.reason == "allow_egress is false in the agent's settings"
