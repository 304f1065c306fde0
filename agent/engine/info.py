"""What the engine reports: its kind and GPU support (`EngineInfo`), a container's state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

_SIGKILL_EXIT = 137


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the engine is and how it can hand GPUs to a container."""

    flavor: Literal["docker", "podman"]
    version: str
    api_version: str
    runtimes: tuple[str, ...]
    default_runtime: str | None
    nvidia_runtime: bool  # an OCI runtime named "nvidia" is registered (NVIDIA toolkit present)
    cdi: bool  # the engine resolves CDI device names
    cdi_spec_dirs: tuple[str, ...]
    cgroup_version: str | None
    ncpu: int | None
    mem_total: int | None
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def gpu_modes(self) -> tuple[str, ...]:
        """The gpu_mode values this engine honours, best first; "none" always works."""
        modes: list[str] = []
        if self.flavor == "docker" and self.nvidia_runtime:
            modes.append("nvidia-runtime")  # Podman ignores Docker device requests
        if self.cdi:
            modes.append("cdi")
        return (*modes, "none")

    @property
    def gpu_mode(self) -> str:
        return self.gpu_modes[0]


@dataclass(frozen=True, slots=True)
class ContainerState:
    """A container's state from inspect. exit_code 137 means SIGKILL: the memory limit, or a
    stop whose grace ran out; Podman 4.3 reports oom_killed False even for the former."""

    status: str
    running: bool
    exit_code: int
    oom_killed: bool
    error: str
    pid: int
    started_at: str
    finished_at: str

    @property
    def killed(self) -> bool:
        return self.exit_code == _SIGKILL_EXIT

    @property
    def memory_kill_suspected(self) -> bool:
        return self.oom_killed or self.killed
