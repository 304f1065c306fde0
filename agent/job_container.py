"""The container of a lease's job as the agent creates it: what the enterprise asked, within
what the host gives, labelled for re-adoption; and what the job's owner is told of it."""

from __future__ import annotations

import psutil

from agent.config import USERNS_SIZE, AgentSettings
from agent.egress import NETWORK_NAME, EgressAttachment
from agent.engine import FALLBACK_USER, ContainerSpec
from agent.host_limits import SCRATCH_PATH, TMP_PATH, JobLimits
from agent.lease import JobTerms, LeaseRecord

LABEL_LEASE = "suanli.lease"
LABEL_JOB = "suanli.job"
LABEL_AGENT = "suanli.agent"


def host_memory_bytes() -> int:
    return int(psutil.virtual_memory().total)


def job_spec(
    record: LeaseRecord,
    settings: AgentSettings,
    limits: JobLimits,
    *,
    agent_id: str,
    gpu_mode: str,
    host_cpus_milli: int,
    egress: EgressAttachment | None = None,
    scratch_volume: str | None = None,
) -> ContainerSpec:
    """The container of a lease's job: what the enterprise asked, within what the host gives;
    `egress` is the network of a job that asks egress (never another network in its place),
    and `scratch_volume` (the mount of its scratch volume) is its /scratch instead of a tmpfs."""
    job = job_terms(record)
    if job.network == "egress" and egress is None:
        raise ValueError(f"lease {record.lease_id} asks egress and the agent has no egress network")
    tmpfs = dict(limits.tmpfs)
    if scratch_volume is not None:
        del tmpfs[SCRATCH_PATH]
    env = dict(job.env)
    env.setdefault("HOME", SCRATCH_PATH)  # the root filesystem is read-only
    return ContainerSpec(
        name=f"suanli-{record.lease_id}",
        image=job.image,
        command=job.command,
        env=env,
        labels={LABEL_LEASE: record.lease_id, LABEL_JOB: record.job_id, LABEL_AGENT: agent_id},
        gpu_uuids=record.gpu_uuids,
        gpu_mode=gpu_mode,
        cpus_milli=min(job.cpus_milli, host_cpus_milli),
        memory_bytes=limits.memory_bytes,
        pids_limit=settings.pids_limit,
        network="egress" if job.network == "egress" else "none",
        egress_network=NETWORK_NAME if egress is None else egress.network,
        dns=() if egress is None else egress.dns,
        read_only_rootfs=True,
        tmpfs=tmpfs,
        scratch_volume=scratch_volume,
        log_max_bytes=settings.engine_log_max_bytes,
        userns_host_id=settings.userns_host_id,
        userns_size=USERNS_SIZE,
    )


def job_terms(record: LeaseRecord) -> JobTerms:
    if record.terms.job is None:
        raise ValueError(f"lease {record.lease_id} carries no job the agent can read")
    return record.terms.job


def limits_note(
    limits: JobLimits, isolation: str, by_gpu_share: bool, scratch_volume_bytes: int = 0
) -> str:
    """What the job's owner is told of the limits the provider's host set."""
    lines = []
    if limits.memory_lowered:
        share = "its GPUs' share of " if by_gpu_share else ""
        lines.append(
            f"memory limit {limits.memory_bytes} bytes, not the {limits.asked_memory_bytes} "
            f"asked: the provider's host gives a job at most {share}the memory it can spare"
        )
    if scratch_volume_bytes:
        lines.append(
            f"the root filesystem is read-only; writable: {SCRATCH_PATH} (a volume of "
            f"{scratch_volume_bytes} bytes on the provider's disk, deleted when the job ends) "
            f"and {TMP_PATH} ({limits.tmpfs[TMP_PATH]} bytes, counted in the memory limit)"
        )
    else:
        lines.append(
            f"the root filesystem is read-only; writable: {SCRATCH_PATH} "
            f"({limits.tmpfs[SCRATCH_PATH]} bytes) and {TMP_PATH} ({limits.tmpfs[TMP_PATH]} "
            "bytes), both counted in the memory limit"
        )
    if isolation == "non-root-user":
        lines.append(f"the job runs as uid:gid {FALLBACK_USER}, not as root")
    return "".join(f"[suanli] {line}\n" for line in lines)


class PullProgress:
    """Pull progress for the job's log: the engine's status lines, without the byte ticker."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        if line and (not self.lines or self.lines[-1] != line) and len(self.lines) < 200:
            self.lines.append(line)

    def summary(self, image: str) -> str:
        shown = [
            line for line in self.lines if "Downloading" not in line and "Extracting" not in line
        ]
        return "".join(f"[suanli] {line}\n" for line in shown[-20:]) + f"[suanli] pulled {image}\n"
