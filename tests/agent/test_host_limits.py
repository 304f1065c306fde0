"""A job's memory cap and scratch sizes from the host's figures and the agent's settings."""

from __future__ import annotations

import pytest

from agent.config import AgentConfigError, AgentSettings
from agent.host_limits import MIN_JOB_MEMORY_BYTES, job_limits, memory_cap

GIB = 1 << 30


@pytest.mark.parametrize(
    ("asked", "host", "reserve", "leased", "host_gpus", "share", "cap"),
    [
        (1 << 44, 256 * GIB, 4 * GIB, 1, 8, True, 252 * GIB // 8),  # the attack: 2^44 asked
        (1 << 44, 256 * GIB, 4 * GIB, 8, 8, True, 252 * GIB),
        (1 << 44, 256 * GIB, 4 * GIB, 1, 8, False, 252 * GIB),
        (16 * GIB, 256 * GIB, 4 * GIB, 1, 8, True, 16 * GIB),  # within its share: as asked
        (1 << 44, 256 * GIB, 4 * GIB, 3, 2, True, 252 * GIB),  # never more than the host
        (1 << 44, 256 * GIB, 4 * GIB, 1, 0, True, 252 * GIB),  # no GPUs counted: no share
        (1 << 44, 2 * GIB, 4 * GIB, 1, 1, True, 0),  # the reserve takes it all
    ],
)
def test_memory_cap(
    asked: int, host: int, reserve: int, leased: int, host_gpus: int, share: bool, cap: int
) -> None:
    assert memory_cap(asked, host, reserve, leased, host_gpus, share) == cap


def test_jobs_on_every_gpu_leave_the_reserve() -> None:
    host, reserve = 1000 * GIB + 12345, 7 * GIB
    caps = [memory_cap(1 << 44, host, reserve, gpus, 8, True) for gpus in (1, 2, 5)]
    assert sum(caps) <= host - reserve


def test_scratch_is_carved_out_of_the_memory_cap() -> None:
    limits = job_limits(1 << 44, 64 * GIB, 4 * GIB, 1, 2, True, 8 * GIB, 1 * GIB)
    assert limits.memory_bytes == 30 * GIB and limits.memory_lowered
    assert limits.tmpfs == {"/scratch": 8 * GIB, "/tmp": 1 * GIB}
    small = job_limits(64 << 20, 64 * GIB, 4 * GIB, 1, 2, True, 8 * GIB, 1 * GIB)
    assert not small.memory_lowered
    assert small.tmpfs == {"/scratch": 32 << 20, "/tmp": 16 << 20}
    assert sum(small.tmpfs.values()) < small.memory_bytes
    assert MIN_JOB_MEMORY_BYTES == 6 << 20


def test_limit_settings_are_checked() -> None:
    AgentSettings(memory_reserve_bytes=0).validate()
    with pytest.raises(AgentConfigError, match="memory_reserve_bytes"):
        AgentSettings(memory_reserve_bytes=-1).validate()
    with pytest.raises(AgentConfigError, match="engine_log_max_bytes"):
        AgentSettings(engine_log_max_bytes=1000).validate()
    with pytest.raises(AgentConfigError, match="userns_host_id"):
        AgentSettings(userns_host_id=(1 << 32) - 100).validate()
