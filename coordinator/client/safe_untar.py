"""Unpacking what `tar cf - NAME` wrote inside a job, for `suanli job cp`, trusting none of it.

The archive comes from a provider's host and from the job's own `tar`, either of which may be
hostile, so it is not given to `tarfile.extractall` (whose filters have been bypassed on some
Python releases, CVE-2025-4517). Only directories and regular files are taken: every name must
lie under NAME with no `..` and no absolute part; links of any kind, devices, FIFOs and sparse
members are refused; nothing compressed is read (a few kilobytes of bzip2 unpack to terabytes);
each file is created afresh (O_EXCL, O_NOFOLLOW) through directory descriptors opened without
following links; and the bytes unpacked are bounded.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from shared.errors import SuanliError

CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


class UnsafeArchive(SuanliError):
    """The archive a job sent holds something `job cp` will not write."""

    code = "unsafe_archive"


def unpack(archive: Path, into: Path, top: str, max_bytes: int) -> None:
    """Unpack `archive` (plain tar) into the empty directory `into`; every member under `top`."""
    root = os.open(into, _DIR_FLAGS)
    total = 0
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for member in tar:
                parts = _parts(member.name, top)
                if member.isdir():
                    with _directory(root, parts) as _:
                        pass
                elif member.isfile() and not member.issparse():
                    total += member.size
                    if total > max_bytes:
                        raise UnsafeArchive(f"the copy unpacks to more than {max_bytes} bytes")
                    _write(tar, member, root, parts)
                else:
                    raise UnsafeArchive(
                        f"{member.name!r} is a link, device or special file; job cp copies "
                        "only files and directories"
                    )
    except tarfile.TarError as exc:
        raise UnsafeArchive(f"the copy is not a plain tar archive: {exc}") from None
    finally:
        os.close(root)


def _parts(name: str, top: str) -> tuple[str, ...]:
    path = PurePosixPath(name)
    parts = path.parts
    if path.is_absolute() or not parts or parts[0] != top or ".." in parts:
        raise UnsafeArchive(f"{name!r} is not a path under {top!r}")
    return parts


@contextlib.contextmanager
def _directory(root: int, parts: tuple[str, ...]) -> Iterator[int]:
    """A descriptor of the directory `parts` under `root`, made where missing, never through a
    link."""
    fds: list[int] = []
    current = root
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=current)
            current = os.open(part, _DIR_FLAGS, dir_fd=current)
            fds.append(current)
        yield current
    finally:
        for fd in fds:
            os.close(fd)


def _write(
    tar: tarfile.TarFile, member: tarfile.TarInfo, root: int, parts: tuple[str, ...]
) -> None:
    source = tar.extractfile(member)
    assert source is not None
    with _directory(root, parts[:-1]) as parent:
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, member.mode & 0o755 | 0o600, dir_fd=parent)
        except FileExistsError:
            raise UnsafeArchive(f"{member.name!r} comes twice in the copy") from None
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK):
                out.write(chunk)
