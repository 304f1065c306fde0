"""The agent protocol's bodies: what an agent signs inside a `request` envelope, and what the
coordinator answers (canonical msgpack). Both sides decode with these types.

The envelope is verified over the exact bytes received (`shared.signed_request`); only the
body it carries is decoded into these types, after the signature checks.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from shared.messages.fields import INT64_MAX, Count, Message, Milliseconds, require_printable
from shared.messages.registry_auth import RegistryAuth

MAX_GPUS_PER_AGENT = 64
MAX_TEXT = 128
MAX_HOSTNAME = 253
MAX_REASON = 512
MAX_REASON_CODE = 64
MAX_ASK = 10**12
MAX_LOG_CHUNK = 256 * 1024
MAX_RECEIPT_BATCH = 500
EXIT_CODE_MIN, EXIT_CODE_MAX = -(2**31), 2**31 - 1

GpuText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]
Bytes64 = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
LeaseState = Literal["offered", "running", "ended"]
JobNetwork = Literal["none", "egress"]

# -- enrolment and key rotation ---------------------------------------------------------


class EnrolRequest(Message):
    """POST /v1/agent/enroll: the key to register and a `request` envelope it signed."""

    public_key: bytes
    request: bytes


class EnrolBody(Message):
    """The body of the enrolment's signed request."""

    token: str
    hostname: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_HOSTNAME)]

    def __post_init__(self) -> None:
        require_printable(self, ("hostname",), 1, MAX_HOSTNAME)


class EnrolAnswer(Message):
    agent_id: str
    provider_id: str
    heartbeat_interval_ms: Milliseconds


class RotateKey(Message):
    """POST /v1/agent/rotate-key, signed by the old key: the new key and its own signed word."""

    public_key: bytes
    request: bytes


class RotateProof(Message, forbid_unknown_fields=True):
    """The body the new key signs: it takes over this agent."""

    rotates: str


class RotateAnswer(Message):
    agent_id: str
    previous_agent_id: str
    provider_id: str


# -- heartbeats -------------------------------------------------------------------------


class GpuReport(Message):
    """One GPU as the agent's NVML sample reports it (other keys the agent sends are ignored)."""

    index: Annotated[int, msgspec.Meta(ge=0, le=MAX_GPUS_PER_AGENT * 4)]
    uuid: GpuText
    name: GpuText
    memory_total_bytes: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
    memory_used_bytes: Bytes64 | None = None
    utilization_gpu_pct: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    temperature_c: Annotated[int, msgspec.Meta(ge=-100, le=200)] | None = None
    power_mw: Count | None = None
    power_limit_mw: Count | None = None
    energy_mj: Count | None = None
    healthy: bool = True
    health_reason: GpuText | None = None

    def __post_init__(self) -> None:
        require_printable(self, ("uuid", "name", "health_reason"), 1, MAX_TEXT)


class HostReport(Message):
    cpu_count: Annotated[int, msgspec.Meta(ge=1, le=1 << 16)]
    memory_total_bytes: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
    memory_available_bytes: Bytes64 | None = None
    disk_free_bytes: Bytes64 | None = None
    # what scratch volumes may take: the filesystem's free space plus what the agent's own
    # volumes hold, less its reserve; the coordinator subtracts its running leases' scratch
    scratch_free_bytes: Bytes64 | None = None
    egress_allowed: bool = False


class Inventory(Message):
    gpus: Annotated[list[GpuReport], msgspec.Meta(max_length=MAX_GPUS_PER_AGENT)]
    host: HostReport
    driver_version: GpuText | None = None

    def __post_init__(self) -> None:
        require_printable(self, ("driver_version",), 1, MAX_TEXT)
        if len({gpu.uuid for gpu in self.gpus}) != len(self.gpus):
            raise ValueError("gpus: expected each GPU UUID once, got one twice")


class Heartbeat(Message):
    """POST /v1/agent/heartbeat: the agent's ask and what it holds now."""

    inventory: Inventory
    ask_per_gpu_hour: Annotated[int, msgspec.Meta(ge=0, le=MAX_ASK)] | None = None


class GpuFlag(Message):
    gpu_uuid: str
    kind: str


class HeartbeatAnswer(Message):
    heartbeat_interval_ms: Milliseconds
    heartbeat_timeout_ms: Milliseconds
    lease_version: int
    flags: list[GpuFlag]


# -- leases -----------------------------------------------------------------------------


class LeasePoll(Message):
    """POST /v1/agent/leases: answered when the agent's leases change or after wait_ms."""

    known_version: int = -1
    wait_ms: Annotated[int, msgspec.Meta(ge=0)] = 0


class Window(Message):
    """The lease's billable window as the coordinator knows it."""

    opened_at_ms: Milliseconds | None
    closes_at_ms: Milliseconds | None
    stop_grace_ms: Milliseconds


class LeaseJob(Message):
    """What the agent runs: the job's container, env (secret values included) and limits, and
    the credentials for its image's registry (for that pull only; None: a public image)."""

    image: str
    command: list[str]
    env: dict[str, str]
    cpus_milli: int
    memory_bytes: int
    max_duration_s: int
    registry_auth: RegistryAuth | None = None
    network: JobNetwork = "none"
    scratch_bytes: Bytes64 = 0


class LeaseView(Message):
    lease_id: str
    job_id: str
    gpu_uuids: list[str]
    price_per_gpu_hour: int
    start_deadline_ms: Milliseconds
    ends_at_ms: Milliseconds
    state: LeaseState
    desired: Literal["run", "stop"]
    stop_reason: str | None
    window: Window
    job: LeaseJob


class ClosedLease(Message):
    lease_id: str
    window: Window


class LeasesAnswer(Message):
    version: int
    leases: list[LeaseView]
    closed: list[ClosedLease]


# -- status and logs --------------------------------------------------------------------


class StatusReport(Message, omit_defaults=True):
    """POST /v1/agent/status: a lease's container started, exited (exit_code) or failed to
    start (reason_code); `reason` says why in the agent's words. Fields left unset are left
    out when encoded, as the agent sends them today (the log keeps these signed bytes)."""

    lease_id: str
    event: Literal["started", "exited", "failed"]
    exit_code: Annotated[int, msgspec.Meta(ge=EXIT_CODE_MIN, le=EXIT_CODE_MAX)] | None = None
    reason_code: Annotated[str, msgspec.Meta(max_length=MAX_REASON_CODE)] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON)] | None = None

    def __post_init__(self) -> None:
        if self.event == "exited" and self.exit_code is None:
            raise ValueError(
                f"exit_code: expected an integer from {EXIT_CODE_MIN} to {EXIT_CODE_MAX} in an "
                "exit report, got nothing"
            )
        if self.event == "failed" and self.reason_code is None:
            raise ValueError(
                f"reason_code: expected a string of at most {MAX_REASON_CODE} characters in a "
                "failure report, got nothing"
            )


class StatusAnswer(Message):
    lease_id: str
    state: LeaseState
    window: Window


class LogChunk(Message):
    """POST /v1/agent/logs: bytes of a job's output from `offset` (a retry is harmless)."""

    lease_id: str
    offset: Annotated[int, msgspec.Meta(ge=0)]
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_LOG_CHUNK)]


class LogAnswer(Message):
    stored_bytes: Count
    truncated: bool


# -- receipts ---------------------------------------------------------------------------


class ReceiptBatch(Message):
    """POST /v1/agent/receipts: sealed receipt envelopes, verified one by one in order."""

    receipts: Annotated[list[bytes], msgspec.Meta(min_length=1, max_length=MAX_RECEIPT_BATCH)]


class ReceiptResult(Message, omit_defaults=True):
    """One receipt's answer: accepted (naming its acknowledgement by position in the batch's
    answer) or rejected, naming the rule it broke."""

    lease_id: str | None
    seq: int | None
    status: Literal["accepted", "rejected"]
    acknowledgement: int | msgspec.UnsetType = msgspec.UNSET
    rule: str | msgspec.UnsetType = msgspec.UNSET
    detail: str | msgspec.UnsetType = msgspec.UNSET


class ReceiptsAnswer(Message):
    results: list[ReceiptResult]
    acknowledgements: list[bytes]
