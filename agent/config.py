"""The agent's settings: one table of name, default and help; TOML file, then flags on top."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.egress.blocked import BlockedRangeError, blocked_ipv4, parse_ranges, refused
from agent.metrics_listen import parse_metrics_listen
from agent.registry_policy import RegistryPolicy
from shared.coordinator_urls import TransportError, parse_coordinator_urls
from shared.errors import SuanliError
from shared.money import parse_yuan
from shared.settings_file import describe, read_table, setting, typed_values

USERNS_SIZE = 65536  # ids of one job's user namespace: 0 to 65535, as in a usual /etc/subuid range


class AgentConfigError(SuanliError):
    """The agent's configuration file or flags are invalid."""

    code = "bad_agent_config"


@dataclass(frozen=True)
class AgentSettings:
    coordinator_urls: list[str] | None = setting(
        None,
        "coordinator URLs, the leader and its standbys in any order "
        '(["https://a.example.cn", "https://b.example.cn"]); unset: the enrolment\'s',
    )
    coordinator_url: str | None = setting(
        None, "one coordinator URL: the same as coordinator_urls with one item"
    )
    ca_file: str | None = setting(None, "CA bundle that signs the coordinator's certificate")
    state_dir: str = setting("/var/lib/suanli-agent", "key, enrolment and receipt spool live here")
    ask_per_gpu_hour: str | None = setting(
        None, 'ask price in yuan per GPU-hour, e.g. "12.50"; unset: offer nothing'
    )
    offered_gpus: list[int] | None = setting(None, "GPU indexes offered to the market; unset: all")
    engine_socket: str = setting("/run/docker.sock", "Docker Engine API socket (Docker or Podman)")
    gpu_mode: str = setting("auto", "GPU pinning: auto, nvidia-runtime, cdi or none")
    heartbeat_interval_s: int = setting(10, "seconds between heartbeats")
    sample_interval_ms: int = setting(1000, "milliseconds between NVML samples")
    receipt_interval_s: int = setting(60, "seconds between signed receipts of a running lease")
    acceptance_deadline_s: int = setting(
        600, "stop a job if none of its receipts is accepted by then"
    )
    job_network: str = setting(
        "none", "network of jobs that ask none: none, the only value (egress: allow_egress)"
    )
    allow_egress: bool = setting(
        False,
        "run jobs that ask network egress: the internet, but not this host, its LAN, "
        "link-local, metadata or other jobs' addresses",
    )
    egress_block: list[str] = setting(
        list, 'CIDR ranges egress jobs may not reach on top of the fixed set ("203.0.113.0/24")'
    )
    egress_subnet: str = setting(
        "10.254.77.0/24", "IPv4 subnet of the egress network's bridge (a range the host lacks)"
    )
    egress_dns: list[str] | None = setting(
        None,
        "resolvers egress jobs use; unset: the host's /etc/resolv.conf nameservers "
        "that the firewall lets them reach",
    )
    max_job_log_bytes: int = setting(16 << 20, "job log bytes shipped to the coordinator per lease")
    pids_limit: int = setting(4096, "most processes one job may run")
    stop_grace_s: int = setting(30, "seconds between SIGTERM and SIGKILL when stopping a job")
    image_pull_timeout_s: int = setting(1800, "longest an image pull may take")
    image_max_bytes: int = setting(64 << 30, "largest image the agent will pull")
    disk_path: str = setting("/", "filesystem reported as the host's disk")
    engine_log_max_bytes: int = setting(
        64 << 20, "most bytes of one job's log the engine keeps on the host's disk"
    )
    memory_reserve_bytes: int = setting(
        4 << 30, "host memory never given to jobs; a job gets at most the rest"
    )
    memory_by_gpu_share: bool = setting(
        True, "cap a job's memory at its GPUs' share of the host's (memory - reserve)"
    )
    scratch_bytes: int = setting(
        8 << 30,
        "writable tmpfs at /scratch (the root filesystem is read-only); "
        "counts as the job's memory, at most half of it",
    )
    scratch_dir: str | None = setting(
        None,
        "directory on the data disk for jobs' scratch volumes (--scratch), each a loop-mounted "
        "ext4 image of the size asked (needs root); unset: no scratch is offered",
    )
    scratch_reserve_bytes: int = setting(
        10 << 30, "space on scratch_dir's filesystem never given to scratch volumes"
    )
    tmp_bytes: int = setting(
        1 << 30, "writable tmpfs at /tmp; counts as the job's memory, at most a quarter of it"
    )
    userns_host_id: int = setting(
        1_000_000_000,
        "host uid/gid that container root maps to "
        "(Podman; Docker needs userns-remap, else jobs run as 65534)",
    )
    registry_allow: list[str] | None = setting(
        None,
        "registry hosts jobs' images may come from "
        '("docker.io" for Docker Hub, "*.example.cn"); unset: any',
    )
    registry_refuse_private: bool = setting(
        True,
        "refuse registry hosts that are or resolve to loopback, link-local or private addresses",
    )
    # -- metrics --
    metrics_listen: str = setting(
        "127.0.0.1:9400", 'host:port of the Prometheus /metrics endpoint; "off" to disable'
    )
    metrics_allow_remote: bool = setting(
        False, "let metrics_listen be a non-loopback address (the endpoint has no authentication)"
    )

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        return describe(cls)

    def with_overrides(self, **overrides: Any) -> AgentSettings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def ask_micro_yuan(self) -> int | None:
        if self.ask_per_gpu_hour is None:
            return None
        return parse_yuan(self.ask_per_gpu_hour, field="ask_per_gpu_hour")

    def with_coordinators(self, urls: str | None) -> AgentSettings:
        """These settings with the coordinator URLs of a flag (commas between several), which
        replace either key of the file; unchanged when `urls` is None."""
        if urls is None:
            return self
        try:
            listed = list(parse_coordinator_urls(urls))
        except TransportError as exc:
            raise AgentConfigError(f"--coordinator: {exc.detail}") from None
        return replace(self, coordinator_urls=listed, coordinator_url=None)

    @property
    def coordinators(self) -> list[str] | None:
        """The coordinator URLs these settings name, whichever key names them; None: unset."""
        if self.coordinator_urls is not None:
            return list(self.coordinator_urls)
        return None if self.coordinator_url is None else [self.coordinator_url]

    def validate(self) -> AgentSettings:
        self.ask_micro_yuan  # noqa: B018 - raises on a bad price
        if self.coordinator_urls is not None and self.coordinator_url is not None:
            raise AgentConfigError(
                "coordinator_urls and coordinator_url are both set; keep coordinator_urls "
                "(a list of one or more URLs) and remove coordinator_url"
            )
        for name in ("coordinator_urls", "coordinator_url"):
            value = getattr(self, name)
            try:
                if value is not None:
                    parse_coordinator_urls(value)
            except TransportError as exc:
                raise AgentConfigError(f"{name}: {exc.detail}") from None
        if self.gpu_mode not in ("auto", "nvidia-runtime", "cdi", "none"):
            raise AgentConfigError("gpu_mode must be auto, nvidia-runtime, cdi or none")
        check_network_settings(self)
        for name in (
            "heartbeat_interval_s",
            "receipt_interval_s",
            "acceptance_deadline_s",
            "sample_interval_ms",
            "max_job_log_bytes",
            "pids_limit",
            "stop_grace_s",
            "image_pull_timeout_s",
            "image_max_bytes",
            "engine_log_max_bytes",
            "scratch_bytes",
            "tmp_bytes",
            "userns_host_id",
        ):
            if getattr(self, name) <= 0:
                raise AgentConfigError(f"{name} must be positive")
        if self.memory_reserve_bytes < 0:
            raise AgentConfigError("memory_reserve_bytes must not be negative")
        if self.scratch_reserve_bytes < 0:
            raise AgentConfigError("scratch_reserve_bytes must not be negative")
        if self.scratch_dir is not None and not Path(self.scratch_dir).is_absolute():
            raise AgentConfigError(f"scratch_dir must be an absolute path, not {self.scratch_dir}")
        if self.engine_log_max_bytes < 64 << 10:
            raise AgentConfigError("engine_log_max_bytes must be at least 65536")
        if self.userns_host_id + USERNS_SIZE >= 1 << 32:
            raise AgentConfigError(f"userns_host_id must leave {USERNS_SIZE} ids below 2^32")
        if self.registry_allow is not None and not all(
            isinstance(h, str) and h and not any(c.isspace() or c == "/" for c in h)
            for h in self.registry_allow
        ):
            raise AgentConfigError(
                'registry_allow must list registry hosts like "registry.example.cn"'
            )
        metrics_address(self)
        return self

    @property
    def registry_policy(self) -> RegistryPolicy:
        allow = None if self.registry_allow is None else tuple(self.registry_allow)
        return RegistryPolicy(allow=allow, refuse_private=self.registry_refuse_private)


def check_network_settings(settings: AgentSettings) -> None:
    """job_network, and the egress settings: each refused naming the key and what it takes."""
    if settings.job_network == "bridge":
        raise AgentConfigError(
            'job_network = "bridge" would put jobs on the provider\'s LAN and is no longer '
            "offered; remove it (jobs get no network) and set allow_egress = true to run "
            "jobs that ask for the internet without the LAN"
        )
    if settings.job_network != "none":
        raise AgentConfigError('job_network must be "none" (egress: set allow_egress = true)')
    try:
        ranges = parse_ranges(settings.egress_block)
    except BlockedRangeError as exc:
        raise AgentConfigError(str(exc)) from None
    try:
        subnet = ipaddress.IPv4Network(settings.egress_subnet)
    except ValueError:
        raise AgentConfigError(
            f'egress_subnet: {settings.egress_subnet!r} is not an IPv4 range like "10.254.77.0/24"'
        ) from None
    dns: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for server in settings.egress_dns or ():
        try:
            dns.append(ipaddress.ip_address(server))
        except ValueError:
            raise AgentConfigError(
                f'egress_dns: {server!r} is not an IP address like "1.1.1.1"'
            ) from None
    if not 16 <= subnet.prefixlen <= 28:
        raise AgentConfigError("egress_subnet must be a /16 to /28 range")
    blocked = blocked_ipv4(ranges)
    for address in dns:
        if refused(address, blocked):
            raise AgentConfigError(
                f"egress_dns: {address} is in the egress blocked set, so jobs could not reach it; "
                "name a public resolver"
            )


def metrics_address(settings: AgentSettings) -> tuple[str, int] | None:
    """Where /metrics listens, or None when metrics_listen is off; a bad value names it."""
    return parse_metrics_listen(
        settings.metrics_listen, settings.metrics_allow_remote, AgentConfigError
    )


def load_agent_settings(path: Path | None) -> AgentSettings:
    if path is None:
        return AgentSettings()
    section = read_table(path, "agent", AgentConfigError, whole_file=True)
    special = {
        name: section.pop(name)
        for name in (
            "offered_gpus",
            "ask_per_gpu_hour",
            "registry_allow",
            "coordinator_urls",
            "egress_block",
            "egress_dns",
        )
        if name in section
    }
    allow = special.get("registry_allow")
    if "registry_allow" in special and (
        type(allow) is not list or not all(type(h) is str for h in allow)
    ):
        raise AgentConfigError(f"{path}: registry_allow must be a list of registry hosts")
    urls = special.get("coordinator_urls")
    if "coordinator_urls" in special and (
        type(urls) is not list or not all(type(url) is str for url in urls)
    ):
        raise AgentConfigError(
            f'{path}: coordinator_urls must be a list of URLs like ["https://a.example.cn"]'
        )
    offered = special.get("offered_gpus")
    if "offered_gpus" in special and (
        type(offered) is not list or not all(type(i) is int and i >= 0 for i in offered)
    ):
        raise AgentConfigError(f"{path}: offered_gpus must be a list of GPU indexes")
    if "ask_per_gpu_hour" in special and type(special["ask_per_gpu_hour"]) is not str:
        raise AgentConfigError(
            f'{path}: ask_per_gpu_hour must be a quoted yuan amount like "12.50"'
        )
    for name in ("egress_block", "egress_dns"):
        listed = special.get(name)
        if name in special and (
            type(listed) is not list or not all(type(x) is str for x in listed)
        ):
            raise AgentConfigError(f'{path}: {name} must be a list of strings like ["1.1.1.1"]')
    values = typed_values(section, AgentSettings, path, AgentConfigError)
    return AgentSettings(**values, **special).validate()
