"""Scratch volumes: per lease that asks for scratch, a filesystem of exactly that size on the
provider's data disk, mounted at /scratch in the job's container and deleted with the lease.

Each volume is an image file under `scratch_dir` whose blocks are allocated up front
(fallocate), formatted ext4 and loop-mounted nodev,nosuid: the job cannot write past its size
(it gets ENOSPC), and what other volumes or the host write later cannot take its space. The
size is enforced only this way, so where it cannot be done (not root, no loop devices, no
mkfs.ext4) `probe` says why and the agent offers no scratch at all.

The agent never walks a volume's contents: a volume is unmounted and its image deleted
whole, so links a hostile job leaves in it lead nowhere on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentSettings
from agent.spool import Spool
from shared.errors import SuanliError

log = logging.getLogger(__name__)

PROBE_BYTES = 16 << 20
_LEASE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_COMMAND_TIMEOUT_S = 120


class ScratchUnavailable(SuanliError):
    """The agent cannot give this job the scratch volume it asks for."""

    code = "scratch_unavailable"


_ALLOCATING = threading.Lock()


@dataclass(frozen=True)
class ScratchVolumes:
    """The scratch volumes under one directory, and what it has free for more."""

    root: Path
    reserve_bytes: int = 0

    @property
    def images(self) -> Path:
        return self.root / "volumes"

    @property
    def mounts(self) -> Path:
        return self.root / "mounts"

    def image_of(self, lease_id: str) -> Path:
        return self.images / f"{_checked(lease_id)}.img"

    def mount_of(self, lease_id: str) -> Path:
        return self.mounts / _checked(lease_id)

    # -- what the heartbeat reports -------------------------------------------------------

    def held_bytes(self) -> int:
        """Disk space the live volumes' images hold."""
        total = 0
        for image in self._listed(self.images, ".img"):
            with contextlib.suppress(OSError):
                total += image.stat().st_blocks * 512
        return total

    def free_bytes(self) -> int:
        """The scratch the agent can give its leases: the filesystem's free space plus what its
        own volumes hold, less the reserve. The coordinator deducts the scratch of the leases
        it gave this agent, so the volumes are not counted twice."""
        return max(0, self._fs_free() + self.held_bytes() - self.reserve_bytes)

    def _disk_free(self) -> int:
        """The filesystem's free space less the reserve: what a new volume may take now."""
        return max(0, self._fs_free() - self.reserve_bytes)

    def _fs_free(self) -> int:
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    # -- a lease's volume -----------------------------------------------------------------

    def create(self, lease_id: str, size: int) -> Path:
        """Make, format and mount the lease's volume; returns its mount point. A volume that
        is mounted already (the agent restarted while its job ran) is kept as it is."""
        image, mount = self.image_of(lease_id), self.mount_of(lease_id)
        if _is_mount(mount):
            return mount
        self.remove(lease_id)
        self.images.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.mounts.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            with _ALLOCATING:  # two leases' checks may not both pass on the same free space
                free = self._disk_free()
                if size > free:
                    raise ScratchUnavailable(
                        f"the job asks for {size} bytes of scratch and this host has {free} free"
                    )
                fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.posix_fallocate(fd, 0, size)
                finally:
                    os.close(fd)
            # nodiscard: discarding the loop device would punch the allocated blocks out again
            _run(
                "mkfs.ext4",
                "-q",
                "-F",
                "-m",
                "0",
                "-O",
                "^has_journal",
                "-E",
                "nodiscard",
                str(image),
            )
            mount.mkdir(mode=0o700, exist_ok=True)
            _run("mount", "-t", "ext4", "-o", "loop,nodev,nosuid,noatime", str(image), str(mount))
            # any user the job runs as may write, as in /tmp
            os.chmod(mount, 0o1777)
            with contextlib.suppress(OSError):
                (mount / "lost+found").rmdir()
        except (OSError, ScratchUnavailable) as exc:
            self.remove(lease_id)
            detail = exc.detail if isinstance(exc, ScratchUnavailable) else str(exc)
            raise ScratchUnavailable(
                f"could not make a scratch volume of {size} bytes: {detail}"
            ) from None
        return mount

    def remove(self, lease_id: str) -> None:
        """Unmount the lease's volume and delete its image (nothing when it has none)."""
        mount, image = self.mount_of(lease_id), self.image_of(lease_id)
        if _is_mount(mount):
            try:
                _run("umount", str(mount))
            except ScratchUnavailable:
                # still busy (a process of the job's container lingers): detach it now, and
                # the kernel frees the loop device once the last user lets go
                _run("umount", "--lazy", str(mount))
        with contextlib.suppress(FileNotFoundError):
            mount.rmdir()
        with contextlib.suppress(FileNotFoundError):
            image.unlink()

    def remove_leftovers(self, keep: set[str]) -> list[str]:
        """Delete the volumes of leases not in `keep` (left by an agent that crashed); returns
        their lease ids."""
        leases = {path.stem for path in self._listed(self.images, ".img")}
        leases |= {path.name for path in self._listed(self.mounts, "")}
        removed = []
        for lease_id in sorted(leases - keep):
            if _LEASE_ID.fullmatch(lease_id):
                self.remove(lease_id)
                removed.append(lease_id)
        return removed

    def probe(self) -> str | None:
        """Why volumes of an enforced size cannot be made here, or None when they can (a small
        volume is made, written past its size, and removed)."""
        if os.geteuid() != 0:
            return "the agent does not run as root, and only root may loop-mount a volume"
        for tool in ("mkfs.ext4", "mount", "umount"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        if not os.path.exists("/dev/loop-control"):
            return "the kernel offers no loop devices (/dev/loop-control; modprobe loop)"
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            return f"scratch_dir {self.root}: {exc.strerror}"
        probe = "probe-" + os.urandom(4).hex()
        try:
            mount = self.create(probe, PROBE_BYTES)
            return _overfill(mount)
        except ScratchUnavailable as exc:
            return exc.detail
        finally:
            with contextlib.suppress(ScratchUnavailable):
                self.remove(probe)

    @staticmethod
    def _listed(folder: Path, suffix: str) -> list[Path]:
        try:
            return [path for path in folder.iterdir() if path.name.endswith(suffix)]
        except FileNotFoundError:
            return []


def _overfill(mount: Path) -> str | None:
    """None when writing more than the volume's size fails with ENOSPC, as it must."""
    chunk = b"\0" * (1 << 20)
    try:
        with open(mount / "fill", "wb") as out:
            for _ in range(PROBE_BYTES // len(chunk) + 1):
                out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            return None
        return f"the probe volume failed before it was full: {exc.strerror}"
    return "a probe volume took more than its size: its size would not be enforced"


def _checked(lease_id: str) -> str:
    if not _LEASE_ID.fullmatch(lease_id):
        raise ScratchUnavailable(f"{lease_id!r} cannot name a scratch volume")
    return lease_id


def _is_mount(path: Path) -> bool:
    try:
        return path.is_mount()
    except OSError:
        return False


def _run(*command: str) -> None:
    try:
        subprocess.run(
            command, check=True, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S
        )
    except subprocess.CalledProcessError as exc:
        said = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise ScratchUnavailable(f"{command[0]} failed: {said[-1] if said else exc}") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScratchUnavailable(f"{command[0]} failed: {exc}") from None


def prepared(volumes: ScratchVolumes, keep: set[str]) -> tuple[ScratchVolumes | None, str]:
    """At the agent's start: the leftovers of leases not in `keep` deleted, then the probe.
    Returns the volumes to offer (None: no scratch) and a sentence for the provider."""
    removed = volumes.remove_leftovers(keep)
    problem = volumes.probe()
    left = f"; removed the scratch of {len(removed)} ended leases" if removed else ""
    if problem is not None:
        return None, (
            f"scratch_dir {volumes.root}: sizes cannot be enforced here ({problem}), so this "
            f"agent offers no scratch{left}"
        )
    return volumes, f"scratch_dir {volumes.root}: volumes of an enforced size (ext4 on loop){left}"


async def scratch_at_start(settings: AgentSettings, spool: Spool) -> ScratchVolumes | None:
    """The volumes the agent offers (None: no scratch), after deleting those of leases that
    will not run again; says at start what it found."""
    if settings.scratch_dir is None:
        return None
    volumes = ScratchVolumes(Path(settings.scratch_dir), settings.scratch_reserve_bytes)
    live = {
        r.lease_id
        for r in await asyncio.to_thread(spool.leases)
        if r.container.ended_at_ms is None
        and (r.container.container_id is not None or r.container.started_at_ms is None)
    }
    offered, said = await asyncio.to_thread(prepared, volumes, live)
    (log.info if offered else log.error)("%s", said)
    return offered


def scratch_free(volumes: ScratchVolumes | None) -> int | None:
    """What the heartbeat reports as free scratch; None: the agent offers none."""
    return None if volumes is None else volumes.free_bytes()


def scratch_check(settings: AgentSettings) -> tuple[str, bool, str]:
    """`suanli-agent self-test`'s line on scratch: a probe volume where scratch_dir is set."""
    if settings.scratch_dir is None:
        return ("scratch", True, "scratch_dir is unset: jobs asking for --scratch go elsewhere")
    volumes = ScratchVolumes(Path(settings.scratch_dir), settings.scratch_reserve_bytes)
    problem = volumes.probe()
    if problem is not None:
        return ("scratch", False, f"{volumes.root}: {problem}; no scratch is offered")
    free = volumes.free_bytes()
    return ("scratch", True, f"{volumes.root}: enforced volumes (ext4 on loop), {free} bytes free")
