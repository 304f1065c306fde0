"""Lease delivery: an agent's long poll for its leases, each as the agent needs it to run and
bill the job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coordinator.config import Settings
from coordinator.jobs import Lease
from coordinator.jobs.secrets import registry_auth, secret_env
from coordinator.market import Agent
from coordinator.signals import Signals
from coordinator.state import State
from shared.messages import agent_protocol as ap

CLOSED_LEASES_SHOWN_MS = 600_000
MAX_CLOSED_SHOWN = 100


class LeaseDelivery:
    def __init__(
        self, state: State, signals: Signals, settings: Settings, clock: Callable[[], int]
    ) -> None:
        self.state = state
        self.signals = signals
        self.long_poll_max_ms = settings.long_poll_max_ms
        self.clock = clock

    async def agent_leases(self, agent: Agent, body: ap.LeasePoll) -> dict[str, Any]:
        await self.signals.wait_for_change(
            agent.agent_id, body.known_version, min(body.wait_ms, self.long_poll_max_ms)
        )
        now = self.clock()
        mine = self.state.leases_of(agent.agent_id, active_only=False)
        # leases ended lately (lost, say) whose agent may not know yet where their window closed
        closed = [
            lease
            for lease in mine
            if not lease.active
            and lease.started_at_ms is not None
            and lease.ended_at_ms is not None
            and now - lease.ended_at_ms < CLOSED_LEASES_SHOWN_MS
        ]
        return {
            "version": self.signals.version(agent.agent_id),
            "leases": [self.lease_view(lease) for lease in mine if lease.active],
            "closed": [
                {"lease_id": lease.id, "window": window_view(lease)}
                for lease in closed[-MAX_CLOSED_SHOWN:]
            ],
        }

    def lease_view(self, lease: Lease) -> dict[str, Any]:
        request = self.state.jobs[lease.job_id].request
        secrets = self.state.secrets.get(lease.job_id, {})
        return {
            "lease_id": lease.id,
            "job_id": lease.job_id,
            "gpu_uuids": list(lease.gpu_uuids),
            "price_per_gpu_hour": lease.price_per_gpu_hour,
            "start_deadline_ms": lease.start_deadline_ms,
            "ends_at_ms": lease.ends_at_ms,
            "state": lease.state,
            "desired": "stop" if lease.stop_reason else "run",
            "stop_reason": lease.stop_reason,
            "window": window_view(lease),
            "job": {
                "image": request.image,
                "command": list(request.command),
                "env": {**dict(request.env), **secret_env(secrets)},
                "cpus_milli": request.cpus_milli,
                "memory_bytes": request.memory_bytes,
                "max_duration_s": request.max_duration_s,
                # for the pull only: once the container started, the agent needs them no more
                "registry_auth": registry_auth(secrets) if lease.state == "offered" else None,
                "network": request.network,
                "scratch_bytes": request.scratch_bytes,
            },
        }


def window_view(lease: Lease) -> dict[str, int | None]:
    """What an agent needs to bill no more than its lease's window allows."""
    window = lease.window()
    return {
        "opened_at_ms": window.opened_at_ms,
        "closes_at_ms": window.closes_at_ms,
        "stop_grace_ms": lease.stop_grace_ms,
    }
