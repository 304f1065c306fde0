"""The coordinator's enterprise and auditor API, as one small async JSON client.

The session, TLS, timeouts, redirects, following the leader among several coordinator URLs
and the error mapping are `shared.http_client`'s: the bearer token goes only where it allows
(HTTPS, or plain HTTP to loopback, and only to the URLs given), and every failure is one
`CoordinatorError` sentence. This module adds the routes and their JSON bodies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from shared.http_client import BadAnswer, HttpClient

DEFAULT_TIMEOUT_S = 30.0


def _path_part(value: str) -> str:
    return quote(value, safe="")


class CoordinatorApi(HttpClient):
    """One token's view of the coordinator (one URL, or a leader and its standbys): jobs, logs,
    market and account."""

    def __init__(
        self,
        urls: str | Sequence[str],
        token: str,
        ca_file: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(
            urls,
            ca_file=ca_file,
            timeout_s=timeout_s,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )

    async def call(
        self, method: str, path: str, *, query: dict[str, str] | None = None, body: Any = None
    ) -> dict[str, Any]:
        """One route's JSON answer, which is an object on every route of the API."""
        if body is None:
            answer = await self.request(method, path, query=query)
        else:
            answer = await self.request(
                method,
                path,
                query=query,
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
        if not isinstance(answer, dict):
            raise BadAnswer(
                f"the coordinator at {self.url} answered {method} {path} with no JSON object"
            )
        return answer

    async def submit_job(self, job: dict[str, Any]) -> dict[str, Any]:
        return await self.call("POST", "/v1/jobs", body=job)

    async def list_jobs(
        self,
        state: str | None = None,
        limit: int | None = None,
        *,
        name: str | None = None,
        label: str | None = None,
    ) -> dict[str, Any]:
        query = {}
        if state is not None:
            query["state"] = state
        if limit is not None:
            query["limit"] = str(limit)
        if name is not None:
            query["name"] = name
        if label is not None:
            query["label"] = label
        return await self.call("GET", "/v1/jobs", query=query)

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self.call("GET", f"/v1/jobs/{_path_part(job_id)}")

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return await self.call("POST", f"/v1/jobs/{_path_part(job_id)}/cancel")

    async def job_logs(
        self, job_id: str, offset: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        query = {"offset": str(offset)}
        if limit is not None:
            query["limit"] = str(limit)
        return await self.call("GET", f"/v1/jobs/{_path_part(job_id)}/logs", query=query)

    async def market(self) -> dict[str, Any]:
        return await self.call("GET", "/v1/market")

    async def account(self) -> dict[str, Any]:
        return await self.call("GET", "/v1/account")
