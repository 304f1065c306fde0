"""Private images on a provider's host: what a lease pulled with its credentials is for that
lease alone.

The host's image cache would otherwise hand a private image to any later job naming it (by
tag, by digest or by content ID) without credentials. An image whose content was not on the
host before a credentialed pull is held, by content ID, in the spool for as long as a lease
that pulled it runs; while held, or while its removal is still pending, a job without the
credentials is pulled from the registry like a job whose image the host lacks, and the
registry decides. When its last lease ends the image is removed; a removal that fails is
retried at every later lease end. Content that was on the host already is not secret, so
only the private tag goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agent.engine import Engine, EngineError
from agent.spool import Spool

log = logging.getLogger("suanli.agent")


class PrivateImages:
    def __init__(self, spool: Spool, engine: Engine) -> None:
        self.spool = spool
        self.engine = engine

    async def may_use_cached(self, ref: str) -> bool:
        """True if the host has this image and it is no lease's private image."""
        image_id = await self.engine.image_id(ref)
        if image_id is None:
            return False
        return image_id not in await asyncio.to_thread(self.spool.private_image_ids)

    async def before_pull(self) -> set[str]:
        return await self.engine.image_ids()

    async def pulled(self, ref: str, lease_id: str, ids_before: set[str]) -> None:
        """Hold what a credentialed pull brought, unless the host had that content already."""
        image_id = await self.engine.image_id(ref)
        if image_id is None:
            return
        held = await asyncio.to_thread(self.spool.private_image_ids)
        if image_id not in ids_before or image_id in held:
            await asyncio.to_thread(self.spool.hold_private_image, image_id, lease_id)

    async def release(self, lease_id: str, ref: str) -> None:
        """A lease that pulled `ref` with credentials has ended: untag it unless another lease
        still holds its content, and remove every image no lease holds any more."""
        try:
            ref_id = await self.engine.image_id(ref)
        except EngineError:
            ref_id = None
        to_remove, still_held = await asyncio.to_thread(self.spool.release_private_images, lease_id)
        if ref_id not in still_held:
            with contextlib.suppress(EngineError):
                await self.engine.remove_image(ref)
        for image_id in sorted(to_remove):
            try:
                await self.engine.remove_image(f"sha256:{image_id}")
            except EngineError as exc:
                log.warning("private image %s not removed yet: %s", image_id[:12], exc)
                continue
            await asyncio.to_thread(self.spool.forget_private_image, image_id)
