"""A lease as the agent keeps it: the terms the coordinator gave, and what the agent has done
with it since, in named parts: its container, its metering, its receipt chain, its reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.engine.registry_auth import RegistryCredentials

Reported = Literal["", "started", "exited", "failed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobTerms:
    """The job to run, as the enterprise asked for it. Its registry credentials are kept in
    memory for its pull only, never written to the spool; `private_image` (the image came
    with credentials) is, so that the image is removed at the lease's end even after a
    restart, and no job without credentials runs it from the host's cache."""

    image: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    cpus_milli: int
    memory_bytes: int
    max_duration_s: int | None = None
    registry_auth: RegistryCredentials | None = None
    private_image: bool = False
    network: str = "none"  # or "egress": the agent's egress network
    scratch_bytes: int = 0

    @classmethod
    def from_wire(cls, job: object) -> JobTerms | None:
        """The job of a lease as the coordinator sends it; None if it is not a whole job."""
        if not isinstance(job, Mapping):
            return None
        auth = RegistryCredentials.from_wire(job.get("registry_auth"))
        try:
            return cls(
                image=str(job["image"]),
                command=tuple(str(arg) for arg in job["command"]),
                env={str(k): str(v) for k, v in dict(job["env"]).items()},
                cpus_milli=int(job["cpus_milli"]),
                memory_bytes=int(job["memory_bytes"]),
                max_duration_s=job.get("max_duration_s"),
                registry_auth=auth,
                private_image=auth is not None or job.get("private_image") is True,
                network=_network(job.get("network", "none")),
                scratch_bytes=max(0, int(job.get("scratch_bytes") or 0)),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def to_wire(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "command": list(self.command),
            "env": dict(self.env),
            "cpus_milli": self.cpus_milli,
            "memory_bytes": self.memory_bytes,
            "max_duration_s": self.max_duration_s,
            "private_image": self.private_image,
            "network": self.network,
            "scratch_bytes": self.scratch_bytes,
        }


def _network(value: object) -> str:
    if value not in ("none", "egress"):
        raise ValueError(f"network {value!r} is neither none nor egress")
    return str(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseTerms:
    """What the coordinator leased: these GPUs, at this price, for this job, until ends_at_ms
    (which the coordinator may move; the agent replaces the terms when it does)."""

    lease_id: str
    job_id: str
    gpu_uuids: tuple[str, ...]
    price_per_gpu_hour: int
    job: JobTerms | None = None
    ends_at_ms: int | None = None

    @classmethod
    def from_wire(cls, lease: Mapping[str, Any]) -> LeaseTerms:
        return cls(
            lease_id=lease["lease_id"],
            job_id=lease["job_id"],
            gpu_uuids=tuple(lease["gpu_uuids"]),
            price_per_gpu_hour=lease["price_per_gpu_hour"],
            job=JobTerms.from_wire(lease.get("job")),
            ends_at_ms=lease.get("ends_at_ms"),
        )


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a lease's job never ran, as reported to the coordinator."""

    reason_code: str
    reason: str


@dataclass(slots=True)
class ContainerRun:
    """The lease's container: its id once created, when it started and ended, how it exited."""

    container_id: str | None = None
    started_at_ms: int | None = None
    ended_at_ms: int | None = None
    exit_code: int | None = None
    stop_reason: str | None = None  # why the agent stopped it, told with the exit report
    failure: Failure | None = None  # why it never ran


@dataclass(frozen=True, slots=True)
class Window:
    """The lease's billable window as the coordinator last described it (its clock's times)."""

    opened_at_ms: int | None = None
    closes_at_ms: int | None = None


@dataclass(slots=True)
class EnergyCounter:
    """One GPU's energy counter: where it stood at the lease's start (or its last reset), its
    latest value, and what was counted before resets of the driver."""

    base: int
    last: int
    carried: int = 0


@dataclass(slots=True)
class Metering:
    """What the lease is billed for: from when, within which window, and what it used."""

    billable_from_ms: int | None = None  # by this host's clock; None: not (or never) billable
    window: Window = field(default_factory=Window)
    energy: dict[str, EnergyCounter] = field(default_factory=dict)
    energy_mj: int = 0
    util_sum: int = 0
    util_samples: int = 0
    peak_memory_bytes: int = 0


@dataclass(slots=True)
class Chain:
    """The lease's chain of receipts: the last one sealed, and the last one accepted."""

    last_seq: int = 0
    last_digest: bytes | None = None
    last_gpu_ms: int = 0
    last_issued_at_ms: int = 0
    final_sealed: bool = False
    accepted_seq: int = 0


@dataclass(slots=True)
class Reporting:
    """What the coordinator has been told: the last status reported, the log bytes sent (of
    which note_bytes are the agent's own lines), and whether the lease is done with."""

    status: Reported = ""
    log_offset: int = 0
    note_bytes: int = 0
    done: bool = False


@dataclass(slots=True)
class LeaseRecord:
    """One lease on this agent, from the coordinator's offer until its end is reported."""

    terms: LeaseTerms
    created_at_ms: int
    container: ContainerRun = field(default_factory=ContainerRun)
    metering: Metering = field(default_factory=Metering)
    chain: Chain = field(default_factory=Chain)
    reporting: Reporting = field(default_factory=Reporting)

    @property
    def lease_id(self) -> str:
        return self.terms.lease_id

    @property
    def job_id(self) -> str:
        return self.terms.job_id

    @property
    def gpu_uuids(self) -> tuple[str, ...]:
        return self.terms.gpu_uuids

    @property
    def price_per_gpu_hour(self) -> int:
        return self.terms.price_per_gpu_hour
