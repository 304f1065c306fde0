"""The coordinator's enterprise and auditor API, as one small async JSON client.

It sends the bearer token only where `shared.transport` allows (HTTPS, or plain HTTP
to loopback), verifies TLS, never follows redirects (they could carry the token
elsewhere), and turns every failure into one sentence: the server's own `detail`
when it answered, or what went wrong on the way when it did not.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from typing import Any, Self
from urllib.parse import quote

import aiohttp

from shared.errors import SuanliError
from shared.transport import check_coordinator_url, client_ssl_context

DEFAULT_TIMEOUT_S = 30.0


class ClientError(SuanliError):
    """The request did not succeed; the message is one sentence for people."""

    code = "client_error"


class Refused(ClientError):
    """The coordinator answered with an error body `{"error": code, "detail": sentence}`."""

    code = "refused"

    def __init__(self, detail: str, status: int, error: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error


class Unreachable(ClientError):
    """No answer: the connection, TLS or the wait failed."""

    code = "unreachable"


def _path_part(value: str) -> str:
    return quote(value, safe="")


class CoordinatorApi:
    """One token's view of the coordinator: jobs, logs, market and account."""

    def __init__(
        self, url: str, token: str, ca_file: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.url = check_coordinator_url(url)
        self._ssl = (
            client_ssl_context(ca_file) if self.url.startswith("https://") or ca_file else None
        )
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": f"suanli/{version('suanli')}",
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers
            )
        return self._session

    async def request(
        self, method: str, path: str, *, query: dict[str, str] | None = None, body: Any = None
    ) -> Any:
        target = self.url + path
        try:
            async with self._http().request(
                method, target, params=query, json=body, allow_redirects=False
            ) as response:
                raw = await response.read()
                status = response.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise Unreachable(
                f"cannot verify the TLS certificate of the coordinator at {self.url} "
                f"({_os_reason(exc)}); pass --ca-file if it uses a private CA"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise Unreachable(
                f"the TLS handshake with the coordinator at {self.url} failed ({_os_reason(exc)})"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(
                f"cannot reach the coordinator at {self.url} ({_os_reason(exc)})"
            ) from None
        except TimeoutError:
            raise Unreachable(
                f"the coordinator at {self.url} did not answer within {self._timeout.total:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise Unreachable(
                f"lost the connection to the coordinator at {self.url} "
                f"({exc.__class__.__name__}: {exc})"
            ) from None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if 200 <= status < 300 and data is not None:
            return data
        if isinstance(data, dict) and isinstance(data.get("detail"), str):
            raise Refused(data["detail"], status, str(data.get("error", "error")))
        raise Refused(
            f"the coordinator at {self.url} answered {method} {path} with HTTP "
            f"{status} and no JSON error body",
            status,
            "bad_response",
        )

    # -- the API --------------------------------------------------------------------------

    async def submit_job(self, job: dict[str, Any]) -> dict[str, Any]:
        return dict(await self.request("POST", "/v1/jobs", body=job))

    async def list_jobs(self, state: str | None = None, limit: int | None = None) -> dict[str, Any]:
        query = {}
        if state is not None:
            query["state"] = state
        if limit is not None:
            query["limit"] = str(limit)
        return dict(await self.request("GET", "/v1/jobs", query=query))

    async def job(self, job_id: str) -> dict[str, Any]:
        return dict(await self.request("GET", f"/v1/jobs/{_path_part(job_id)}"))

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return dict(await self.request("POST", f"/v1/jobs/{_path_part(job_id)}/cancel"))

    async def job_logs(
        self, job_id: str, offset: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        query = {"offset": str(offset)}
        if limit is not None:
            query["limit"] = str(limit)
        return dict(await self.request("GET", f"/v1/jobs/{_path_part(job_id)}/logs", query=query))

    async def market(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/v1/market"))

    async def account(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/v1/account"))


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    error = exc.os_error
    return str(error.strerror or error) if error is not None else str(exc)
