"""Scratch through the real processes on Docker and on Podman: `suanli job submit --scratch`, a
coordinator, `suanli-agent run` with scratch_dir. The job writes to /scratch, a write past its
size fails with ENOSPC, the volume is nodev,nosuid, and it is gone after the job; a crashed
agent's leftovers go at its next start; an agent without scratch_dir (or egress) never gets
such a job, which says why it waits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_harness import AgentProcess, until_offered
from coordinator_harness import FAST_SETTINGS, Api, CoordinatorProcess
from engines import BUSYBOX_IMAGE, EngineService
from fake_nvml.fixture import FakeGpu

from agent.scratch import ScratchVolumes

SUANLI = Path(sys.executable).parent / "suanli"
GPUS = [FakeGpu(uuid="GPU-5c7a0000-0000-4000-8000-000000000001")]
MIB = 1 << 20

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
    reason="scratch volumes need root and loop devices",
)


@dataclass
class Market:
    coordinator: CoordinatorProcess
    agent: AgentProcess
    api: Api
    scratch_dir: Path | None

    async def suanli(self, *args: str, timeout_s: float = 120) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUANLI_")}
        env |= {"SUANLI_COORDINATOR": self.coordinator.url, "SUANLI_TOKEN": str(self.api.token)}
        process = await asyncio.create_subprocess_exec(
            str(SUANLI),
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
        assert process.returncode is not None and b"Traceback" not in err, err
        return process.returncode, out.decode(), err.decode()

    async def submit(self, script: str, *options: str) -> str:
        code, out, err = await self.suanli(
            "job",
            "submit",
            "--image",
            BUSYBOX_IMAGE,
            "--gpus",
            "1",
            "--cpus",
            "0.5",
            "--memory",
            "128MiB",
            "--max-duration",
            "10m",
            "--max-price-per-gpu-hour",
            "10",
            *options,
            "--",
            "sh",
            "-c",
            script,
        )
        assert code == 0, err
        return out.strip()


async def _market(
    workdir: Path, engine_service: EngineService, scratch: bool
) -> AsyncIterator[Market]:
    (workdir / "coordinator").mkdir()
    coordinator = CoordinatorProcess(
        workdir / "coordinator",
        settings={**FAST_SETTINGS, "heartbeat_timeout_ms": 15_000, "start_deadline_ms": 60_000},
    )
    coordinator.start()
    agent = AgentProcess(workdir / "agent", coordinator, engine_service.socket, GPUS)
    agent.workdir.mkdir()
    scratch_dir = workdir / "scratch" if scratch else None
    if scratch_dir is not None:
        agent.settings |= {"scratch_dir": str(scratch_dir), "scratch_reserve_bytes": 0}
        # what an agent that crashed with a job running would leave behind
        ScratchVolumes(scratch_dir).create("lease_left_by_a_crash", 16 * MIB)
    api = Api(coordinator.url, coordinator.add_enterprise(51))
    try:
        agent.enroll()
        agent.start()
        await until_offered(api, agent, len(GPUS))
        yield Market(coordinator, agent, api, scratch_dir)
    finally:
        agent.stop()
        coordinator.stop()
        await api.close()
        for container in engine_service.containers_of(agent.agent_id):
            engine_service.request("DELETE", f"/v1.41/containers/{container['Id']}?force=true")
        if scratch_dir is not None:
            ScratchVolumes(scratch_dir).remove_leftovers(set())


@pytest.fixture
async def with_scratch(tmp_path: Path, engine_service: EngineService) -> AsyncIterator[Market]:
    async for market in _market(tmp_path, engine_service, scratch=True):
        yield market


@pytest.fixture
async def without_scratch(tmp_path: Path, engine_service: EngineService) -> AsyncIterator[Market]:
    async for market in _market(tmp_path, engine_service, scratch=False):
        yield market


def _loops(scratch_dir: Path) -> str:
    listed = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    return "\n".join(line for line in listed.stdout.splitlines() if str(scratch_dir) in line)


JOB = (
    "grep ' /scratch ' /proc/self/mountinfo; "
    "dd if=/dev/zero of=/scratch/half bs=1M count=32 2>/dev/null && echo wrote 32 MiB; "
    "dd if=/dev/zero of=/scratch/more bs=1M count=64; echo second dd exited $?; "
    "ln -s /etc/passwd /scratch/passwd-link && ln -s / /scratch/root-link; "
    "mknod /scratch/disk b 7 0 2>/dev/null && echo mknod made a device || echo mknod refused; "
    "sleep 2; echo done"
)


async def test_a_scratch_job_has_its_size_and_leaves_nothing(with_scratch: Market) -> None:
    market, scratch_dir = with_scratch, with_scratch.scratch_dir
    assert scratch_dir is not None
    assert "removed the scratch of 1 ended leases" in market.agent.log()
    assert list((scratch_dir / "volumes").iterdir()) == [], "the crash's leftover is gone"

    job_id = await market.submit(JOB, "--scratch", "64M")
    code, shown, _ = await market.suanli("job", "show", job_id)
    rows = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in shown.splitlines() if line}
    assert code == 0 and (rows["scratch"], rows["network"]) == ("64 MiB", "none"), shown
    for _ in range(300):
        _, job = await market.api.call("GET", f"/v1/jobs/{job_id}")
        if job["state"] == "running" or job["state"] in ("failed", "lost", "succeeded"):
            break
        await asyncio.sleep(0.1)
    lease_id = job["lease_id"]
    assert lease_id, (job, market.agent.log()[-3000:])
    code, _, err = await market.suanli("job", "wait", job_id)
    assert code == 0, (err, market.agent.log()[-3000:])
    code, log, _ = await market.suanli("job", "logs", job_id)
    assert "wrote 32 MiB" in log, log
    assert "No space left on device" in log and "second dd exited 1" in log, log
    mounted = next(
        line for line in log.splitlines() if " /scratch " in line and "[suanli]" not in line
    )
    options = set(mounted.split()[5].split(","))
    assert {"nodev", "nosuid"} <= options, mounted
    assert "a volume of 67108864 bytes on the provider's disk" in log
    assert "mknod refused" in log and "made a device" not in log
    assert "done" in log

    # the job's volume, its image and its loop device are gone; the host's files are intact
    assert list((scratch_dir / "volumes").iterdir()) == []
    assert list((scratch_dir / "mounts").iterdir()) == []
    assert _loops(scratch_dir) == ""
    assert Path("/etc/passwd").exists()


async def test_a_job_waits_for_scratch_and_egress_no_agent_offers(without_scratch: Market) -> None:
    market = without_scratch
    scratch_job = await market.submit("echo never", "--scratch", "64M")
    egress_job = await market.submit("echo never", "--network", "egress")
    plain_job = await market.submit("echo ran")
    code, _, err = await market.suanli("job", "wait", plain_job)
    assert code == 0, err  # the agent works; it only lacks scratch and egress
    for job_id, sentence in (
        (scratch_job, "no agent has 64 MiB of free scratch"),
        (egress_job, "no agent allows egress"),
    ):
        _, job = await market.api.call("GET", f"/v1/jobs/{job_id}")
        assert job["state"] == "pending" and job["attempts"] == 0, job
        code, shown, _ = await market.suanli("job", "show", job_id)
        assert sentence in shown, shown
