"""Private images on a provider's host: what a lease pulled with its credentials is for that
lease alone.

The host's image cache would otherwise hand a private image to any later job naming it (by
tag, by digest or by content ID), or to a job whose own registry serves a manifest naming the
same content (the engine then skips the download). So:

- an image whose content was not on the host before a credentialed pull is held, by content
  ID, in the spool, for as long as a lease that pulled it runs; a marker written before the
  pull makes a restarted agent hold what its interrupted pull brought;
- a job without credentials for a held name is pulled from the registry, which decides;
- every container is created by content ID, after checking that the ID is not held by
  another lease (or waiting for removal): the check and the create, and each credentialed
  pull with its hold, take one agent-wide lock, so no create slips between a private pull's
  landing and its hold;
- when an image's last lease ends it is removed; a removal that fails is retried at every
  later lease end.

Content that was on the host already is not secret, so only the private tag goes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from agent.engine import Engine, EngineError, ImagePullFailed
from agent.spool import PULLING_PREFIX, Spool

log = logging.getLogger("suanli.agent")


class PrivateImageHeld(ImagePullFailed):
    """The image a job names is another lease's private content on this host."""


class PrivateImages:
    def __init__(self, spool: Spool, engine: Engine) -> None:
        self.spool = spool
        self.engine = engine
        self._lock = asyncio.Lock()

    async def may_use_cached(self, ref: str) -> bool:
        """True if the host has this image and it is no lease's private image."""
        image_id = await self.engine.image_id(ref)
        if image_id is None:
            return False
        return image_id not in await asyncio.to_thread(self.spool.private_image_ids)

    @asynccontextmanager
    async def credentialed_pull(self, ref: str, lease_id: str) -> AsyncIterator[None]:
        """Around a pull with a lease's credentials: hold what it brought, even if it failed
        after the image landed."""
        async with self._lock:
            interrupted = await asyncio.to_thread(self.spool.mark_pulling, lease_id)
            ids_before = await self.engine.image_ids()
            try:
                yield
            finally:
                await self._hold_pulled(ref, lease_id, ids_before, interrupted)

    async def _hold_pulled(
        self, ref: str, lease_id: str, ids_before: set[str], interrupted: bool
    ) -> None:
        with suppress(EngineError):
            image_id = await self.engine.image_id(ref)
            held = await asyncio.to_thread(self.spool.private_image_ids)
            # an interrupted earlier try may have brought the content this one found
            if image_id is not None and (
                interrupted or image_id not in ids_before or image_id in held
            ):
                await asyncio.to_thread(self.spool.hold_private_image, image_id, lease_id)
        await asyncio.to_thread(self.spool.unmark_pulling, lease_id)

    @asynccontextmanager
    async def creating(self, ref: str, lease_id: str) -> AsyncIterator[str]:
        """The content ID to create this lease's container from, under the lock until the
        create is done; PrivateImageHeld if it is another lease's private image."""
        async with self._lock:
            image_id = await self.engine.image_id(ref)
            if image_id is None:
                raise ImagePullFailed(f"image {ref} is not on the host after its pull")
            holders = await asyncio.to_thread(self.spool.private_image_holders, image_id)
            if holders and lease_id not in holders:
                raise PrivateImageHeld(
                    f"image {ref} is content {image_id[:12]}, which another lease pulled with "
                    "its credentials; refused to this one"
                )
            yield f"sha256:{image_id}"

    async def release(self, lease_id: str, ref: str) -> None:
        """A lease that pulled `ref` with credentials has ended: untag it unless another lease
        still holds its content, and remove every image no lease holds any more."""
        try:
            ref_id = await self.engine.image_id(ref)
        except EngineError:
            ref_id = None
        to_remove, still_held = await asyncio.to_thread(self.spool.release_private_images, lease_id)
        if ref_id not in still_held:
            with suppress(EngineError):
                await self.engine.remove_image(ref)
        for image_id in sorted(to_remove):
            try:
                await self.engine.remove_image(f"sha256:{image_id}")
            except EngineError as exc:
                log.warning("private image %s not removed yet: %s", image_id[:12], exc)
                continue
            await asyncio.to_thread(self.spool.forget_private_image, image_id)


__all__ = ["PULLING_PREFIX", "PrivateImageHeld", "PrivateImages"]
