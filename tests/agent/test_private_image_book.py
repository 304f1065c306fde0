"""The agent's book of private images (agent/private_images.py) over a real spool: what a
credentialed pull brought is held while its leases run, refused to the host's cache for any
other job, and removed once its last lease ends, a failed removal being retried later."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.engine import EngineError
from agent.private_images import PrivateImageHeld, PrivateImages
from agent.spool import Spool

PUBLIC, PRIVATE = "a" * 64, "b" * 64


class Host:
    """A host's images: tags and content IDs; content a container uses (`busy`) cannot be
    removed by ID, and loses only its tag when removed by name, as on a real engine."""

    def __init__(self) -> None:
        self.refs = {"busybox:1": PUBLIC}
        self.contents = {PUBLIC}
        self.busy: set[str] = set()

    async def image_id(self, ref: str) -> str | None:
        bare = ref.removeprefix("sha256:")
        return self.refs.get(ref) or (bare if bare in self.contents else None)

    async def image_ids(self) -> set[str]:
        return set(self.contents)

    async def remove_image(self, ref: str) -> None:
        image_id = await self.image_id(ref)
        if image_id is None:
            return
        if ref.startswith("sha256:"):
            if image_id in self.busy:
                raise EngineError(f"the container engine refused DELETE /images/{ref} (409)")
            self.refs = {name: i for name, i in self.refs.items() if i != image_id}
        else:
            del self.refs[ref]
        if image_id not in self.refs.values() and image_id not in self.busy:
            self.contents.discard(image_id)


@pytest.fixture
def host_and_book(tmp_path: Path) -> tuple[Host, PrivateImages, Spool]:
    host, spool = Host(), Spool(tmp_path / "spool.db")
    return host, PrivateImages(spool, host), spool  # type: ignore[arg-type]  # a host's images


async def _pull(host: Host, book: PrivateImages, ref: str, image_id: str, lease: str) -> None:
    async with book.credentialed_pull(ref, lease):
        host.refs[ref] = image_id
        host.contents.add(image_id)


async def test_a_private_image_is_no_other_jobs_until_its_last_lease_ends(
    host_and_book: tuple[Host, PrivateImages, Spool],
) -> None:
    host, book, _ = host_and_book
    await _pull(host, book, "reg/team/w:1", PRIVATE, "lease-1")
    await _pull(host, book, "reg/team/w:1", PRIVATE, "lease-2")
    assert await book.may_use_cached("busybox:1")
    for ref in ("reg/team/w:1", f"sha256:{PRIVATE}"):
        assert not await book.may_use_cached(ref)
    await book.release("lease-1", "reg/team/w:1")
    assert host.refs["reg/team/w:1"] == PRIVATE, "lease-2 still holds the image and its tag"
    assert not await book.may_use_cached("reg/team/w:1")
    await book.release("lease-2", "reg/team/w:1")
    assert (host.refs, host.contents) == ({"busybox:1": PUBLIC}, {PUBLIC})


async def test_content_the_host_had_already_is_not_held(
    host_and_book: tuple[Host, PrivateImages, Spool],
) -> None:
    host, book, _ = host_and_book
    await _pull(host, book, "reg/team/same:1", PUBLIC, "lease-1")
    assert await book.may_use_cached("busybox:1")
    await book.release("lease-1", "reg/team/same:1")
    assert (host.refs, host.contents) == ({"busybox:1": PUBLIC}, {PUBLIC}), "only the tag went"


async def test_a_failed_removal_keeps_the_image_refused_and_is_retried(
    host_and_book: tuple[Host, PrivateImages, Spool], tmp_path: Path
) -> None:
    host, book, spool = host_and_book
    await _pull(host, book, "reg/team/w:1", PRIVATE, "lease-1")
    host.busy.add(PRIVATE)
    await book.release("lease-1", "reg/team/w:1")
    assert "reg/team/w:1" not in host.refs and PRIVATE in host.contents
    assert not await book.may_use_cached(f"sha256:{PRIVATE}"), "still refused while it stays"
    # a restarted agent reads the pending removal from its spool
    spool.close()
    reopened = PrivateImages(Spool(tmp_path / "spool.db"), host)  # type: ignore[arg-type]
    assert not await reopened.may_use_cached(f"sha256:{PRIVATE}")
    host.busy.clear()
    await _pull(host, reopened, "busybox:2", PUBLIC, "lease-9")
    await reopened.release("lease-9", "busybox:2")
    assert PRIVATE not in host.contents
    assert await reopened.may_use_cached("busybox:1")


async def test_a_container_is_created_by_content_id_and_never_from_anothers_content(
    host_and_book: tuple[Host, PrivateImages, Spool],
) -> None:
    host, book, _ = host_and_book
    await _pull(host, book, "reg/team/w:1", PRIVATE, "lease-1")
    async with book.creating("reg/team/w:1", "lease-1") as image:
        assert image == f"sha256:{PRIVATE}"
    # a rival's registry served a manifest naming the same content under a name of its own
    host.refs["evil.example/x:1"] = PRIVATE
    assert await book.may_use_cached("busybox:1")
    with pytest.raises(PrivateImageHeld, match="another lease pulled"):
        async with book.creating("evil.example/x:1", "lease-2"):
            raise AssertionError("no container may be created from it")
    async with book.creating("busybox:1", "lease-2") as image:
        assert image == f"sha256:{PUBLIC}"


async def test_a_pull_interrupted_by_a_crash_is_held_when_it_is_tried_again(
    host_and_book: tuple[Host, PrivateImages, Spool], tmp_path: Path
) -> None:
    host, _, spool = host_and_book
    assert spool.mark_pulling("lease-1") is False  # the pull began, then the agent died
    host.refs["reg/team/w:1"] = PRIVATE  # after its image landed
    host.contents.add(PRIVATE)
    spool.close()
    restarted = PrivateImages(Spool(tmp_path / "spool.db"), host)  # type: ignore[arg-type]
    await _pull(host, restarted, "reg/team/w:1", PRIVATE, "lease-1")  # found it already there
    assert not await restarted.may_use_cached("reg/team/w:1")
    with pytest.raises(PrivateImageHeld):
        async with restarted.creating(f"sha256:{PRIVATE}", "lease-2"):
            pass


async def test_a_pull_that_fails_after_its_image_landed_still_holds_it(
    host_and_book: tuple[Host, PrivateImages, Spool],
) -> None:
    host, book, _ = host_and_book
    with pytest.raises(EngineError):
        async with book.credentialed_pull("reg/team/w:1", "lease-1"):
            host.refs["reg/team/w:1"] = PRIVATE
            host.contents.add(PRIVATE)
            raise EngineError("the pull timed out after its last layer")
    assert not await book.may_use_cached(f"sha256:{PRIVATE}")
