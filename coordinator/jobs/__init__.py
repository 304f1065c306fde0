"""Jobs: what an enterprise asks for, the Job and Lease the coordinator holds, and their states."""

from coordinator.jobs.model import (
    CANCELLED,
    FAILED,
    FINAL_STATES,
    JOB_STATES,
    LEASE_ENDED,
    LEASE_OFFERED,
    LEASE_RUNNING,
    LEASED,
    LOST,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Job,
    Lease,
)
from coordinator.jobs.spec import JobRequest, load_job_request, parse_job_request

__all__ = [
    "CANCELLED",
    "FAILED",
    "FINAL_STATES",
    "JOB_STATES",
    "LEASED",
    "LEASE_ENDED",
    "LEASE_OFFERED",
    "LEASE_RUNNING",
    "LOST",
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "Job",
    "JobRequest",
    "Lease",
    "load_job_request",
    "parse_job_request",
]
