"""`suanli job cp` unpacks what a job's tar sent trusting none of it (coordinator/client/
safe_untar.py): files and directories under the name asked for, and nothing else."""

from __future__ import annotations

import bz2
import io
import tarfile
from pathlib import Path

import pytest

from coordinator.client.safe_untar import UnsafeArchive, unpack


def _archive(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if info.isfile():
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    path = tmp_path / "copy.tar"
    path.write_bytes(buffer.getvalue())
    return path


def _entry(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


def _into(tmp_path: Path) -> Path:
    place = tmp_path / "holder" / "unpacked"
    place.mkdir(parents=True)
    return place


def test_files_and_directories_under_the_name_are_unpacked(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path,
        [
            (_entry("ckpt", tarfile.DIRTYPE, mode=0o755), b""),
            (_entry("ckpt/step-1.pt"), b"weights"),
            (_entry("ckpt/run.sh", mode=0o755), b"#!/bin/sh\n"),
            (_entry("ckpt/logs/train.log"), b"loss 0.1\n"),
        ],
    )
    into = _into(tmp_path)
    unpack(archive, into, "ckpt", archive.stat().st_size)
    assert (into / "ckpt" / "step-1.pt").read_bytes() == b"weights"
    assert (into / "ckpt" / "logs" / "train.log").read_bytes() == b"loss 0.1\n"
    assert (into / "ckpt" / "run.sh").stat().st_mode & 0o111


@pytest.mark.parametrize(
    ("member", "said"),
    [
        (_entry("ckpt/link", tarfile.SYMTYPE, "../../.bashrc"), "link"),
        (_entry("ckpt/hard", tarfile.LNKTYPE, "ckpt/x"), "link"),
        (_entry("ckpt/dev", tarfile.CHRTYPE), "device"),
        (_entry("ckpt/fifo", tarfile.FIFOTYPE), "special"),
        (_entry("ckpt/../../.bashrc"), "not a path under"),
        (_entry("/etc/cron.d/x"), "not a path under"),
        (_entry("other/x"), "not a path under"),
    ],
)
def test_links_devices_and_names_outside_are_refused(
    tmp_path: Path, member: tarfile.TarInfo, said: str
) -> None:
    archive = _archive(
        tmp_path, [(_entry("ckpt", tarfile.DIRTYPE, mode=0o755), b""), (member, b"x")]
    )
    into = _into(tmp_path)
    with pytest.raises(UnsafeArchive, match=said):
        unpack(archive, into, "ckpt", 1 << 20)
    assert not (tmp_path / "holder" / ".bashrc").exists()


def test_the_long_link_chain_of_cve_2025_4517_writes_nothing_outside(tmp_path: Path) -> None:
    # the shape that walks tarfile's data filter out of its destination on 3.11.7: deep
    # directories with links to them, a long link climbing back, then a hard link through it
    members: list[tuple[tarfile.TarInfo, bytes]] = [(_entry("ckpt", tarfile.DIRTYPE), b"")]
    path = "ckpt"
    for level in range(16):
        step = "d" * 200 + str(level)
        members.append((_entry(f"{path}/{step}", tarfile.DIRTYPE), b""))
        members.append((_entry(f"{path}/l{level}", tarfile.SYMTYPE, step), b""))
        path = f"{path}/l{level}"
    members.append((_entry(f"{path}/up", tarfile.SYMTYPE, "../" * 16), b""))
    members.append((_entry("ckpt/flag", tarfile.LNKTYPE, f"{path}/up/../.bashrc"), b""))
    members.append((_entry("ckpt/flag"), b"echo pwned\n"))
    archive = _archive(tmp_path, members)
    (tmp_path / "holder").mkdir()
    (tmp_path / "holder" / ".bashrc").write_text("mine\n")
    into = tmp_path / "holder" / "unpacked"
    into.mkdir()
    with pytest.raises(UnsafeArchive):
        unpack(archive, into, "ckpt", 1 << 20)
    assert (tmp_path / "holder" / ".bashrc").read_text() == "mine\n"


def test_compressed_sparse_oversized_and_repeated_copies_are_refused(tmp_path: Path) -> None:
    plain = _archive(tmp_path, [(_entry("ckpt"), b"0" * 1000)])
    packed = tmp_path / "bomb.tar"
    packed.write_bytes(bz2.compress(plain.read_bytes()))
    with pytest.raises(UnsafeArchive, match="not a plain tar"):
        unpack(packed, _into(tmp_path / "a"), "ckpt", 1 << 30)
    with pytest.raises(UnsafeArchive, match="more than 999 bytes"):
        unpack(plain, _into(tmp_path / "b"), "ckpt", 999)
    (tmp_path / "c").mkdir()
    twice = _archive(
        tmp_path / "c",
        [
            (_entry("ckpt", tarfile.DIRTYPE), b""),
            (_entry("ckpt/x"), b"first"),
            (_entry("ckpt/x"), b"second"),
        ],
    )
    into = _into(tmp_path / "d")
    with pytest.raises(UnsafeArchive, match="comes twice"):
        unpack(twice, into, "ckpt", 1 << 20)
    assert (into / "ckpt" / "x").read_bytes() == b"first"
