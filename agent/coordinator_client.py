"""The agent's side of the coordinator protocol: every request signed with the agent's key."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp

from shared import canonical
from shared.clock import now_ms
from shared.errors import SuanliError
from shared.identity import PrivateKey
from shared.signed_request import sign_request
from shared.transport import check_coordinator_url, client_ssl_context

MSGPACK = "application/msgpack"


class CoordinatorError(SuanliError):
    """The coordinator refused a request or could not be reached."""

    code = "coordinator_error"

    def __init__(self, detail: str, status: int | None = None, error: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error


class CoordinatorClient:
    def __init__(
        self,
        url: str,
        key: PrivateKey,
        ca_file: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.url = check_coordinator_url(url)
        self.key = key
        self._ssl = client_ssl_context(ca_file) if self.url.startswith("https://") else None
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _post(self, path: str, body: bytes, timeout_s: float | None = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None
        try:
            async with self._http().post(
                self.url + path,
                data=body,
                ssl=self._ssl,
                headers={"Content-Type": MSGPACK},
                timeout=timeout,
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CoordinatorError(f"cannot reach the coordinator at {self.url}: {exc!r}") from None
        try:
            data = canonical.decode(raw)
        except SuanliError:
            raise CoordinatorError(
                f"the coordinator answered {status} with an unreadable body", status
            ) from None
        if status >= 400:
            detail = data.get("detail") if isinstance(data, dict) else None
            error = data.get("error") if isinstance(data, dict) else None
            raise CoordinatorError(
                f"coordinator refused {path} ({status} {error}): {detail}", status, error
            )
        return data

    async def signed(self, path: str, body: Any, timeout_s: float | None = None) -> Any:
        envelope = sign_request(self.key, "POST", path, body, now_ms())
        return await self._post(path, envelope, timeout_s)

    async def enrol(self, token: str, hostname: str | None = None) -> dict[str, Any]:
        path = "/v1/agent/enroll"
        request = sign_request(
            self.key,
            "POST",
            path,
            {"token": token, "hostname": hostname or socket.gethostname()},
            now_ms(),
        )
        body = canonical.encode({"public_key": self.key.public.raw, "request": request})
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
        return dict(
            await self.signed(
                "/v1/agent/heartbeat",
                {"ask_per_gpu_hour": ask_per_gpu_hour, "inventory": inventory},
            )
        )

    async def leases(self, known_version: int, wait_ms: int) -> dict[str, Any]:
        return dict(
            await self.signed(
                "/v1/agent/leases",
                {"known_version": known_version, "wait_ms": wait_ms},
                timeout_s=wait_ms / 1000 + 30,
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
