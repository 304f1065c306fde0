"""Containers on the engine: create (Docker's and Podman's way, checked against the spec),
start, wait, stop, kill, remove, inspect, logs and listing by label."""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any, cast
from urllib.parse import quote

import aiohttp

from agent.backoff import Backoff
from agent.engine.errors import (
    ContainerConflict,
    ContainerNotFound,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    GpuPinningFailed,
    ImageNotFound,
    LimitNotEnforced,
    engine_message,
    start_error,
)
from agent.engine.hardening import (
    build_create_body,
    build_libpod_create_body,
    numeric_non_root,
    unenforced_limits,
)
from agent.engine.images import ImageCalls
from agent.engine.info import ContainerState
from agent.engine.networks import NetworkCalls
from agent.engine.spec import FALLBACK_USER, ContainerSpec
from agent.engine.streams import demultiplex

log = logging.getLogger(__name__)
_REMOVE_TRIES = 8
_REMOVE_FIRST_DELAY_S = 0.2
_REMOVE_MAX_DELAY_S = 1.0


class Engine(ImageCalls, NetworkCalls):
    """A client of one engine socket. Methods are coroutines; call `close()` when done."""

    async def create(self, spec: ContainerSpec) -> str:
        """Create (not start) the container; return its id.

        Podman gets its own API (the compatible one drops CDI devices and user namespaces);
        Docker the compatible one, with the job's user replaced by FALLBACK_USER where a user
        namespace was asked for and the daemon does not remap. What the engine then says it
        applied is checked against the spec: a limit it dropped removes the container."""
        flavor = await self._flavor()
        if flavor == "podman" and spec.gpu_mode == "nvidia-runtime" and spec.gpu_uuids:
            raise GpuPinningFailed(
                "Podman ignores Docker device requests, so gpu_mode "
                "nvidia-runtime would start the job without its GPUs; use cdi"
            )
        if flavor == "podman":
            status, body = await self._call(
                "POST",
                "/containers/create",
                libpod=True,
                json=build_libpod_create_body(spec),
                ok=(201, 404, 409, 500),
                timeout_s=max(self.timeout_s, 60),
            )
            if status == 500:
                # Podman's own API answers a missing image with 500 "image not known".
                if "image not known" not in engine_message(body):
                    raise EngineError(
                        f"the container engine refused POST /containers/create "
                        f"(500): {engine_message(body)}"
                    )
                status = 404
        else:
            if (
                spec.userns_host_id is not None
                and not numeric_non_root(spec.user)
                and not await self.userns_remapped()
            ):
                spec = replace(spec, user=FALLBACK_USER)
            status, body = await self._call(
                "POST",
                "/containers/create",
                params={"name": spec.name},
                json=build_create_body(spec),
                ok=(201, 404, 409),
                timeout_s=max(self.timeout_s, 60),
            )
        if status == 404:
            raise ImageNotFound(f"image {spec.image} is not on this host: {engine_message(body)}")
        if status == 409:
            raise ContainerConflict(f"cannot create container {spec.name}: {engine_message(body)}")
        created = json.loads(body)
        container_id = str(created["Id"])
        discarded = [w for w in created.get("Warnings") or () if "discarded" in str(w).lower()]
        if not discarded:
            # Podman's own inspect shows the log size and id maps; its compatible one does not.
            _, raw = await self._call(
                "GET", f"/containers/{quote(container_id, safe='')}/json", libpod=flavor == "podman"
            )
            document = json.loads(raw)
            discarded = unenforced_limits(spec, document, flavor)
        if discarded:
            await self.remove(container_id, force=True)
            raise LimitNotEnforced(
                f"the engine would not enforce a limit of container "
                f"{spec.name}: {'; '.join(map(str, discarded))}"
            )
        for warning in created.get("Warnings") or ():
            log.warning("engine warning creating %s: %s", spec.name, warning)
        return container_id

    async def userns_remapped(self) -> bool:
        """Whether a Docker daemon runs every container in a user namespace (`userns-remap`),
        which it says in /info SecurityOptions as "name=userns". Asked once per client."""
        if self._userns_remapped is None:
            _, body = await self._call("GET", "/info")
            options = json.loads(body).get("SecurityOptions") or ()
            self._userns_remapped = any("name=userns" in str(o).split(",") for o in options)
        return self._userns_remapped

    async def root_isolation(self) -> tuple[str, str]:
        """How a job asking for a user namespace is kept from being root on the host, as
        (mode, sentence): "userns" (container root is an unprivileged host uid) or
        "non-root-user" (Docker without userns-remap: the job runs as FALLBACK_USER)."""
        flavor = await self._flavor()
        if flavor == "podman":
            return "userns", (
                "Podman: each job gets its own user namespace (explicit uid/gid "
                "maps); container root is not host root"
            )
        if await self.userns_remapped():
            return "userns", (
                "Docker remaps user namespaces (userns-remap): container root is not host root"
            )
        return "non-root-user", (
            f"Docker without userns-remap: container root would be host "
            f"root, so jobs run as uid:gid {FALLBACK_USER}; set "
            f'"userns-remap" in daemon.json for a user namespace'
        )

    async def start(self, container_id: str) -> None:
        """Start a created container. 304 (already running) is success."""
        status, body = await self._container_call(
            "POST", container_id, "/start", ok=range(200, 600), timeout_s=max(self.timeout_s, 60)
        )
        if status not in (204, 304):
            raise start_error(container_id, engine_message(body))

    async def wait(self, container_id: str, *, timeout_s: float | None = None) -> int:
        """Wait until the container is not running; return its exit code. Without timeout_s it
        waits as long as the job runs; cancel the task to stop waiting."""
        path = f"/containers/{quote(container_id, safe='')}/wait"
        full = await self._prefix() + path
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=self.timeout_s)
        try:
            response = await self._raw(
                "POST", full, params={"condition": "not-running"}, timeout=timeout
            )
            async with response:
                body = await self._read(response, "POST", path, timeout)
        except EngineTimeout as exc:
            raise EngineTimeout(
                f"container {container_id[:12]} was still running after {timeout_s:g} s"
            ) from exc
        if response.status == 404:
            raise ContainerNotFound(f"the container engine has no container {container_id}")
        if response.status != 200:
            raise EngineError(
                f"waiting for container {container_id[:12]} failed "
                f"({response.status}): {engine_message(body)}"
            )
        return int(json.loads(body)["StatusCode"])

    async def inspect(self, container_id: str) -> dict[str, Any]:
        """The engine's full inspect document of a container."""
        _, body = await self._container_call("GET", container_id, "/json", ok=(200,))
        return cast(dict[str, Any], json.loads(body))

    async def state(self, container_id: str) -> ContainerState:
        state = (await self.inspect(container_id)).get("State") or {}
        return ContainerState(
            status=str(state.get("Status", "")),
            running=bool(state.get("Running")),
            exit_code=int(state.get("ExitCode") or 0),
            oom_killed=bool(state.get("OOMKilled")),
            error=str(state.get("Error") or ""),
            pid=int(state.get("Pid") or 0),
            started_at=str(state.get("StartedAt", "")),
            finished_at=str(state.get("FinishedAt", "")),
        )

    async def stop(self, container_id: str, grace_s: int = 10) -> bool:
        """SIGTERM, then SIGKILL after grace_s. False if it was not running."""
        status, _ = await self._container_call(
            "POST",
            container_id,
            "/stop",
            params={"t": str(int(grace_s))},
            ok=(204, 304),
            timeout_s=grace_s + max(self.timeout_s, 30),
        )
        return status == 204

    async def kill(self, container_id: str, signal: str = "SIGKILL") -> bool:
        """Send a signal to the container's main process. False if it was not running."""
        status, body = await self._container_call(
            "POST", container_id, "/kill", params={"signal": signal}, ok=(204, 409, 500)
        )
        if status == 204:
            return True
        message = engine_message(body)
        # Docker answers 409 "is not running"; Podman 500 "container state improper".
        if status == 409 or "state improper" in message or "not running" in message:
            return False
        raise EngineError(
            f"signalling container {container_id[:12]} with {signal} failed: {message}"
        )

    async def remove(self, container_id: str, *, force: bool = True) -> None:
        """Delete the container and its anonymous volumes (force: even while running).

        Podman 4.3 may answer 500 "device or resource busy" while its own cleanup of a just
        exited container still holds a mount; that passes within moments, so it is retried."""
        backoff = Backoff(_REMOVE_FIRST_DELAY_S, _REMOVE_MAX_DELAY_S, jitter=False)
        for _ in range(_REMOVE_TRIES):
            status, body = await self._container_call(
                "DELETE",
                container_id,
                "",
                params={"force": str(force).lower(), "v": "true"},
                ok=(204, 409, 500),
                timeout_s=max(self.timeout_s, 60),
            )
            if status != 500 or "resource busy" not in engine_message(body):
                break
            log.warning(
                "removing container %s: %s; retrying", container_id[:12], engine_message(body)
            )
            await backoff.wait()
        if status == 500:
            raise EngineError(
                f"cannot remove container {container_id[:12]}: {engine_message(body)}"
            )
        if status == 409:
            raise ContainerConflict(
                f"cannot remove container {container_id[:12]}: {engine_message(body)}"
            )

    async def logs(
        self,
        container_id: str,
        *,
        since: int | None = None,
        follow: bool = False,
        stdout: bool = True,
        stderr: bool = True,
    ) -> AsyncIterator[tuple[str, bytes]]:
        """The container's output as ("stdout" | "stderr", bytes) chunks, from `since` (unix
        seconds) on. With follow it goes on until the container exits."""
        config = (await self.inspect(container_id)).get("Config") or {}
        params = {
            "stdout": str(stdout).lower(),
            "stderr": str(stderr).lower(),
            "follow": str(follow).lower(),
        }
        if since is not None:
            params["since"] = str(int(since))
        path = f"/containers/{quote(container_id, safe='')}/logs"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout_s, sock_read=None if follow else self.timeout_s
        )
        response = await self._raw(
            "GET", await self._prefix() + path, params=params, timeout=timeout
        )
        async with response:
            if response.status == 404:
                raise ContainerNotFound(f"the container engine has no container {container_id}")
            if response.status != 200:
                raise EngineError(
                    f"reading the logs of container {container_id[:12]} failed "
                    f"({response.status}): {engine_message(await response.read())}"
                )
            try:
                if config.get("Tty"):
                    async for chunk in response.content.iter_any():
                        yield "stdout", chunk
                else:
                    async for frame in demultiplex(response.content):
                        yield frame
            except aiohttp.ClientError as exc:
                raise EngineUnavailable(
                    f"the log stream of container {container_id[:12]} broke off: {exc}"
                ) from exc
            except TimeoutError as exc:
                raise EngineTimeout(
                    f"the log stream of container {container_id[:12]} stalled"
                ) from exc

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[dict[str, Any]]:
        """Every container (running or not) carrying all of these labels, as the engine's
        summaries (keys Id, Names, Image, State, Status, Labels)."""
        filters = {"label": [f"{key}={value}" for key, value in (labels or {}).items()]}
        _, body = await self._call(
            "GET", "/containers/json", params={"all": "true", "filters": json.dumps(filters)}
        )
        return cast(builtins.list[dict[str, Any]], json.loads(body))
