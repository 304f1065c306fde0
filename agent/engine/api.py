"""The engine's API over its unix socket: one session, the negotiated API version, a timeout
on every request, and failures turned into `EngineError`s that name the request.

One client serves dockerd and Podman's Docker-compatible service. Every request carries an
explicit API version, negotiated once through `GET /version`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Self, cast
from urllib.parse import quote

import aiohttp

from agent.engine.errors import (
    ContainerNotFound,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    engine_message,
)
from agent.engine.info import EngineInfo

# Docker 20.10 and Podman 4-5 speak 1.41; Docker 29 refuses anything below 1.44. Nothing this
# client sends changed meaning between these two, so it speaks the newest both sides know.
API_VERSION_MIN = (1, 41)
API_VERSION_MAX = (1, 47)
# Podman's own API: containers on Podman are created (and checked) through it (Engine.create).
LIBPOD_API = "/v4.0.0/libpod"


def _version_tuple(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


class EngineApi:
    """A client of one engine socket: plumbing and what the engine is. Call `close()` when done."""

    def __init__(
        self, socket_path: str | Path, *, timeout_s: float = 30.0, api_version: str | None = None
    ) -> None:
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s
        self._api_version = api_version
        self._version: dict[str, Any] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._negotiate_lock: asyncio.Lock | None = None
        self._userns_remapped: bool | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path)
            )
        return self._session

    async def _raw(
        self, method: str, path: str, *, timeout: aiohttp.ClientTimeout, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        """Send a request; the caller reads and releases the response."""
        try:
            return await self._http().request(
                method, "http://engine" + path, timeout=timeout, **kwargs
            )
        except aiohttp.ClientConnectionError as exc:
            raise EngineUnavailable(
                f"the container engine at {self.socket_path} is not answering: {exc}"
            ) from exc
        except TimeoutError as exc:
            raise EngineTimeout(
                f"the container engine did not answer {method} {path} "
                f"within {timeout.total or timeout.sock_connect} s"
            ) from exc

    async def _prefix(self) -> str:
        if self._api_version is None:
            if self._negotiate_lock is None:
                self._negotiate_lock = asyncio.Lock()
            async with self._negotiate_lock:
                if self._api_version is None:
                    await self._negotiate()
        return f"/v{self._api_version}"

    async def _negotiate(self) -> None:
        version = await self._fetch_version("/version")
        server = _version_tuple(str(version.get("ApiVersion", "1.41")))
        low = _version_tuple(str(version.get("MinAPIVersion", "1.12")))
        chosen = min(server, API_VERSION_MAX)
        if chosen < API_VERSION_MIN or chosen < low:
            raise EngineUnavailable(
                f"the container engine speaks API {low[0]}.{low[1]} to {server[0]}.{server[1]}, "
                f"and this agent needs {API_VERSION_MIN[0]}.{API_VERSION_MIN[1]} to "
                f"{API_VERSION_MAX[0]}.{API_VERSION_MAX[1]}"
            )
        self._api_version = f"{chosen[0]}.{chosen[1]}"

    async def _fetch_version(self, path: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        response = await self._raw("GET", path, timeout=timeout)
        async with response:
            body = await self._read(response, "GET", path, timeout)
            if response.status != 200:
                raise EngineUnavailable(
                    f"the container engine answered GET /version with "
                    f"{response.status}: {engine_message(body)}"
                )
        version = cast(dict[str, Any], json.loads(body))
        self._version = version
        return version

    async def _read(
        self,
        response: aiohttp.ClientResponse,
        method: str,
        path: str,
        timeout: aiohttp.ClientTimeout,
    ) -> bytes:
        try:
            return await response.read()
        except aiohttp.ClientError as exc:
            raise EngineUnavailable(
                f"the container engine broke off {method} {path}: {exc}"
            ) from exc
        except TimeoutError as exc:
            raise EngineTimeout(
                f"the container engine did not finish answering {method} {path} "
                f"within {timeout.total} s"
            ) from exc

    async def _call(
        self,
        method: str,
        path: str,
        *,
        ok: Collection[int] = (200,),
        timeout_s: float | None = None,
        libpod: bool = False,
        **kwargs: Any,
    ) -> tuple[int, bytes]:
        """One request under the API prefix; a status outside `ok` raises an EngineError whose
        sentence names the request. Callers map 404/409 to their own errors first via `ok`."""
        full = (LIBPOD_API if libpod else await self._prefix()) + path
        timeout = aiohttp.ClientTimeout(total=self.timeout_s if timeout_s is None else timeout_s)
        response = await self._raw(method, full, timeout=timeout, **kwargs)
        async with response:
            body = await self._read(response, method, path, timeout)
        if response.status not in ok:
            raise EngineError(
                f"the container engine refused {method} {path.split('?')[0]} "
                f"({response.status}): {engine_message(body)}"
            )
        return response.status, body

    async def _container_call(
        self,
        method: str,
        container_id: str,
        action: str,
        *,
        ok: Collection[int] = (200, 204),
        **kwargs: Any,
    ) -> tuple[int, bytes]:
        path = f"/containers/{quote(container_id, safe='')}{action}"
        status, body = await self._call(method, path, ok={*ok, 404}, **kwargs)
        if status == 404:
            raise ContainerNotFound(f"the container engine has no container {container_id}")
        return status, body

    # -- engine ----------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise EngineUnavailable unless the engine answers `/_ping` with OK."""
        timeout = aiohttp.ClientTimeout(total=min(self.timeout_s, 10.0))
        response = await self._raw("GET", "/_ping", timeout=timeout)
        async with response:
            body = await self._read(response, "GET", "/_ping", timeout)
        if response.status != 200 or body.strip() != b"OK":
            raise EngineUnavailable(
                f"the container engine at {self.socket_path} answered its "
                f"ping with {response.status} {body[:80]!r}"
            )

    async def version(self) -> dict[str, Any]:
        """The engine's `/version` document (Docker's shape; Podman adds a component)."""
        return await self._fetch_version(f"{await self._prefix()}/version")

    @property
    def flavor(self) -> Literal["docker", "podman"] | None:
        """Which engine this is ("docker" or "podman") once it has been asked anything."""
        if self._version is None:
            return None
        components = self._version.get("Components") or []
        if any("podman" in str(c.get("Name", "")).lower() for c in components):
            return "podman"
        return "docker"

    async def _flavor(self) -> Literal["docker", "podman"]:
        if self._version is None:
            await self.version()
        flavor = self.flavor
        assert flavor is not None
        return flavor

    async def info(self) -> EngineInfo:
        """The engine's runtimes and GPU support, so the agent can pick a gpu_mode."""
        version = await self.version()
        _, body = await self._call("GET", "/info")
        raw = cast(dict[str, Any], json.loads(body))
        flavor = await self._flavor()
        runtimes = tuple(sorted((raw.get("Runtimes") or {}).keys()))
        spec_dirs = tuple(raw.get("CDISpecDirs") or ())
        # Podman resolves CDI names since 4.1 (through its own API, see build_libpod_create_body);
        # Docker only from 25, and says so by listing its spec dirs once the feature is on.
        cdi = bool(spec_dirs) if flavor == "docker" else True
        return EngineInfo(
            flavor=flavor,
            version=str(version.get("Version", "")),
            api_version=str(self._api_version),
            runtimes=runtimes,
            default_runtime=raw.get("DefaultRuntime") or None,
            nvidia_runtime="nvidia" in runtimes,
            cdi=cdi,
            cdi_spec_dirs=spec_dirs,
            cgroup_version=str(raw["CgroupVersion"]) if raw.get("CgroupVersion") else None,
            ncpu=raw.get("NCPU"),
            mem_total=raw.get("MemTotal"),
            raw=MappingProxyType(raw),
        )
