"""What a job may take of the provider's host: its memory cap and the sizes of its scratch.

Pure functions of the host's figures and the agent's settings, so the runner's choices can
be checked without a host. Tmpfs pages are charged to the memory cgroup of whoever writes
them, so a job's scratch is carved out of its memory limit, never added to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = [
    "MIN_JOB_MEMORY_BYTES",
    "SCRATCH_PATH",
    "TMP_PATH",
    "JobLimits",
    "host_cpus_milli",
    "job_limits",
    "memory_cap",
]

MIN_JOB_MEMORY_BYTES = 6 << 20  # Docker refuses a smaller memory limit
SCRATCH_PATH = "/scratch"
TMP_PATH = "/tmp"


def host_cpus_milli() -> int:
    """The engine refuses a CPU limit above the host's CPUs; a job gets at most all of them."""
    return (os.cpu_count() or 1) * 1000


def memory_cap(
    asked: int, host_memory: int, reserve: int, leased_gpus: int, host_gpus: int, by_gpu_share: bool
) -> int:
    """The most memory a job gets: what it asked, at most the host's memory less the reserve,
    and (by_gpu_share) at most its GPUs' share of that, so that jobs on every GPU of the host
    together still leave the reserve. May be below MIN_JOB_MEMORY_BYTES: the host cannot run it."""
    available = max(0, host_memory - reserve)
    if by_gpu_share and host_gpus > 0:
        available = available * min(max(leased_gpus, 0), host_gpus) // host_gpus
    return min(asked, available)


@dataclass(frozen=True, slots=True)
class JobLimits:
    memory_bytes: int
    asked_memory_bytes: int
    tmpfs: dict[str, int]

    @property
    def memory_lowered(self) -> bool:
        return self.memory_bytes < self.asked_memory_bytes


def job_limits(
    asked_memory: int,
    host_memory: int,
    reserve: int,
    leased_gpus: int,
    host_gpus: int,
    by_gpu_share: bool,
    scratch_bytes: int,
    tmp_bytes: int,
) -> JobLimits:
    """The memory cap and the tmpfs mounts (/scratch at most half the cap, /tmp at most a
    quarter), so a full scratch leaves the job's processes a quarter of their memory."""
    memory = memory_cap(asked_memory, host_memory, reserve, leased_gpus, host_gpus, by_gpu_share)
    tmpfs = {
        SCRATCH_PATH: max(4096, min(scratch_bytes, memory // 2)),
        TMP_PATH: max(4096, min(tmp_bytes, memory // 4)),
    }
    return JobLimits(memory_bytes=memory, asked_memory_bytes=asked_memory, tmpfs=tmpfs)
