"""Who is calling, for agents: signed requests, their nonces, and the request floors that keep a
restart from forgetting a nonce that could be replayed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coordinator.config import Settings
from coordinator.errors import Unauthenticated
from coordinator.market import Agent
from coordinator.state import SKEW_MARGIN_MS, State
from coordinator.storage import Database, Session, clock_offset_ms
from shared.errors import SuanliError
from shared.signed_request import open_request, request_key_id

SIGNED_BEFORE_RESTART = "signed_before_restart"  # the agent's client signs afresh and retries
MAX_NONCES = 256  # past this many, an agent's nonces older than two windows are forgotten


class SignedRequests:
    def __init__(
        self, state: State, database: Database, settings: Settings, clock: Callable[[], int]
    ) -> None:
        self.state = state
        self.database = database
        self.window_ms = settings.signed_request_window_ms
        self.clock = clock
        self._floors_dirty: dict[str, int] = {}
        # skews and the alive time are kept on the database's clock, so that a coordinator
        # taking over with another clock reads the same floors (measured again at each flush)
        self.db_offset_ms = clock_offset_ms(database.db, clock)

    def authenticate(self, body: bytes, method: str, path: str) -> tuple[Agent, Any]:
        """The enrolled agent that signed `body` for this method and path, and what it says."""
        try:
            key_id = request_key_id(body)
        except SuanliError as exc:
            raise Unauthenticated(f"agent requests must be signed: {exc.detail}") from None
        agent = self.state.market.agents.get(key_id.hex())
        if agent is None:
            raise Unauthenticated("the request is signed by a key that is not enrolled")
        if agent.revoked:
            raise Unauthenticated(
                "this agent's key has been revoked, or replaced by a rotation", code="agent_revoked"
            )
        now = self.clock()
        window = self.window_ms
        try:
            signed = open_request(body, agent.public_key, method, path, now, window)
        except SuanliError as exc:
            raise Unauthenticated(exc.detail) from None
        if signed.issued_at_ms <= agent.not_before_ms:
            # nonces seen before the coordinator's restart are forgotten; their times are not
            raise Unauthenticated(
                "the request was signed before the coordinator restarted "
                "(a possible replay); sign it again",
                code=SIGNED_BEFORE_RESTART,
            )
        nonces = agent.nonces
        if signed.nonce in nonces:
            raise Unauthenticated("the request was already received (replayed nonce)")
        skew = signed.issued_at_ms - (now + self.db_offset_ms)
        if agent.skew_ms is None or skew > agent.skew_ms + SKEW_MARGIN_MS:
            agent.skew_ms = skew
            self._floors_dirty[agent.agent_id] = skew
        if len(nonces) > MAX_NONCES:
            for nonce, at in list(nonces.items()):
                if at < now - 2 * window:
                    del nonces[nonce]
        nonces[signed.nonce] = signed.issued_at_ms
        return agent, signed.body

    def flush_request_floors(self, stopping: bool = False) -> None:
        """Persist that the service is alive now, and the clock skews that grew since the last
        flush (rare: a steady skew is written once). After a restart an agent's requests must
        be signed after the last moment the old run served, by the agent's own clock."""
        rows = list(self._floors_dirty.items())
        self._floors_dirty.clear()

        def write(db: Session) -> None:
            self.db_offset_ms = clock_offset_ms(db, self.clock)
            now = self.clock() + self.db_offset_ms
            if rows:
                db.conn.executemany(
                    "INSERT INTO agent_request_floors (agent_id, skew_ms) VALUES (?, ?) "
                    "ON CONFLICT (agent_id) DO UPDATE SET skew_ms = excluded.skew_ms",
                    rows,
                )
            db.conn.execute(
                "INSERT INTO coordinator_alive (id, at_ms, stopped) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms, stopped = excluded.stopped",
                [now, int(stopping)],
            )

        self.database.submit(write)
