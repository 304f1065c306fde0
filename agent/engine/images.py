"""Images on the engine: whether one is there, pulls within a time and size limit, imports."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import aiohttp

from agent.engine.api import EngineApi
from agent.engine.errors import (
    EngineError,
    ImageNotFound,
    ImagePullFailed,
    ImageTooLarge,
    auth_refusal,
    engine_message,
    pull_error,
)
from agent.engine.registry_auth import RegistryCredentials
from agent.engine.streams import follow_pull, split_image_ref


class ImageCalls(EngineApi):
    """The image requests of the engine API."""

    async def image_exists(self, ref: str) -> bool:
        status, _ = await self._call("GET", f"/images/{quote(ref, safe='/:@')}/json", ok=(200, 404))
        return status == 200

    async def image_id(self, ref: str) -> str | None:
        """The content ID of the image a reference names on this host (tag, digest or ID alike),
        without its `sha256:` prefix; None if the host has none."""
        status, body = await self._call(
            "GET", f"/images/{quote(ref, safe='/:@')}/json", ok=(200, 404)
        )
        if status != 200:
            return None
        return _bare_id(json.loads(body).get("Id"))

    async def image_ids(self) -> set[str]:
        """The content IDs of every image on this host."""
        _, body = await self._call("GET", "/images/json", params={"all": "true"})
        return {bare for image in json.loads(body) if (bare := _bare_id(image.get("Id")))}

    async def remove_image(self, ref: str) -> None:
        """Delete an image (forced: even if stopped containers use it); absent is fine."""
        await self._call(
            "DELETE", f"/images/{quote(ref, safe='/:@')}", params={"force": "true"}, ok=(200, 404)
        )

    async def pull(
        self,
        ref: str,
        *,
        timeout_s: float = 600.0,
        max_bytes: int | None = None,
        progress: Callable[[str], object] | None = None,
        auth: RegistryCredentials | None = None,
    ) -> None:
        """Pull an image, giving up after timeout_s or once its layers exceed max_bytes; with
        `auth`, credentials for its registry (this request only), and a RegistryAuthRefused if
        the registry refuses them.

        Closing the request is what stops the engine's download, so both limits end it."""
        try:
            await self._pull(ref, timeout_s, max_bytes, progress, auth)
        except ImageTooLarge:
            raise
        except (ImageNotFound, ImagePullFailed) as exc:
            refused = None if auth is None else auth_refusal(ref, auth.serveraddress, exc.detail)
            if refused is not None:
                raise refused from exc
            raise

    async def _pull(
        self,
        ref: str,
        timeout_s: float,
        max_bytes: int | None,
        progress: Callable[[str], object] | None,
        auth: RegistryCredentials | None,
    ) -> None:
        image, tag = split_image_ref(ref)
        params = {"fromImage": image, **({"tag": tag} if tag else {})}
        path = f"{await self._prefix()}/images/create"
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._raw(
                    "POST",
                    path,
                    params=params,
                    headers=auth.header() if auth is not None else None,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s),
                )
                async with response:
                    if response.status != 200:
                        message = engine_message(await response.read())
                        if response.status == 404:
                            raise ImageNotFound(
                                f"image {ref} was not found in its registry: {message}"
                            )
                        raise pull_error(ref, message)
                    await follow_pull(ref, response.content, max_bytes, progress)
        except TimeoutError as exc:
            raise ImagePullFailed(
                f"pulling image {ref} did not finish within {timeout_s:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise ImagePullFailed(f"pulling image {ref} broke off: {exc}") from exc
        if not await self.image_exists(ref):
            raise ImagePullFailed(
                f"pulling image {ref} ended without error, yet the engine does not have it"
            )

    async def import_rootfs(
        self, source: bytes | Path, ref: str, *, timeout_s: float = 300.0
    ) -> str:
        """Import a root filesystem tarball as image `ref` (`repo:tag`); return the image id.

        The tag is applied by a separate request: Podman 4.3's import ignores `tag`."""
        repo, tag = split_image_ref(ref)
        with source.open("rb") if isinstance(source, Path) else io.BytesIO(source) as stream:
            _, body = await self._call(
                "POST",
                "/images/create",
                params={"fromSrc": "-"},
                data=stream,
                timeout_s=timeout_s,
                headers={"Content-Type": "application/x-tar"},
            )
        image_id = None
        for line in body.splitlines():
            event = json.loads(line) if line.strip() else {}
            if isinstance(event, dict) and event.get("error"):
                raise EngineError(f"importing image {ref} failed: {event['error']}")
            status = str(event.get("status", "")) if isinstance(event, dict) else ""
            if status.startswith("sha256:"):
                image_id = status
        if image_id is None:
            raise EngineError(f"importing image {ref} gave no image id: {body[:200]!r}")
        await self._call(
            "POST", f"/images/{image_id}/tag", params={"repo": repo, "tag": tag}, ok=(200, 201)
        )
        return image_id


def _bare_id(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value.removeprefix("sha256:")
