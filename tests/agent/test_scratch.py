"""Scratch volumes for real: loop-mounted ext4 images of the size asked, nodev and nosuid, full
at their size, gone with their lease; leftovers removed; refused where not enforceable."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentSettings
from agent.scratch import PROBE_BYTES, ScratchUnavailable, ScratchVolumes, scratch_check

MIB = 1 << 20

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
    reason="loop mounts need root and loop devices",
)


@pytest.fixture
def volumes(tmp_path: Path) -> Iterator[ScratchVolumes]:
    made = ScratchVolumes(tmp_path / "scratch", reserve_bytes=0)
    made.root.mkdir()
    yield made
    made.remove_leftovers(set())


def _options(mount: Path) -> set[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mount):
            return set(fields[5].split(","))
    raise AssertionError(f"{mount} is not mounted")


def _loops_of(image: Path) -> str:
    return subprocess.run(
        ["losetup", "-j", str(image)], capture_output=True, text=True, check=True
    ).stdout


def test_a_volume_holds_its_size_and_not_a_byte_more(volumes: ScratchVolumes) -> None:
    mount = volumes.create("lease_a", 64 * MIB)
    image = volumes.image_of("lease_a")
    assert {"nodev", "nosuid", "rw"} <= _options(mount)
    assert image.stat().st_size == 64 * MIB and image.stat().st_blocks * 512 >= 64 * MIB
    assert oct(mount.stat().st_mode & 0o7777) == "0o1777"
    (mount / "half").write_bytes(b"x" * (32 * MIB))
    with pytest.raises(OSError) as full, open(mount / "more", "wb") as out:
        for _ in range(64):
            out.write(b"y" * MIB)
            out.flush()
            os.fsync(out.fileno())
    assert full.value.errno == errno.ENOSPC
    assert _loops_of(image)

    volumes.remove("lease_a")
    assert not mount.exists() and not image.exists()
    assert _loops_of(image) == "", "the loop device was released"


def test_free_scratch_counts_the_agents_own_volumes_as_free(volumes: ScratchVolumes) -> None:
    """The coordinator deducts its leases' scratch; the agent must not deduct it as well."""
    before = volumes.free_bytes()
    volumes.create("lease_b", 64 * MIB)
    assert volumes.held_bytes() >= 64 * MIB
    assert abs(volumes.free_bytes() - before) < 16 * MIB
    reserved = ScratchVolumes(volumes.root, reserve_bytes=before + (1 << 40))
    assert reserved.free_bytes() == 0


def test_more_than_the_disk_has_is_refused_and_leaves_nothing(volumes: ScratchVolumes) -> None:
    """Attack: a rogue coordinator's lease asks for 2^50 bytes of scratch."""
    with pytest.raises(ScratchUnavailable, match="this host has"):
        volumes.create("lease_huge", 1 << 50)
    assert not volumes.image_of("lease_huge").exists()
    assert not volumes.mount_of("lease_huge").exists()


@pytest.mark.parametrize("lease_id", ["../etc", "a/b", "", "x" * 200, "lease id"])
def test_a_lease_id_cannot_name_a_path_outside(volumes: ScratchVolumes, lease_id: str) -> None:
    with pytest.raises(ScratchUnavailable, match="cannot name a scratch volume"):
        volumes.create(lease_id, 16 * MIB)


def test_links_a_hostile_job_leaves_lead_nowhere_on_the_host(
    volumes: ScratchVolumes, tmp_path: Path
) -> None:
    precious = tmp_path / "host-file"
    precious.write_text("the provider's")
    mount = volumes.create("lease_c", 32 * MIB)
    (mount / "link").symlink_to(precious)
    (mount / "dir-link").symlink_to(tmp_path)
    volumes.remove("lease_c")
    assert precious.read_text() == "the provider's" and tmp_path.is_dir()


def test_leftovers_of_a_crashed_agent_go_and_live_leases_stay(volumes: ScratchVolumes) -> None:
    volumes.create("lease_live", 16 * MIB)
    volumes.create("lease_dead", 16 * MIB)
    volumes.images.joinpath("lease_orphan.img").write_bytes(b"\0" * 4096)  # never mounted
    assert volumes.remove_leftovers({"lease_live"}) == ["lease_dead", "lease_orphan"]
    assert volumes.mount_of("lease_live").is_mount()
    assert not volumes.image_of("lease_dead").exists()
    assert sorted(p.name for p in volumes.images.iterdir()) == ["lease_live.img"]


def test_the_probe_proves_enforcement_and_cleans_up(volumes: ScratchVolumes) -> None:
    assert volumes.probe() is None
    assert list(volumes.images.iterdir()) == [] and list(volumes.mounts.iterdir()) == []
    assert PROBE_BYTES == 16 * MIB


def test_where_sizes_cannot_be_enforced_no_scratch_is_offered(
    volumes: ScratchVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert volumes.probe() == "mkfs.ext4 is not installed"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    said = volumes.probe()
    assert said is not None and "root" in said
    check = scratch_check(AgentSettings(scratch_dir=str(volumes.root)))
    assert check[0] == "scratch" and check[1] is False and "no scratch is offered" in check[2]


def test_self_test_says_what_scratch_is_offered(volumes: ScratchVolumes) -> None:
    name, ok, said = scratch_check(AgentSettings(scratch_dir=str(volumes.root)))
    assert ok and "enforced volumes" in said
    name, ok, said = scratch_check(AgentSettings())
    assert ok and "scratch_dir is unset" in said
