"""The agent's side of the coordinator protocol: msgpack bodies, every request signed with the
agent's key, afresh for each try (one sent again to the leader after a standby's refusal is a
new signature with a new nonce, never the same bytes). The session, TLS, timeouts, following
the leader among several coordinator URLs and the error mapping (`CoordinatorError`) are
`shared.http_client`'s."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from shared import canonical
from shared.clock import now_ms
from shared.http_client import CoordinatorError, HttpClient, Refused
from shared.identity import PrivateKey
from shared.signed_request import sign_request

MSGPACK = "application/msgpack"
DEFAULT_TIMEOUT_S = 60.0
# a long poll is answered within its wait; this much more is allowed for the answer to come
LONG_POLL_SLACK_S = 30.0
# A heartbeat waits less than a request may: one sent to a leader whose machine vanished
# (no answer, no reset) is given up in time for the next, to the new leader, to arrive well
# within the coordinator's heartbeat timeout (45 s by default), so no lease is lost to it.
HEARTBEAT_TIMEOUT_S = 20.0
# a restarted coordinator refuses requests signed before the last moment its previous run may
# have served (at most about a second after it started); a fresh signature gets through
SIGNED_BEFORE_RESTART = "signed_before_restart"
RESIGN_TRIES = 8
RESIGN_PAUSE_S = 0.2


class CoordinatorClient(HttpClient):
    """One agent key's requests to the coordinator (one URL, or a leader and its standbys);
    `session` may be shared by many clients."""

    body_kind = "msgpack"

    def __init__(
        self,
        urls: str | Sequence[str],
        key: PrivateKey,
        ca_file: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(
            urls, ca_file=ca_file, timeout_s=timeout_s, product="suanli-agent", session=session
        )
        self.key = key
        self.heartbeat_failures = 0

    def decode(self, raw: bytes) -> Any:
        return canonical.decode(raw)

    async def _post(
        self, path: str, body: bytes | Callable[[], bytes], timeout_s: float | None = None
    ) -> Any:
        """POST a msgpack body: these bytes, or what `body()` makes afresh for each try."""
        return await self.request(
            "POST", path, data=body, headers={"Content-Type": MSGPACK}, timeout_s=timeout_s
        )

    async def signed(self, path: str, body: Any, timeout_s: float | None = None) -> Any:
        def envelope() -> bytes:
            return sign_request(self.key, "POST", path, body, now_ms())

        for _ in range(RESIGN_TRIES - 1):
            try:
                return await self._post(path, envelope, timeout_s)
            except Refused as exc:
                if exc.error != SIGNED_BEFORE_RESTART:
                    raise
            await asyncio.sleep(RESIGN_PAUSE_S)
        return await self._post(path, envelope, timeout_s)

    async def enrol(self, token: str, hostname: str | None = None) -> dict[str, Any]:
        path = "/v1/agent/enroll"
        fields = {"token": token, "hostname": hostname or socket.gethostname()}

        def body() -> bytes:
            request = sign_request(self.key, "POST", path, fields, now_ms())
            return canonical.encode({"public_key": self.key.public.raw, "request": request})

        return dict(await self._post(path, body))

    async def rotate_key(self, new_key: PrivateKey) -> dict[str, Any]:
        """Replace this client's key with `new_key` at the coordinator: the old key signs the
        request, the new key signs that it takes over this agent."""
        path = "/v1/agent/rotate-key"
        proof = sign_request(new_key, "POST", path, {"rotates": self.key.public.agent_id}, now_ms())
        return dict(await self.signed(path, {"public_key": new_key.public.raw, "request": proof}))

    async def heartbeat(
        self, ask_per_gpu_hour: int | None, inventory: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            return dict(
                await self.signed(
                    "/v1/agent/heartbeat",
                    {"ask_per_gpu_hour": ask_per_gpu_hour, "inventory": inventory},
                    timeout_s=min(HEARTBEAT_TIMEOUT_S, self.timeout_s),
                )
            )
        except CoordinatorError:
            self.heartbeat_failures += 1
            raise

    async def leases(self, known_version: int, wait_ms: int) -> dict[str, Any]:
        return dict(
            await self.signed(
                "/v1/agent/leases",
                {"known_version": known_version, "wait_ms": wait_ms},
                timeout_s=wait_ms / 1000 + LONG_POLL_SLACK_S,
            )
        )

    async def status(self, lease_id: str, event: str, **fields: Any) -> dict[str, Any]:
        return dict(
            await self.signed("/v1/agent/status", {"lease_id": lease_id, "event": event, **fields})
        )

    async def log_chunk(self, lease_id: str, offset: int, data: bytes) -> dict[str, Any]:
        return dict(
            await self.signed(
                "/v1/agent/logs", {"lease_id": lease_id, "offset": offset, "data": data}
            )
        )
