"""A `LeaseRecord` as a row of the spool's `leases` table, and back.

The table keeps the columns of the first spool layout, so an agent upgraded in place reads
the spool it left: the terms and what the agent learnt of the lease since sit as JSON in the
`lease` column under the keys written from the start ("failure", "agent_stop_reason",
"billable_from_ms", "window", "agent_note_bytes"); keys only older agents wrote are ignored.
"""

from __future__ import annotations

import json
from typing import Any, cast

from agent.lease import (
    Chain,
    ContainerRun,
    EnergyCounter,
    Failure,
    JobTerms,
    LeaseRecord,
    LeaseTerms,
    Metering,
    Reported,
    Reporting,
    Window,
)


def energy_json(metering: Metering) -> str:
    return json.dumps(
        {
            uuid: {"base": c.base, "last": c.last, "carried": c.carried}
            for uuid, c in metering.energy.items()
        },
        sort_keys=True,
    )


def lease_row(record: LeaseRecord) -> dict[str, Any]:
    """The record as the values of its row, by column name."""
    terms, container, metering = record.terms, record.container, record.metering
    chain, reporting = record.chain, record.reporting
    lease: dict[str, Any] = {
        "lease_id": terms.lease_id,
        "job_id": terms.job_id,
        "gpu_uuids": list(terms.gpu_uuids),
        "price_per_gpu_hour": terms.price_per_gpu_hour,
        "ends_at_ms": terms.ends_at_ms,
        "billable_from_ms": metering.billable_from_ms,
        "window": {
            "opened_at_ms": metering.window.opened_at_ms,
            "closes_at_ms": metering.window.closes_at_ms,
        },
        "agent_note_bytes": reporting.note_bytes,
    }
    if terms.job is not None:
        lease["job"] = terms.job.to_wire()
    if container.failure is not None:
        lease["failure"] = {
            "reason_code": container.failure.reason_code,
            "reason": container.failure.reason,
        }
    if container.stop_reason is not None:
        lease["agent_stop_reason"] = container.stop_reason
    return {
        "lease_id": terms.lease_id,
        "job_id": terms.job_id,
        "gpu_uuids": json.dumps(list(terms.gpu_uuids)),
        "price_per_gpu_hour": terms.price_per_gpu_hour,
        "lease": json.dumps(lease, sort_keys=True),
        "container_id": container.container_id,
        "started_at_ms": container.started_at_ms,
        "ended_at_ms": container.ended_at_ms,
        "exit_code": container.exit_code,
        "energy_base": energy_json(metering),
        "energy_mj": metering.energy_mj,
        "util_sum": metering.util_sum,
        "util_samples": metering.util_samples,
        "peak_memory_bytes": metering.peak_memory_bytes,
        "last_seq": chain.last_seq,
        "last_digest": chain.last_digest,
        "last_gpu_ms": chain.last_gpu_ms,
        "last_issued_at_ms": chain.last_issued_at_ms,
        "final_sealed": int(chain.final_sealed),
        "accepted_seq": chain.accepted_seq,
        "log_offset": reporting.log_offset,
        "status_reported": reporting.status,
        "done": int(reporting.done),
        "created_at_ms": record.created_at_ms,
    }


def lease_from_row(row: dict[str, Any]) -> LeaseRecord:
    """The record of a row, written by this agent or by an older one."""
    lease = json.loads(row["lease"])
    status = cast(Reported, row["status_reported"])
    failure = lease.get("failure")
    window = lease.get("window") or {}
    note_bytes = lease.get("agent_note_bytes", 0)
    return LeaseRecord(
        terms=LeaseTerms(
            lease_id=row["lease_id"],
            job_id=row["job_id"],
            gpu_uuids=tuple(json.loads(row["gpu_uuids"])),
            price_per_gpu_hour=row["price_per_gpu_hour"],
            job=JobTerms.from_wire(lease.get("job")),
            ends_at_ms=_int_or_none(lease.get("ends_at_ms")),
        ),
        created_at_ms=row["created_at_ms"],
        container=ContainerRun(
            container_id=row["container_id"],
            started_at_ms=row["started_at_ms"],
            ended_at_ms=row["ended_at_ms"],
            exit_code=row["exit_code"],
            stop_reason=lease.get("agent_stop_reason"),
            failure=Failure(str(failure["reason_code"]), str(failure["reason"]))
            if isinstance(failure, dict)
            else None,
        ),
        metering=Metering(
            billable_from_ms=_billable_from(lease, row["started_at_ms"], status),
            window=Window(
                _int_or_none(window.get("opened_at_ms")), _int_or_none(window.get("closes_at_ms"))
            ),
            energy={
                uuid: EnergyCounter(int(c["base"]), int(c["last"]), int(c.get("carried", 0)))
                for uuid, c in json.loads(row["energy_base"]).items()
            },
            energy_mj=row["energy_mj"],
            util_sum=row["util_sum"],
            util_samples=row["util_samples"],
            peak_memory_bytes=row["peak_memory_bytes"],
        ),
        chain=Chain(
            last_seq=row["last_seq"],
            last_digest=row["last_digest"],
            last_gpu_ms=row["last_gpu_ms"],
            last_issued_at_ms=row["last_issued_at_ms"],
            final_sealed=bool(row["final_sealed"]),
            accepted_seq=row["accepted_seq"],
        ),
        reporting=Reporting(
            status=status,
            log_offset=row["log_offset"],
            note_bytes=note_bytes if type(note_bytes) is int else 0,
            done=bool(row["done"]),
        ),
    )


def _billable_from(
    lease: dict[str, Any], started_at_ms: int | None, status: Reported
) -> int | None:
    if "billable_from_ms" in lease:  # None: the coordinator never opened the window
        return _int_or_none(lease["billable_from_ms"])
    # a lease started by an agent older than billable windows counts from its own start
    return started_at_ms if status in ("started", "exited") else None


def _int_or_none(value: object) -> int | None:
    return value if type(value) is int else None
