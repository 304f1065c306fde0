"""A job as the API shows it to its enterprise or to an auditor."""

from __future__ import annotations

from typing import Any

from coordinator.jobs.model import SUCCEEDED, Job
from coordinator.state import State
from shared.money import format_yuan


def job_view(state: State, job: Job, role: str = "enterprise") -> dict[str, Any]:
    """A job as its enterprise sees it; an auditor sees it without env values. Secret
    values are shown to nobody."""
    lease = state.leases.get(job.lease_id) if job.lease_id else None
    price = lease.price_per_gpu_hour if lease else None
    return {
        "id": job.id,
        "state": job.state,
        "reason": job.reason if not job.final or job.state != SUCCEEDED else None,
        "reason_detail": job.reason_detail,
        "agent_id": lease.agent_id if lease else None,
        "lease_id": lease.id if lease else None,
        "gpu_uuids": list(lease.gpu_uuids) if lease else [],
        "price_per_gpu_hour_micro_yuan": price,
        "price_per_gpu_hour_yuan": None if price is None else format_yuan(price),
        "created_at_ms": job.created_at_ms,
        "started_at_ms": lease.started_at_ms if lease else None,
        "ended_at_ms": job.ended_at_ms,
        "lease_ends_at_ms": lease.ends_at_ms if lease else None,
        "exit_code": job.exit_code,
        "charged_micro_yuan": job.charged,
        "voucher_micro_yuan": job.voucher,
        "deferred_micro_yuan": job.deferred,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "idempotency_key": job.idempotency_key,
        "spec": job.request.to_json(env_values=role != "auditor"),
    }
