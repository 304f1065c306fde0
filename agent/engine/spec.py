"""What a job container is: `ContainerSpec`, the agent's rules for it, checked on creation."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from agent.engine.errors import InvalidContainerSpec

GPU_MODES: tuple[str, ...] = ("nvidia-runtime", "cdi", "none")
# "none": a loopback only; "egress": the agent's egress network, named by `egress_network`.
NETWORKS: tuple[str, ...] = ("none", "egress")
# IPv6 off inside an egress job: its network has none, and link-local would reach neighbours.
EGRESS_SYSCTLS: Mapping[str, str] = MappingProxyType(
    {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
)

# The pinning the agent intended, on the container itself: checkable where no GPU exists, and
# read back when the agent re-adopts containers after a restart.
LABEL_GPU_MODE = "suanli.gpu-mode"
LABEL_GPU_UUIDS = "suanli.gpu-uuids"
_RESERVED_ENV = "NVIDIA_VISIBLE_DEVICES"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_IP_RE = re.compile(r"[0-9A-Fa-f.:]{2,45}")
_GPU_UUID_RE = re.compile(r"(GPU|MIG)-[A-Za-z0-9/-]+")
_MIN_MEMORY_BYTES = 6 << 20  # Docker refuses less
_TMPFS_PATH_RE = re.compile(r"(/[A-Za-z0-9_.-]+)+")
_MAX_ID = (1 << 32) - 1
SCRATCH_MOUNT = "/scratch"
# Who a Docker job runs as when the daemon does not remap user namespaces: nobody/nogroup.
FALLBACK_USER = "65534:65534"


def cdi_device_name(gpu_uuid: str) -> str:
    """The CDI name the NVIDIA Container Toolkit gives one GPU (`nvidia-ctk cdi generate`)."""
    return f"nvidia.com/gpu={gpu_uuid}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerSpec:
    """One job container as the agent wants it; the hardening is not optional.

    gpu_mode picks how the leased GPUs reach the container: "nvidia-runtime" (Docker device
    request for the NVIDIA driver), "cdi" (Container Device Interface names), or "none" (no GPU
    is attached; the intended UUIDs are still recorded in the labels).
    """

    name: str
    image: str
    command: Sequence[str]
    cpus_milli: int
    memory_bytes: int
    pids_limit: int
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    gpu_uuids: Sequence[str] = ()
    gpu_mode: str = "none"
    network: str = "none"
    egress_network: str = "suanli-egress"
    dns: Sequence[str] = ()  # resolvers of an egress job
    read_only_rootfs: bool = False
    user: str | None = None
    init: bool = False
    # Writable tmpfs mounts, path -> size in bytes. Their pages count against the container's
    # memory limit (the memory cgroup charges tmpfs to whoever writes it), so a full tmpfs
    # costs the job memory, never the host more than the limit.
    tmpfs: Mapping[str, int] = field(default_factory=dict)
    # A host directory (a scratch volume's mount, nodev and nosuid) bind-mounted writable at
    # SCRATCH_MOUNT in place of a tmpfs there. None: no volume.
    scratch_volume: str | None = None
    shm_bytes: int | None = None  # size of /dev/shm; the engine's default (64 MiB) when None
    # Bound of the engine's own log of the container on the host's disk (all files together);
    # the engine's default (often unbounded) when None.
    log_max_bytes: int | None = None
    # Container uid/gid 0..userns_size-1 appear on the host from userns_host_id on. On Docker,
    # whose user namespaces are a daemon setting, `Engine.create` runs the job as
    # FALLBACK_USER instead when the daemon does not remap. None: no namespace asked for.
    userns_host_id: int | None = None
    userns_size: int = 65536

    def __post_init__(self) -> None:
        if isinstance(self.command, str):
            raise InvalidContainerSpec(
                f"container spec {self.name!r}: the command must be a "
                "list of arguments, not one string"
            )

        def fix(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        fix("command", tuple(self.command))
        fix("gpu_uuids", tuple(self.gpu_uuids))
        fix("dns", tuple(self.dns))
        fix("env", MappingProxyType(dict(self.env)))
        fix("labels", MappingProxyType(dict(self.labels)))
        fix("tmpfs", MappingProxyType(dict(self.tmpfs)))
        problem = self._problem()
        if problem:
            raise InvalidContainerSpec(f"container spec {self.name!r}: {problem}")

    def _problem(self) -> str | None:
        if not _NAME_RE.fullmatch(self.name):
            return (
                "the name must be 1-128 letters, digits, '_', '.' or '-', starting with a "
                "letter or digit"
            )
        if not self.image or any(c.isspace() for c in self.image):
            return "the image reference is empty or contains whitespace"
        if not all(isinstance(arg, str) for arg in self.command):
            return "every command argument must be a string"
        if self.gpu_mode not in GPU_MODES:
            return f"gpu_mode must be one of {', '.join(GPU_MODES)}, not {self.gpu_mode!r}"
        if self.network not in NETWORKS:
            return f"network must be one of {', '.join(NETWORKS)}, not {self.network!r}"
        if not _NAME_RE.fullmatch(self.egress_network):
            return f"egress_network {self.egress_network!r} is not a network name"
        for server in self.dns:
            if not isinstance(server, str) or not _IP_RE.fullmatch(server):
                return f"dns server {server!r} is not an IP address"
        for uuid in self.gpu_uuids:
            if not _GPU_UUID_RE.fullmatch(uuid):
                return f"{uuid!r} is not a GPU UUID (GPU-... or MIG-...)"
        if len(set(self.gpu_uuids)) != len(self.gpu_uuids):
            return "a GPU UUID appears twice"
        if self.cpus_milli < 10:
            return "cpus_milli must be at least 10 (a hundredth of a CPU)"
        if self.memory_bytes < _MIN_MEMORY_BYTES:
            return f"memory_bytes must be at least {_MIN_MEMORY_BYTES}"
        if self.pids_limit < 1:
            return "pids_limit must be at least 1"
        for key in self.env:
            if not key or "=" in key or "\0" in key:
                return f"environment variable name {key!r} is empty or contains '=' or NUL"
            if key == _RESERVED_ENV:
                return f"{_RESERVED_ENV} is set by the agent from the lease's GPUs"
        for key in self.labels:
            if not key or key in (LABEL_GPU_MODE, LABEL_GPU_UUIDS):
                return f"label {key!r} is empty or reserved for the agent"
        for name in ("shm_bytes", "log_max_bytes"):
            value = getattr(self, name)
            if value is not None and value < 4096:
                return f"{name} must be at least 4096 when given"
        for path, size in self.tmpfs.items():
            if not _TMPFS_PATH_RE.fullmatch(path) or "/." in path:
                return f"tmpfs path {path!r} must be an absolute path of plain names, not /"
            if type(size) is not int or size < 4096:
                return f"tmpfs {path} must be at least 4096 bytes"
        if self.scratch_volume is not None and (
            not os.path.isabs(self.scratch_volume) or SCRATCH_MOUNT in self.tmpfs
        ):
            return f"scratch_volume must be an absolute host path, and {SCRATCH_MOUNT} no tmpfs"
        if self.userns_host_id is not None and not (
            1 <= self.userns_host_id
            and 1 <= self.userns_size
            and self.userns_host_id + self.userns_size <= _MAX_ID
        ):
            return "userns_host_id and userns_size must name a range of host ids above 0"
        return None

    @property
    def cdi_devices(self) -> tuple[str, ...]:
        return tuple(cdi_device_name(uuid) for uuid in self.gpu_uuids)

    @property
    def engine_network(self) -> str:
        """The engine's name for the job's network."""
        return self.egress_network if self.network == "egress" else "none"

    def engine_env(self) -> dict[str, str]:
        env = dict(self.env)
        # The NVIDIA hook (legacy mode) hands a container every GPU named here, and CUDA base
        # images set it to "all": the agent always decides, "void" meaning none.
        pinned = self.gpu_mode == "nvidia-runtime" and self.gpu_uuids
        env[_RESERVED_ENV] = ",".join(self.gpu_uuids) if pinned else "void"
        return env

    def engine_labels(self) -> dict[str, str]:
        return {
            **self.labels,
            LABEL_GPU_MODE: self.gpu_mode,
            LABEL_GPU_UUIDS: ",".join(self.gpu_uuids),
        }
