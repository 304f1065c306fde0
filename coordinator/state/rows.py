"""Jobs, leases, agents and capacity as database rows: the one mapping between memory and tables."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from coordinator.jobs import Job, Lease
from coordinator.market import Agent, Flag, Gpu
from coordinator.storage import Session

FLAG_HISTORY = 256  # cleared capacity flags kept per agent for operators

AGENT_UPDATE = (
    "UPDATE agents SET ask_per_gpu_hour = :ask_per_gpu_hour, last_seen_ms = :last_seen_ms, "
    "penalty_ppm = :penalty_ppm, penalty_at_ms = :penalty_at_ms WHERE agent_id = :agent_id"
)


def job_row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "enterprise_id": job.enterprise_id,
        "idempotency_key": job.idempotency_key,
        "spec": json.dumps(job.request.to_json(), sort_keys=True),
        "state": job.state,
        "reason": job.reason,
        "reason_detail": job.reason_detail,
        "attempts": job.attempts,
        "excluded_agents": json.dumps(job.excluded_agents),
        "lease_id": job.lease_id,
        "created_at_ms": job.created_at_ms,
        "ended_at_ms": job.ended_at_ms,
        "exit_code": job.exit_code,
        "cancel_requested": int(job.cancel_requested),
    }


def lease_row(lease: Lease) -> dict[str, Any]:
    return {
        "id": lease.id,
        "job_id": lease.job_id,
        "agent_id": lease.agent_id,
        "gpu_uuids": json.dumps(list(lease.gpu_uuids)),
        "price_per_gpu_hour": lease.price_per_gpu_hour,
        "created_at_ms": lease.created_at_ms,
        "start_deadline_ms": lease.start_deadline_ms,
        "ends_at_ms": lease.ends_at_ms,
        "state": lease.state,
        "stop_reason": lease.stop_reason,
        "started_at_ms": lease.started_at_ms,
        "ended_at_ms": lease.ended_at_ms,
        "exit_code": lease.exit_code,
        "end_reason": lease.end_reason,
        "max_duration_ms": lease.max_duration_ms,
        "stop_grace_ms": lease.stop_grace_ms,
        "stop_requested_at_ms": lease.stop_requested_at_ms,
        "log_base": lease.log_base,
    }


def agent_row(agent: Agent) -> dict[str, Any]:
    """What changes in an agent's row after enrolment (for AGENT_UPDATE)."""
    return {
        "agent_id": agent.agent_id,
        "ask_per_gpu_hour": agent.ask_per_gpu_hour,
        "last_seen_ms": agent.last_seen_ms,
        "penalty_ppm": agent.penalty_ppm,
        "penalty_at_ms": agent.penalty_at_ms,
    }


def gpu_row(gpu: Gpu, now: int) -> dict[str, Any]:
    """A GPU's row as first seen `now`."""
    return {
        "uuid": gpu.uuid,
        "agent_id": gpu.agent_id,
        "model": gpu.model,
        "memory_total_bytes": gpu.memory_total_bytes,
        "first_seen_ms": now,
    }


def capacity_writes(
    new_gpus: list[Gpu], new_flags: list[Flag], cleared: list[Flag], now: int
) -> Callable[[Session], None]:
    """The rows a heartbeat's reconciliation changes: GPUs now held (a claim that became the
    holding replaces its old row), flags raised, flags cleared, and no more than
    FLAG_HISTORY cleared flags kept per agent."""
    gpu_rows = [gpu_row(g, now) for g in new_gpus]
    flag_rows = [
        {
            "agent_id": f.agent_id,
            "gpu_uuid": f.gpu_uuid,
            "kind": f.kind,
            "detail": f.detail,
            "at_ms": f.at_ms,
        }
        for f in new_flags
    ]
    cleared_rows = [(f.cleared_at_ms, f.agent_id, f.gpu_uuid, f.kind) for f in cleared]
    agents = sorted({f.agent_id for f in new_flags})

    def write(db: Session) -> None:
        if gpu_rows:
            db.table("gpus").upsert_all(gpu_rows, pk="uuid")
        if cleared_rows:
            db.conn.executemany(
                "UPDATE capacity_flags SET cleared_at_ms = ? WHERE agent_id = ? AND gpu_uuid = ? "
                "AND kind = ? AND cleared_at_ms IS NULL",
                cleared_rows,
            )
        if flag_rows:
            db.table("capacity_flags").insert_all(flag_rows)
        for agent_id in agents:
            db.conn.execute(
                "DELETE FROM capacity_flags WHERE agent_id = ? AND cleared_at_ms IS NOT NULL "
                "AND id <= (SELECT id FROM capacity_flags WHERE agent_id = ? "
                "AND cleared_at_ms IS NOT NULL ORDER BY id DESC LIMIT 1 OFFSET ?)",
                [agent_id, agent_id, FLAG_HISTORY],
            )

    return write
