"""The egress network over the agent's life: set up at start (or the reason it is not),
the host's addresses re-read before each egress job, torn down at stop."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from agent.egress import engine_network, firewall
from agent.egress.blocked import blocked_ipv4, host_addresses, parse_ranges, refused
from agent.egress.ruleset import EgressPlan, host_update, removal, ruleset, sealed
from agent.engine import Engine, EngineError

if TYPE_CHECKING:
    from agent.config import AgentSettings

log = logging.getLogger(__name__)
NETWORK_NAME = "suanli-egress"
RESOLV_CONF = Path("/etc/resolv.conf")


@dataclass(frozen=True)
class EgressAttachment:
    """What a job container needs to join the egress network."""

    network: str
    dns: tuple[str, ...]


def nameservers(text: str) -> list[str]:
    servers = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            servers.append(parts[1])
    return servers


def resolvers(
    configured: list[str] | None, blocked: list[ipaddress.IPv4Network], resolv_conf: Path
) -> tuple[str, ...]:
    """The resolvers egress jobs are given: the operator's, else the host's that the firewall
    lets a job reach (a LAN or loopback resolver is a blocked address, so it is left out)."""
    if configured is not None:
        return tuple(configured)
    try:
        listed = nameservers(resolv_conf.read_text())
    except OSError:
        return ()
    usable = []
    for server in listed:
        try:
            address = ipaddress.ip_address(server)
        except ValueError:
            continue
        if not refused(address, blocked):
            usable.append(server)
    return tuple(usable)


class EgressNetwork:
    """The egress network of one agent: `reason` is None once jobs may use it."""

    def __init__(
        self,
        engine: Engine,
        *,
        allow: bool,
        block: list[str],
        subnet: str,
        dns: list[str] | None = None,
        name: str = NETWORK_NAME,
        resolv_conf: Path = RESOLV_CONF,
    ) -> None:
        self.engine = engine
        self.allow = allow
        self.name = name
        net = ipaddress.IPv4Network(subnet)
        self.plan = EgressPlan(
            table=name.replace("-", "_"),
            bridge=name[:15],
            subnet=net,
            blocked=blocked_ipv4(parse_ranges(block)),
        )
        self.attachment = EgressAttachment(
            name, resolvers(dns, list(self.plan.blocked), resolv_conf)
        )
        self.reason: str | None = "the egress network is not set up yet"
        self._installed = False

    @classmethod
    def for_agent(cls, engine: Engine, settings: AgentSettings) -> EgressNetwork:
        return cls(
            engine,
            allow=settings.allow_egress,
            block=settings.egress_block,
            subnet=settings.egress_subnet,
            dns=settings.egress_dns,
        )

    @property
    def ready(self) -> bool:
        return self.reason is None

    def refusal(self) -> str | None:
        """Why an egress job cannot run here, in words for its owner (the provider's own
        details, paths and addresses, stay in the agent's log and self-test); None: it can."""
        if self.reason is None:
            return None
        if not self.allow:
            return "this provider's agent does not allow jobs with network egress"
        return (
            "this provider's agent cannot run jobs with network egress: its egress network "
            "could not be set up (the provider's agent log and self-test say why)"
        )

    async def start(self) -> None:
        """Set the network up; never raises: a failure is the reason, logged and kept."""
        if not self.allow:
            self.reason = "allow_egress is false in the agent's settings"
            log.info("egress off (allow_egress = false): jobs that ask egress are refused")
            await self._remove_leftovers()
            return
        try:
            firewall.ensure_forwarding()
            await firewall.apply(ruleset(self.plan), check_only=True)
            await engine_network.ensure_network(
                self.engine, self.name, self.plan.bridge, self.plan.subnet
            )
            self.plan = replace(self.plan, host=host_addresses()[0])
            await firewall.apply(ruleset(self.plan))
            self._installed = True
            self.reason = None
            log.info(
                "egress network %s ready: bridge %s, subnet %s, resolvers %s",
                self.name,
                self.plan.bridge,
                self.plan.subnet,
                ", ".join(self.attachment.dns) or "none",
            )
        except (firewall.FirewallError, engine_network.NetworkError) as exc:
            self.reason = str(exc)
        except EngineError as exc:
            self.reason = f"the container engine is not reachable: {exc.detail}"
        if self.reason is not None:
            log.warning("egress jobs refused: %s", self.reason)

    async def refresh_host_addresses(self) -> None:
        """Re-read the host's addresses into the rules; a failure closes egress, never opens."""
        if self.reason is not None:
            return
        current = host_addresses()[0]
        if list(current) == list(self.plan.host):
            return
        self.plan = replace(self.plan, host=current)
        try:
            await firewall.apply(host_update(self.plan))
        except firewall.FirewallError as exc:
            self.reason = f"the host's addresses changed and the rules could not follow: {exc}"
            log.error("%s", self.reason)
            with contextlib.suppress(firewall.FirewallError):
                await firewall.apply(sealed(self.plan))

    async def close(self, *, quiet: bool = False) -> None:
        """Remove the rules and the network; jobs still on it (left running for the agent's
        next start) keep a sealed rule set instead: no traffic in or out until then."""
        if not self._installed:
            return
        try:
            left = await engine_network.containers_on(self.engine, self.name)
            if left:
                await firewall.apply(sealed(self.plan))
                log.info("egress network sealed: %d job containers stay on it", len(left))
                return
            await firewall.apply(removal(self.plan))
            await engine_network.remove_network(self.engine, self.name)
        except (firewall.FirewallError, engine_network.NetworkError, EngineError) as exc:
            log.log(logging.DEBUG if quiet else logging.WARNING, "egress tear-down: %s", exc)

    async def _remove_leftovers(self) -> None:
        """An earlier run with allow_egress left its network on this engine: the same
        tear-down, best effort. Without that network here nothing is touched, so an agent
        of another engine on the host keeps its rules."""
        try:
            if await self.engine.network(self.name) is None:
                return
        except EngineError:
            return
        self._installed = True
        await self.close(quiet=True)
        self._installed = False
