"""The state rebuilt from the database when the coordinator starts."""

from __future__ import annotations

import json
from typing import Any

from coordinator.config import Settings
from coordinator.jobs import Job, Lease, load_job_request
from coordinator.market import FLAG_KINDS, Agent, Flag, Gpu, Market
from coordinator.secret_box import SecretBox
from coordinator.state.memory import State
from coordinator.storage import Session
from shared.identity import PublicKey

ALIVE_INTERVAL_MS = 600  # at most this long between two writes of coordinator_alive
# a request floor is persisted when an agent's clock skew grows by more than this: the margin
# covers what the last flush missed, and an honest agent's steady skew costs no write
SKEW_MARGIN_MS = 25


def load_state(
    db: Session, settings: Settings, now: int, secret_box: SecretBox | None = None
) -> State:
    """The state as the database holds it; job secrets only with `secret_box` (a standby,
    which delivers no lease, reads none)."""
    state = State(Market(settings.reliability_half_life_ms))
    _load_agents(db, state.market)
    if secret_box is not None:
        for row in db.query("SELECT job_id, name, value FROM job_secrets"):
            value = secret_box.open(row["job_id"], row["name"], row["value"])
            state.secrets.setdefault(row["job_id"], {})[row["name"]] = value
    for row in db.query("SELECT * FROM jobs"):
        state.index_job(_job(row))
    for row in db.query("SELECT * FROM leases"):
        lease = _lease(row, state.jobs[row["job_id"]], settings)
        state.index_lease(lease)
        agent = state.market.agents.get(lease.agent_id)
        if lease.active and agent is not None:
            for uuid in lease.gpu_uuids:
                if uuid in agent.gpus:
                    agent.gpus[uuid].lease_id = lease.id
            scratch = state.jobs[lease.job_id].request.scratch_bytes
            if scratch:
                agent.scratch_held[lease.id] = scratch
    for row in db.query("SELECT lease_id, MAX(amount) AS amount FROM receipts GROUP BY lease_id"):
        charged_lease = state.leases.get(row["lease_id"])
        if charged_lease is not None:
            charged_lease.charged = row["amount"]
    for row in db.query(
        "SELECT job_id, SUM(amount) AS amount, SUM(voucher) AS voucher, "
        "SUM(deferred) AS deferred FROM ledger_postings GROUP BY job_id"
    ):
        job = state.jobs.get(row["job_id"])
        if job is not None:
            job.charged, job.voucher, job.deferred = row["amount"], row["voucher"], row["deferred"]
    _resume_agents(db, state.market, settings, now)
    return state


def _load_agents(db: Session, market: Market) -> None:
    usccs = {row["id"]: row["uscc"] for row in db.query("SELECT id, uscc FROM providers")}
    for row in db.query("SELECT * FROM agents"):
        market.agents[row["agent_id"]] = Agent(
            agent_id=row["agent_id"],
            provider_id=row["provider_id"],
            provider_uscc=usccs.get(row["provider_id"], ""),
            public_key=PublicKey(row["public_key"]),
            hostname=row["hostname"],
            ask_per_gpu_hour=row["ask_per_gpu_hour"],
            last_seen_ms=row["last_seen_ms"],
            penalty_ppm=row["penalty_ppm"],
            penalty_at_ms=row["penalty_at_ms"],
            revoked=row["revoked_at_ms"] is not None,
        )
    for row in db.query("SELECT * FROM gpus"):
        agent = market.agents.get(row["agent_id"])
        if agent is not None:
            agent.gpus[row["uuid"]] = Gpu(
                row["uuid"], agent.agent_id, row["model"], row["memory_total_bytes"]
            )
            if not agent.revoked:
                market.gpu_owner[row["uuid"]] = agent.agent_id
    for row in db.query("SELECT * FROM capacity_flags WHERE cleared_at_ms IS NULL"):
        agent = market.agents.get(row["agent_id"])
        if agent is None or row["gpu_uuid"] is None or row["kind"] not in FLAG_KINDS:
            continue
        agent.flags.setdefault(
            (row["gpu_uuid"], row["kind"]),
            Flag(row["agent_id"], row["gpu_uuid"], row["kind"], row["detail"], row["at_ms"]),
        )
        gpu = agent.gpus.get(row["gpu_uuid"])
        if gpu is not None and gpu.flag is None:
            gpu.flag = row["kind"]
    # a request signed before this start, by the agent's own clock, may have been seen
    # before it: refused, so a restart forgets no nonce that could be replayed
    for row in db.query("SELECT agent_id, skew_ms FROM agent_request_floors"):
        agent = market.agents.get(row["agent_id"])
        if agent is not None:
            agent.skew_ms = row["skew_ms"]


def _resume_agents(db: Session, market: Market, settings: Settings, now: int) -> None:
    # the last moment the previous run may have accepted a request (it wrote this while
    # serving, and once more as it stopped)
    alive = db.conn.execute("SELECT at_ms, stopped FROM coordinator_alive").fetchone()
    last_served = now if alive is None else alive[0] + (0 if alive[1] else ALIVE_INTERVAL_MS)
    for agent in market.agents.values():
        agent.not_before_ms = last_served + (agent.skew_ms or 0) + SKEW_MARGIN_MS
        # an agent counts as online after a restart until its heartbeat timeout says otherwise
        agent.online = (
            not agent.revoked
            and agent.last_seen_ms is not None
            and (now - agent.last_seen_ms < settings.heartbeat_timeout_ms)
        )
        if agent.online:
            agent.last_seen_ms = max(agent.last_seen_ms or 0, now)
        market.refresh(agent)


def _job(row: dict[str, Any]) -> Job:
    return Job(
        id=row["id"],
        enterprise_id=row["enterprise_id"],
        idempotency_key=row["idempotency_key"],
        request=load_job_request(row["spec"]),
        created_at_ms=row["created_at_ms"],
        state=row["state"],
        reason=row["reason"],
        reason_detail=row["reason_detail"],
        attempts=row["attempts"],
        excluded_agents=json.loads(row["excluded_agents"]),
        lease_id=row["lease_id"],
        ended_at_ms=row["ended_at_ms"],
        exit_code=row["exit_code"],
        cancel_requested=bool(row["cancel_requested"]),
    )


def _lease(row: dict[str, Any], job: Job, settings: Settings) -> Lease:
    return Lease(
        id=row["id"],
        job_id=row["job_id"],
        agent_id=row["agent_id"],
        gpu_uuids=tuple(json.loads(row["gpu_uuids"])),
        price_per_gpu_hour=row["price_per_gpu_hour"],
        created_at_ms=row["created_at_ms"],
        start_deadline_ms=row["start_deadline_ms"],
        ends_at_ms=row["ends_at_ms"],
        state=row["state"],
        stop_reason=row["stop_reason"],
        started_at_ms=row["started_at_ms"],
        ended_at_ms=row["ended_at_ms"],
        exit_code=row["exit_code"],
        end_reason=row["end_reason"],
        max_duration_ms=row["max_duration_ms"]
        if row["max_duration_ms"] is not None
        else job.request.max_duration_s * 1000,
        stop_grace_ms=row["stop_grace_ms"]
        if row["stop_grace_ms"] is not None
        else settings.stop_grace_ms,
        stop_requested_at_ms=row["stop_requested_at_ms"],
        log_base=row["log_base"],
    )
