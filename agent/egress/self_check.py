"""`suanli-agent self-test`'s egress lines: what egress jobs could reach, checked without
touching the running agent's network (the rules are checked by the kernel, not installed)."""

from __future__ import annotations

from dataclasses import replace

from agent.egress import engine_network, firewall
from agent.egress.blocked import BLOCKED_IPV4, host_addresses
from agent.egress.ruleset import ruleset
from agent.egress.service import EgressNetwork
from agent.engine import Engine, EngineError

Check = tuple[str, bool, str]


async def egress_checks(egress: EgressNetwork) -> list[Check]:
    if not egress.allow:
        return [("egress", True, "off (allow_egress = false): jobs that ask egress are refused")]
    host = host_addresses()[0]
    plan = replace(egress.plan, host=host)
    try:
        firewall.ensure_forwarding()
        await firewall.apply(ruleset(plan), check_only=True)
    except firewall.FirewallError as exc:
        return [("egress", False, f"NOT AVAILABLE, egress jobs are refused: {exc}")]
    try:
        if await egress.engine.network(egress.name) is None:
            in_place = f"network {egress.name} is made when the agent starts"
        else:
            present = await engine_network.containers_on(egress.engine, egress.name)
            in_place = f"network {egress.name} in use by {len(present)} job(s)"
    except EngineError as exc:
        return [("egress", False, f"NOT AVAILABLE: the container engine: {exc.detail}")]
    fixed = ", ".join(cidr for cidr, _ in BLOCKED_IPV4)
    extra = [str(net) for net in plan.blocked if str(net) not in fixed]
    blocked = (
        f"blocked: {fixed}{', ' + ', '.join(extra) if extra else ''}; the host's "
        f"{len(host)} addresses ({', '.join(map(str, host))}); other jobs; all IPv6"
    )
    dns = ", ".join(egress.attachment.dns) or "none (set egress_dns to a public resolver)"
    return [
        ("egress", True, f"{in_place}; bridge {plan.bridge}, subnet {plan.subnet}; inbound closed"),
        ("egress blocked", True, blocked),
        ("egress resolvers", bool(egress.attachment.dns), dns),
    ]


async def run_egress_checks(
    socket_path: str, allow: bool, block: list[str], subnet: str, dns: list[str] | None
) -> list[Check]:
    engine = Engine(socket_path)
    try:
        network = EgressNetwork(engine, allow=allow, block=block, subnet=subnet, dns=dns)
        return await egress_checks(network)
    finally:
        await engine.close()
