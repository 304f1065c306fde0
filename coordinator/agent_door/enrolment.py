"""Enrolment of an agent's key with a provider's token, and the rotation of that key."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from coordinator import accounts, tlog
from coordinator.config import Settings
from coordinator.errors import Conflict, Unauthenticated, Unprocessable
from coordinator.market import Agent
from coordinator.signals import Signals
from coordinator.state import State
from coordinator.storage import Database, IntegrityError, Session
from shared import canonical, log_entries
from shared.errors import SuanliError
from shared.identity import PublicKey
from shared.messages import agent_protocol as ap
from shared.messages import convert
from shared.signed_request import open_request

log = logging.getLogger(__name__)
ROTATE_PATH = "/v1/agent/rotate-key"


class Enrolment:
    def __init__(
        self,
        state: State,
        database: Database,
        signals: Signals,
        settings: Settings,
        clock: Callable[[], int],
    ) -> None:
        self.state = state
        self.database = database
        self.signals = signals
        self.window_ms = settings.signed_request_window_ms
        self.clock = clock
        self._enrolling: set[str] = set()

    def _taken(self, agent_id: str) -> bool:
        return agent_id in self.state.market.agents or agent_id in self._enrolling

    async def enrol(self, body: bytes, path: str) -> Agent:
        """Enrol the key that signed the request inside `body` (an EnrolRequest): the signature
        is checked over the request's bytes as sent, its body converted after."""
        try:
            outer = canonical.decode(body)
        except SuanliError as exc:
            raise Unprocessable(f"enrolment body: {exc.detail}") from None
        enrolment = convert(ap.EnrolRequest, outer)
        try:
            public = PublicKey(enrolment.public_key)
            signed = open_request(
                enrolment.request, public, "POST", path, self.clock(), self.window_ms
            )
        except SuanliError as exc:
            raise Unauthenticated(
                f"enrolment is not signed by the key it registers: {exc.detail}"
            ) from None
        request = convert(ap.EnrolBody, signed.body)
        hostname, token = request.hostname, request.token
        if self._taken(public.agent_id):
            raise Conflict("this key is already enrolled; an agent enrols once")
        now = self.clock()

        def write(db: Session) -> tuple[str, str]:
            if db.conn.execute(
                "SELECT 1 FROM agents WHERE agent_id = ?", [public.agent_id]
            ).fetchone():
                raise Conflict("this key is already enrolled; an agent enrols once")
            provider_id = accounts.redeem_enrolment_token(db, token, now)
            db.table("agents").insert(
                {
                    "agent_id": public.agent_id,
                    "provider_id": provider_id,
                    "public_key": public.raw,
                    "hostname": hostname,
                    "enrolled_at_ms": now,
                    "penalty_ppm": 0,
                    "penalty_at_ms": now,
                }
            )
            uscc = str(db.table("providers").get(provider_id)["uscc"])
            key = log_entries.AgentKey(public.agent_id, public.raw, provider_id, uscc)
            tlog.append_entries(db, [log_entries.encode_entry(log_entries.AGENT_KEY, now, key)])
            return uscc, provider_id

        # one enrolment per key at a time: the others are told so, never an IntegrityError
        self._enrolling.add(public.agent_id)
        try:
            uscc, provider_id = await self.database.run(write)
        except IntegrityError:
            raise Conflict("this key is already enrolled; an agent enrols once") from None
        finally:
            self._enrolling.discard(public.agent_id)
        agent = Agent(
            agent_id=public.agent_id,
            provider_id=provider_id,
            provider_uscc=uscc,
            public_key=public,
            hostname=hostname,
            penalty_at_ms=now,
        )
        self.state.market.add_agent(agent)
        return agent

    async def rotate_key(self, agent: Agent, body: ap.RotateKey) -> dict[str, Any]:
        """The agent replaces its key: signed by the old key, the new key countersigns. The new
        key is a new agent_key in the log (auditors verify later receipts with it; earlier ones
        stay verifiable with the old entry); the agent's GPUs, flags and reliability pass to it
        and the old key is refused from now on. Only an idle agent rotates: a lease is billed
        under the key it was won with."""
        try:
            public = PublicKey(body.public_key)
            signed = open_request(
                body.request, public, "POST", ROTATE_PATH, self.clock(), self.window_ms
            )
        except SuanliError as exc:
            raise Unauthenticated(f"the new key must sign the rotation: {exc.detail}") from None
        proof = convert(ap.RotateProof, signed.body)
        if proof.rotates != agent.agent_id:
            raise Unprocessable("rotates: expected this agent's id, got another")
        if self._taken(public.agent_id):
            raise Conflict("the new key is already enrolled")
        active = self.state.leases_of(agent.agent_id)
        if active:
            raise Conflict(
                f"this agent holds {len(active)} active leases; rotate its key when it "
                "is idle (stop taking jobs, let them end)",
                code="agent_busy",
            )
        now = self.clock()
        old_id, new_id = agent.agent_id, public.agent_id
        self._enrolling.add(new_id)
        try:
            await self.database.run(_rotation_writes(agent, public, now))
        except IntegrityError:
            raise Conflict("the new key is already enrolled") from None
        finally:
            self._enrolling.discard(new_id)
        successor = Agent(
            agent_id=new_id,
            provider_id=agent.provider_id,
            provider_uscc=agent.provider_uscc,
            public_key=public,
            hostname=agent.hostname,
            penalty_ppm=agent.penalty_ppm,
            penalty_at_ms=agent.penalty_at_ms,
            skew_ms=agent.skew_ms,
        )
        self.state.market.hand_over(agent, successor)
        self.signals.notify(old_id)
        log.info("agent %s rotated its key; it is now agent %s", old_id, new_id)
        return {"agent_id": new_id, "previous_agent_id": old_id, "provider_id": agent.provider_id}


def _rotation_writes(agent: Agent, public: PublicKey, now: int) -> Callable[[Session], None]:
    """The new key's agent row, the old one revoked, its GPUs and open flags handed over."""
    old_id, new_id = agent.agent_id, public.agent_id

    def write(db: Session) -> None:
        db.table("agents").insert(
            {
                "agent_id": new_id,
                "provider_id": agent.provider_id,
                "public_key": public.raw,
                "hostname": agent.hostname,
                "enrolled_at_ms": now,
                "ask_per_gpu_hour": agent.ask_per_gpu_hour,
                "last_seen_ms": agent.last_seen_ms,
                "penalty_ppm": agent.penalty_ppm,
                "penalty_at_ms": agent.penalty_at_ms,
            }
        )
        db.execute("UPDATE agents SET revoked_at_ms = ? WHERE agent_id = ?", [now, old_id])
        db.execute("UPDATE gpus SET agent_id = ? WHERE agent_id = ?", [new_id, old_id])
        db.execute(
            "UPDATE capacity_flags SET agent_id = ? WHERE agent_id = ? AND cleared_at_ms IS NULL",
            [new_id, old_id],
        )
        key = log_entries.AgentKey(new_id, public.raw, agent.provider_id, agent.provider_uscc)
        tlog.append_entries(db, [log_entries.encode_entry(log_entries.AGENT_KEY, now, key)])

    return write
