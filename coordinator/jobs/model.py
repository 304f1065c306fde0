"""Jobs and leases as the coordinator holds them, and the states both move through.

Job states:

    pending ──auction won──▶ leased ──agent started it──▶ running ──exit 0──▶ succeeded
       ▲                       │                            │ ├─exit ≠ 0 / limit──▶ failed
       └──── requeued ◀────────┴── start deadline missed,   │ └─stopped on cancel──▶ cancelled
             (attempts < max)      agent silent, refused ───┘
                                   (attempts = max) ──▶ lost

A pending job can be cancelled at once; a leased or running one is cancelled when its
agent reports the container stopped (or when its agent is lost).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.jobs.spec import JobRequest
from shared.billing_window import LeaseTerms, LeaseWindow

PENDING, LEASED, RUNNING = "pending", "leased", "running"
SUCCEEDED, FAILED, CANCELLED, LOST = "succeeded", "failed", "cancelled", "lost"
JOB_STATES = (PENDING, LEASED, RUNNING, SUCCEEDED, FAILED, CANCELLED, LOST)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, LOST})

LEASE_OFFERED, LEASE_RUNNING, LEASE_ENDED = "offered", "running", "ended"


@dataclass(slots=True)
class Job:
    id: str
    enterprise_id: str
    idempotency_key: str
    request: JobRequest
    created_at_ms: int
    state: str = PENDING
    reason: str | None = None
    reason_detail: str | None = None
    attempts: int = 0
    excluded_agents: list[str] = field(default_factory=list)
    lease_id: str | None = None
    ended_at_ms: int | None = None
    exit_code: int | None = None
    cancel_requested: bool = False
    charged: int = 0
    voucher: int = 0
    deferred: int = 0
    tried_at_version: int | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(slots=True)
class Lease:
    id: str
    job_id: str
    agent_id: str
    gpu_uuids: tuple[str, ...]
    price_per_gpu_hour: int
    created_at_ms: int
    start_deadline_ms: int
    ends_at_ms: int
    state: str = LEASE_OFFERED
    stop_reason: str | None = None
    started_at_ms: int | None = None
    ended_at_ms: int | None = None
    exit_code: int | None = None
    end_reason: str | None = None
    charged: int = 0
    max_duration_ms: int = 0
    stop_grace_ms: int = 0
    stop_requested_at_ms: int | None = None
    log_base: int | None = None  # its job's log size at its first chunk

    @property
    def active(self) -> bool:
        return self.state != LEASE_ENDED

    def terms(self) -> LeaseTerms:
        return LeaseTerms(
            self.id,
            self.job_id,
            self.agent_id,
            self.gpu_uuids,
            self.price_per_gpu_hour,
            self.created_at_ms,
            self.max_duration_ms,
            self.stop_grace_ms,
        )

    def window(self) -> LeaseWindow:
        """The billable window as the coordinator knows it now (`shared.billing_window`)."""
        window = LeaseWindow(self.terms())
        if self.started_at_ms is not None:
            window.open(self.started_at_ms)
        if self.stop_requested_at_ms is not None:
            window.request_stop(self.stop_requested_at_ms)
        if self.ended_at_ms is not None:
            window.end(self.ended_at_ms)
        return window
