"""Leases in the log: the terms each was awarded on, and the events that open and close its
billable window (`shared.billing_window`).

    lease_award    [lease_id, job_id, agent_id, [gpu_uuid, ...], price_per_gpu_hour,
                    max_duration_ms, stop_grace_ms]          (at_ms: the award)
    lease_event    [lease_id, event, reason | None, exit_code | None, report | None]

A lease event is `started` (report: the agent's signed status request saying so),
`stop_requested` (reason: cancelled, revoked, lease_ended), or `ended` (reason: exited with the
agent's signed exit report, agent_lost, start_deadline, failed, overrun, agent_revoked).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from shared.billing_window import LeaseTerms
from shared.log_entries.fields import array, envelope, integer, text
from shared.log_entries.kinds import LEASE_EVENTS, LogEntryError

MAX_LEASE_GPUS = 64


class LeaseAwardEntry(NamedTuple):
    """The terms of a lease as awarded; the entry's at_ms is the award's moment."""

    lease_id: str
    job_id: str
    agent_id: str
    gpu_uuids: tuple[str, ...]
    price_per_gpu_hour: int
    max_duration_ms: int
    stop_grace_ms: int

    def terms(self, awarded_at_ms: int) -> LeaseTerms:
        return LeaseTerms(
            self.lease_id,
            self.job_id,
            self.agent_id,
            self.gpu_uuids,
            self.price_per_gpu_hour,
            awarded_at_ms,
            self.max_duration_ms,
            self.stop_grace_ms,
        )

    def to_wire(self) -> list[Any]:
        return [
            self.lease_id,
            self.job_id,
            self.agent_id,
            list(self.gpu_uuids),
            self.price_per_gpu_hour,
            self.max_duration_ms,
            self.stop_grace_ms,
        ]


class LeaseEventEntry(NamedTuple):
    """A fact that opens or closes a lease's billable window; the entry's at_ms is its moment."""

    lease_id: str
    event: str
    reason: str | None = None
    exit_code: int | None = None
    report: bytes | None = None  # the agent's signed status request, when the agent said it

    def to_wire(self) -> list[Any]:
        return list(self)


def parse_lease_award(body: Any) -> LeaseAwardEntry:
    lease_id, job_id, agent_id, uuids, price, max_duration, grace = array(
        body, 7, "a lease_award body"
    )
    if type(uuids) is not list or not 0 < len(uuids) <= MAX_LEASE_GPUS:
        raise LogEntryError(f"a lease names 1 to {MAX_LEASE_GPUS} GPUs")
    return LeaseAwardEntry(
        text(lease_id, "lease_id"),
        text(job_id, "job_id"),
        text(agent_id, "agent_id"),
        tuple(text(uuid, "a GPU UUID") for uuid in uuids),
        integer(price, "price_per_gpu_hour"),
        integer(max_duration, "max_duration_ms"),
        integer(grace, "stop_grace_ms"),
    )


def parse_lease_event(body: Any) -> LeaseEventEntry:
    lease_id, event, reason, exit_code, report = array(body, 5, "a lease_event body")
    if event not in LEASE_EVENTS:
        raise LogEntryError(f"a lease event is one of {', '.join(LEASE_EVENTS)}, not {event!r:.40}")
    if reason is not None:
        text(reason, "a lease event's reason")
    if exit_code is not None and (type(exit_code) is not int or not -(2**31) <= exit_code < 2**31):
        raise LogEntryError("a lease event's exit_code is a 32-bit integer")
    if report is not None:
        envelope(report, "request")
    return LeaseEventEntry(text(lease_id, "lease_id"), event, reason, exit_code, report)
