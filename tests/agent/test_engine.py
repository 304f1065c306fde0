"""The container engine client against real dockerd and Podman, plus its pure request builders."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from engines import BUSYBOX_IMAGE, EngineService, busybox_rootfs

from agent.engine import (
    FALLBACK_USER,
    LABEL_GPU_MODE,
    LABEL_GPU_UUIDS,
    ContainerNotFound,
    ContainerSpec,
    ContainerStartFailed,
    Engine,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    GpuPinningFailed,
    ImageNotFound,
    ImagePullFailed,
    ImageTooLarge,
    InvalidContainerSpec,
    build_create_body,
    build_libpod_create_body,
    demultiplex,
    follow_pull,
    split_image_ref,
    unenforced_limits,
)

MIB = 1 << 20
GPU_A = "GPU-11111111-2222-3333-4444-555555555555"
GPU_B = "GPU-66666666-7777-8888-9999-000000000000"
RUN = secrets.token_hex(4)  # labels this session's containers


def spec(short: str, args: list[str], **overrides: Any) -> ContainerSpec:
    values: dict[str, Any] = {
        "name": f"suanli-test-{RUN}-{short}",
        "image": BUSYBOX_IMAGE,
        "command": args,
        "cpus_milli": 500,
        "memory_bytes": 64 * MIB,
        "pids_limit": 64,
        "labels": {"suanli.test-run": RUN, "suanli.test": short},
    }
    values.update(overrides)
    return ContainerSpec(**values)


@contextlib.asynccontextmanager
async def container(engine: Engine, container_spec: ContainerSpec) -> AsyncIterator[str]:
    container_id = await engine.create(container_spec)
    try:
        yield container_id
    finally:
        with contextlib.suppress(ContainerNotFound):
            await engine.remove(container_id, force=True)


async def collect_logs(engine: Engine, container_id: str, **kwargs: Any) -> dict[str, bytes]:
    out: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    async for stream, data in engine.logs(container_id, **kwargs):
        out[stream] += data
    return out


# -- pure: the create request is the policy -------------------------------------------------


def test_create_body_hardening_is_always_there() -> None:
    body = build_create_body(spec("plain", ["true"], user="1000:1000", tmpfs={"/tmp": 8 * MIB}))
    host = body["HostConfig"]
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == []
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == host["MemorySwap"] == 64 * MIB
    assert host["PidsLimit"] == 64
    assert host["NetworkMode"] == "none"
    assert host["Binds"] == host["Mounts"] == host["VolumesFrom"] == host["Devices"] == []
    assert host["DeviceRequests"] == []
    assert host["Tmpfs"] == {"/tmp": f"rw,exec,nosuid,nodev,size={8 * MIB}"}
    assert body["User"] == "1000:1000"
    assert body["Tty"] is False
    assert "NVIDIA_VISIBLE_DEVICES=void" in body["Env"]


def test_nvidia_runtime_pins_exactly_the_leased_gpus() -> None:
    body = build_create_body(
        spec("gpu", ["true"], gpu_uuids=(GPU_A, GPU_B), gpu_mode="nvidia-runtime")
    )
    assert body["HostConfig"]["DeviceRequests"] == [
        {"Driver": "nvidia", "DeviceIDs": [GPU_A, GPU_B], "Capabilities": [["gpu"]]}
    ]
    assert body["HostConfig"]["Devices"] == []
    assert f"NVIDIA_VISIBLE_DEVICES={GPU_A},{GPU_B}" in body["Env"]
    assert body["Labels"][LABEL_GPU_MODE] == "nvidia-runtime"
    assert body["Labels"][LABEL_GPU_UUIDS] == f"{GPU_A},{GPU_B}"


def test_cdi_pins_exactly_the_leased_gpus() -> None:
    pinned = spec("gpu", ["true"], gpu_uuids=(GPU_B,), gpu_mode="cdi")
    body = build_create_body(pinned)
    assert body["HostConfig"]["DeviceRequests"] == [
        {"Driver": "cdi", "DeviceIDs": [f"nvidia.com/gpu={GPU_B}"]}
    ]
    assert "NVIDIA_VISIBLE_DEVICES=void" in body["Env"]
    libpod = build_libpod_create_body(pinned)
    assert libpod["devices"] == [{"path": f"nvidia.com/gpu={GPU_B}"}]
    assert libpod["env"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert libpod["labels"][LABEL_GPU_UUIDS] == GPU_B


def test_mode_none_attaches_nothing_but_records_the_intent() -> None:
    body = build_create_body(spec("gpu", ["true"], gpu_uuids=(GPU_A,), gpu_mode="none"))
    assert body["HostConfig"]["DeviceRequests"] == [] and body["HostConfig"]["Devices"] == []
    assert body["Labels"][LABEL_GPU_MODE] == "none"
    assert body["Labels"][LABEL_GPU_UUIDS] == GPU_A
    assert build_libpod_create_body(spec("gpu", ["true"], gpu_uuids=(GPU_A,)))["devices"] == []


def test_libpod_body_has_the_same_hardening() -> None:
    body = build_libpod_create_body(spec("plain", ["true"]))
    assert body["privileged"] is False and body["no_new_privileges"] is True
    assert body["cap_drop"] == ["ALL"] and body["cap_add"] == []
    assert body["resource_limits"] == {
        "memory": {"limit": 64 * MIB, "swap": 64 * MIB},
        "cpu": {"quota": 50_000, "period": 100_000},
        "pids": {"limit": 64},
    }
    assert body["netns"] == {"nsmode": "none"}
    assert body["mounts"] == [] and body["volumes"] == []


def test_host_bounds_reach_both_bodies() -> None:
    bounded = spec(
        "bounded",
        ["true"],
        read_only_rootfs=True,
        log_max_bytes=4 * MIB,
        tmpfs={"/scratch": 32 * MIB, "/tmp": 8 * MIB},
        userns_host_id=1_000_000_000,
    )
    host = build_create_body(bounded)["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    # Docker keeps max-file files of max-size each: together the bound asked for.
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": str(2 * MIB), "max-file": "2"},
    }
    assert host["Tmpfs"] == {
        "/scratch": f"rw,exec,nosuid,nodev,size={32 * MIB}",
        "/tmp": f"rw,exec,nosuid,nodev,size={8 * MIB}",
    }
    libpod = build_libpod_create_body(bounded)
    assert libpod["read_only_filesystem"] is True and libpod["read_only_tmpfs"] is False
    assert libpod["log_configuration"] == {"driver": "k8s-file", "size": 4 * MIB}
    assert sorted((m["destination"], m["options"][-1]) for m in libpod["mounts"]) == [
        ("/scratch", f"size={32 * MIB}"),
        ("/tmp", f"size={8 * MIB}"),
    ]
    mapping = [{"container_id": 0, "host_id": 1_000_000_000, "size": 65536}]
    assert libpod["userns"] == {"nsmode": "private"}
    assert libpod["idmappings"]["UIDMap"] == libpod["idmappings"]["GIDMap"] == mapping


def test_unenforced_limits_name_what_the_engine_dropped() -> None:
    bounded = spec(
        "bounded",
        ["true"],
        read_only_rootfs=True,
        log_max_bytes=4 * MIB,
        tmpfs={"/scratch": 32 * MIB},
        userns_host_id=1_000_000_000,
        user="7:7",
    )
    applied = {
        "Config": {"User": "7:7"},
        "HostConfig": {
            "Memory": 64 * MIB,
            "ReadonlyRootfs": True,
            "LogConfig": {"Type": "k8s-file", "Size": "4.194MB"},
            "Tmpfs": {"/scratch": f"rw,size={32 * MIB},rprivate"},
            "IDMappings": {"UidMap": ["0:1000000000:65536"]},
        },
    }
    assert unenforced_limits(bounded, applied, "podman") == []
    dropped = {
        "Config": {"User": ""},
        "HostConfig": {
            "Memory": 0,
            "ReadonlyRootfs": False,
            "LogConfig": {"Type": "json-file", "Config": {}},
            "Tmpfs": {},
            "IDMappings": {"UidMap": None},
        },
    }
    problems = " | ".join(unenforced_limits(bounded, dropped, "podman"))
    for words in ("memory", "read-only", "log bound", "tmpfs", "user 7:7", "user namespace"):
        assert words in problems
    # Docker has no id maps to show: its user namespace is the daemon's (or FALLBACK_USER).
    assert "user namespace" not in " ".join(unenforced_limits(bounded, dropped, "docker"))


@pytest.mark.parametrize(
    "tmpfs",
    [{"/": 8 * MIB}, {"tmp": 8 * MIB}, {"/a/../b": 8 * MIB}, {"/tmp": 10}, {"/a b": 8 * MIB}],
)
def test_spec_refuses_bad_tmpfs(tmpfs: dict[str, int]) -> None:
    with pytest.raises(InvalidContainerSpec, match="tmpfs"):
        spec("bad", ["true"], tmpfs=tmpfs)


def test_spec_refuses_a_user_namespace_at_host_root() -> None:
    with pytest.raises(InvalidContainerSpec, match="userns"):
        spec("bad", ["true"], userns_host_id=0)
    with pytest.raises(InvalidContainerSpec, match="userns"):
        spec("bad", ["true"], userns_host_id=(1 << 32) - 10)


def test_fallback_user_is_not_root() -> None:
    uid, _, gid = FALLBACK_USER.partition(":")
    assert int(uid) > 0 and int(gid) > 0


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"gpu_mode": "all"}, "gpu_mode"),
        ({"network": "host"}, "network"),
        ({"env": {"NVIDIA_VISIBLE_DEVICES": "all"}}, "NVIDIA_VISIBLE_DEVICES"),
        ({"labels": {LABEL_GPU_UUIDS: GPU_A}}, "reserved"),
        ({"gpu_uuids": ("all",)}, "GPU UUID"),
        ({"gpu_uuids": (GPU_A, GPU_A)}, "twice"),
        ({"memory_bytes": 1024}, "memory_bytes"),
        ({"pids_limit": 0}, "pids_limit"),
        ({"cpus_milli": 1}, "cpus_milli"),
        ({"name": "-bad"}, "name"),
        ({"command": "echo hi"}, "list of arguments"),
    ],
)
def test_spec_refuses_what_the_agent_must_decide(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidContainerSpec, match=words) as caught:
        spec("bad", ["true"], **overrides)
    assert caught.value.code == "bad_container_spec"


def test_spec_is_immutable() -> None:
    made = spec("frozen", ["echo", "x"], env={"A": "1"})
    assert made.command == ("echo", "x")
    with pytest.raises(TypeError):
        made.env["B"] = "2"  # type: ignore[index]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("busybox", ("busybox", "latest")),
        ("busybox:1.36", ("busybox", "1.36")),
        ("registry:5000/team/img", ("registry:5000/team/img", "latest")),
        ("registry:5000/team/img:v2", ("registry:5000/team/img", "v2")),
        ("img@sha256:abc", ("img@sha256:abc", "")),
    ],
)
def test_split_image_ref(ref: str, expected: tuple[str, str]) -> None:
    assert split_image_ref(ref) == expected


# -- pure: streams ----------------------------------------------------------------------------


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def _frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


async def test_demultiplex_splits_stdout_and_stderr() -> None:
    data = _frame(1, b"out\n") + _frame(2, b"err\n") + _frame(1, b"") + _frame(1, b"x" * 70_000)
    frames = [frame async for frame in demultiplex(_reader(data))]
    assert frames == [
        ("stdout", b"out\n"),
        ("stderr", b"err\n"),
        ("stdout", b""),
        ("stdout", b"x" * 70_000),
    ]


@pytest.mark.parametrize(
    "data", [_frame(1, b"hello")[:-2], _frame(1, b"a")[:5], b"\x09\0\0\0\0\0\0\x01a"]
)
async def test_demultiplex_refuses_broken_streams(data: bytes) -> None:
    with pytest.raises(EngineError):
        _ = [frame async for frame in demultiplex(_reader(data))]


async def _lines(*lines: bytes) -> AsyncIterator[bytes]:
    for line in lines:
        yield line


async def test_pull_progress_is_bounded_in_bytes() -> None:
    seen: list[str] = []
    lines = _lines(
        b'{"status":"Pulling fs layer","id":"a"}\n',
        b'{"status":"Downloading","id":"a","progressDetail":{"current":10,"total":600}}\n',
        b'{"status":"Downloading","id":"b","progressDetail":{"current":10,"total":500}}\n',
    )
    with pytest.raises(ImageTooLarge, match="1000 bytes") as caught:
        await follow_pull("x:1", lines, 1000, seen.append)
    assert isinstance(caught.value, ImagePullFailed)
    assert seen == ["a Pulling fs layer", "a Downloading"]


async def test_pull_error_lines_become_errors() -> None:
    with pytest.raises(ImageNotFound, match="manifest unknown"):
        await follow_pull(
            "x:1", _lines(b'{"error":"manifest unknown: manifest unknown"}\n'), None, None
        )
    with pytest.raises(ImagePullFailed, match="no such host"):
        await follow_pull(
            "x:1", _lines(b'{"errorDetail":{"message":"dial tcp: no such host"}}\n'), None, None
        )


async def test_missing_socket_is_engine_unavailable(tmp_path: Path) -> None:
    async with Engine(tmp_path / "absent.sock") as absent:
        with pytest.raises(EngineUnavailable, match="not answering"):
            await absent.ping()
        with pytest.raises(EngineUnavailable):
            await absent.list({})


# -- live, on both engines --------------------------------------------------------------------


async def test_ping_version_info(engine: Engine, engine_service: EngineService) -> None:
    await engine.ping()
    version = await engine.version()
    assert version["ApiVersion"]
    info = await engine.info()
    assert info.flavor == engine_service.kind == engine.flavor
    assert info.api_version == "1.41"
    assert info.gpu_modes[-1] == "none"
    # Neither engine here has the NVIDIA toolkit; Podman resolves CDI names on its own.
    assert info.nvidia_runtime is False
    assert info.gpu_mode == ("cdi" if info.flavor == "podman" else "none")


async def test_import_rootfs_from_bytes_and_file(engine: Engine, tmp_path: Path) -> None:
    tarball = busybox_rootfs()
    first = await engine.import_rootfs(tarball, f"suanli-test/imported:{RUN}")
    assert first.startswith("sha256:")
    assert await engine.image_exists(f"suanli-test/imported:{RUN}")
    path = tmp_path / "rootfs.tar"
    path.write_bytes(tarball)
    await engine.import_rootfs(path, f"suanli-test/imported:{RUN}-file")
    assert await engine.image_exists(f"suanli-test/imported:{RUN}-file")
    assert not await engine.image_exists("suanli-test/absent:1")


async def test_exit_code_and_both_streams(engine: Engine) -> None:
    hello = spec("hello", ["sh", "-c", "echo hello; echo err >&2; exit 3"])
    async with container(engine, hello) as container_id:
        await engine.start(container_id)
        assert await engine.wait(container_id, timeout_s=20) == 3
        assert await collect_logs(engine, container_id) == {
            "stdout": b"hello\n",
            "stderr": b"err\n",
        }
        assert await collect_logs(engine, container_id, stderr=False) == {
            "stdout": b"hello\n",
            "stderr": b"",
        }
        later = int(time.time()) + 3600
        assert await collect_logs(engine, container_id, since=later) == {
            "stdout": b"",
            "stderr": b"",
        }
        state = await engine.state(container_id)
        assert (state.status, state.exit_code, state.running) == ("exited", 3, False)


async def test_follow_ends_when_the_container_exits(engine: Engine) -> None:
    ticker = spec("ticker", ["sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.3; done"])
    async with container(engine, ticker) as container_id:
        await engine.start(container_id)
        began = time.monotonic()
        logs = await asyncio.wait_for(collect_logs(engine, container_id, follow=True), 20)
        assert logs["stdout"] == b"tick 1\ntick 2\ntick 3\n"
        assert time.monotonic() - began < 15


async def test_logs_of_a_tty_container_are_raw(engine: Engine) -> None:
    # The agent never asks for a TTY, but a container it re-adopts might have one.
    _, body = await engine._call(
        "POST",
        "/containers/create",
        ok=(201,),
        json={
            "Image": BUSYBOX_IMAGE,
            "Cmd": ["sh", "-c", "echo tty; echo err >&2"],
            "Tty": True,
            "Labels": {"suanli.test-run": RUN},
            "HostConfig": {"NetworkMode": "none"},
        },
    )
    container_id = json.loads(body)["Id"]
    try:
        await engine.start(container_id)
        assert await engine.wait(container_id, timeout_s=20) == 0
        logs = await collect_logs(engine, container_id)
        assert logs["stderr"] == b""
        assert logs["stdout"].replace(b"\r\n", b"\n") == b"tty\nerr\n"
    finally:
        await engine.remove(container_id)


@pytest.mark.parametrize("gpu_mode", ["none", "cdi"])
async def test_hardening_visible_in_inspect(
    engine: Engine, engine_service: EngineService, gpu_mode: str
) -> None:
    # Docker's body and Podman's own (libpod) body, each with and without CDI devices.
    hardened = spec(
        f"hardened-{gpu_mode}",
        ["sleep", "30"],
        cpus_milli=250,
        memory_bytes=48 * MIB,
        pids_limit=32,
        gpu_mode=gpu_mode,
        env={"JOB": "1"},
    )
    async with container(engine, hardened) as container_id:
        await engine.start(container_id)
        document = await engine.inspect(container_id)
        host, config = document["HostConfig"], document["Config"]
        assert host["Privileged"] is False
        if engine_service.kind == "docker":
            assert host["CapDrop"] == ["ALL"]
        else:
            # Podman spells "drop ALL" as the list of its default capabilities, all dropped.
            assert {"CHOWN", "DAC_OVERRIDE", "KILL", "NET_RAW", "SETUID", "SYS_CHROOT"} <= set(
                host["CapDrop"]
            )
        assert not host.get("CapAdd")
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert not host.get("Binds") and not document.get("Mounts")
        assert not host.get("Devices") and not host.get("DeviceRequests")
        assert host["Memory"] == 48 * MIB and host["MemorySwap"] == 48 * MIB
        assert host["NanoCpus"] == 250_000_000 or (host["CpuQuota"], host["CpuPeriod"]) == (
            25_000,
            100_000,
        )
        assert host["PidsLimit"] == 32
        assert host["NetworkMode"] == "none"
        assert config["Labels"]["suanli.test-run"] == RUN
        assert config["Labels"][LABEL_GPU_MODE] == gpu_mode
        assert "JOB=1" in config["Env"] and "NVIDIA_VISIBLE_DEVICES=void" in config["Env"]
        # What the process itself sees: no capabilities and no way to gain any.
        status = await _exec_status(engine, container_id)
        assert status["CapEff"] == "0000000000000000" and status["NoNewPrivs"] == "1"
        assert await engine.stop(container_id, grace_s=0)


async def _exec_status(engine: Engine, container_id: str) -> dict[str, str]:
    _, body = await engine._call(
        "POST",
        f"/containers/{container_id}/exec",
        ok=(201,),
        json={"Cmd": ["cat", "/proc/1/status"], "AttachStdout": True, "AttachStderr": True},
    )
    exec_id = json.loads(body)["Id"]
    _, output = await engine._call(
        "POST", f"/exec/{exec_id}/start", ok=(200,), json={"Detach": False, "Tty": False}
    )
    frames = [frame async for frame in demultiplex(_reader(output))]
    text = b"".join(data for stream, data in frames if stream == "stdout").decode()
    return {
        key: value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())
    }


async def test_memory_limit_kills_with_137(engine: Engine, engine_service: EngineService) -> None:
    hog = spec("hog", ["sh", "-c", "x=a; while true; do x=$x$x; done"], memory_bytes=32 * MIB)
    async with container(engine, hog) as container_id:
        await engine.start(container_id)
        assert await engine.wait(container_id, timeout_s=30) == 137
        state = await engine.state(container_id)
        assert state.killed and state.memory_kill_suspected
        # Docker says OOMKilled; Podman 4.3 does not, hence the exit code is what counts.
        assert state.oom_killed is (engine_service.kind == "docker")


async def test_pids_limit_stops_a_fork_bomb(engine: Engine) -> None:
    bomb = spec(
        "forks", ["sh", "-c", "for i in $(seq 40); do sleep 30 & done; echo done"], pids_limit=10
    )
    async with container(engine, bomb) as container_id:
        await engine.start(container_id)
        await engine.wait(container_id, timeout_s=30)
        logs = await collect_logs(engine, container_id)
        assert b"can't fork" in logs["stderr"]


async def test_stop_ends_a_sleeping_container(engine: Engine) -> None:
    sleeper = spec("sleeper", ["sleep", "300"])
    async with container(engine, sleeper) as container_id:
        await engine.start(container_id)
        with pytest.raises(EngineTimeout, match="still running after 0.3 s"):
            await engine.wait(container_id, timeout_s=0.3)
        cancelled = asyncio.create_task(engine.wait(container_id))
        await asyncio.sleep(0.1)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        waiter = asyncio.create_task(engine.wait(container_id))
        began = time.monotonic()
        assert await engine.stop(container_id, grace_s=1) is True
        code = await asyncio.wait_for(waiter, 10)
        assert time.monotonic() - began < 8
        # sleep as PID 1 has no SIGTERM handler, so the kernel ignores SIGTERM and the engine
        # kills after the grace: 137. A process that honours SIGTERM would give 143.
        assert code in (137, 143)
        assert (await engine.state(container_id)).running is False
        assert await engine.stop(container_id, grace_s=1) is False
        assert await engine.kill(container_id) is False


async def test_kill_signals_a_running_container(engine: Engine) -> None:
    async with container(engine, spec("killed", ["sleep", "300"])) as container_id:
        await engine.start(container_id)
        assert await engine.kill(container_id, "SIGKILL") is True
        assert await engine.wait(container_id, timeout_s=10) == 137


async def test_list_by_label_and_remove(engine: Engine) -> None:
    token = secrets.token_hex(4)
    mine = spec(f"listed-{token}", ["true"], labels={"suanli.test-run": RUN, "suanli.list": token})
    other = spec(f"other-{token}", ["true"], labels={"suanli.test-run": RUN, "suanli.list": "x"})
    async with container(engine, mine) as mine_id, container(engine, other):
        found = await engine.list({"suanli.list": token, "suanli.test-run": RUN})
        assert [c["Id"] for c in found] == [mine_id]
        assert found[0]["Labels"]["suanli.list"] == token
        await engine.remove(mine_id)
        assert await engine.list({"suanli.list": token}) == []
        with pytest.raises(ContainerNotFound, match="no container"):
            await engine.inspect(mine_id)
        with pytest.raises(ContainerNotFound):
            await engine.remove(mine_id)


async def test_missing_image_fails_clearly(engine: Engine) -> None:
    with pytest.raises(ImageNotFound, match="suanli-test/absent:1 is not on this host") as caught:
        await engine.create(spec("absent", ["true"], image="suanli-test/absent:1"))
    assert caught.value.code == "image_not_found"


async def test_pull_without_a_registry_fails_within_its_timeout(engine: Engine) -> None:
    began = time.monotonic()
    with pytest.raises(ImagePullFailed, match="does-not-exist.invalid") as caught:
        await engine.pull("does-not-exist.invalid/x:1", timeout_s=10)
    assert time.monotonic() - began < 11
    assert not isinstance(caught.value, ImageNotFound)  # unreachable, not absent


@pytest.fixture
def silent_registry() -> Iterator[str]:
    """A TCP port that accepts connections and never answers: a registry that hangs."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()


async def test_pull_from_a_hanging_registry_honours_the_timeout(
    engine: Engine, silent_registry: str
) -> None:
    began = time.monotonic()
    with pytest.raises(ImagePullFailed, match="within 2 s"):
        await engine.pull(f"{silent_registry}/x:1", timeout_s=2)
    assert time.monotonic() - began < 4


async def test_a_command_that_cannot_start_fails_at_start(
    engine: Engine, engine_service: EngineService
) -> None:
    async with container(engine, spec("nobinary", ["/no/such/binary"])) as container_id:
        with pytest.raises(ContainerStartFailed, match="/no/such/binary") as caught:
            await engine.start(container_id)
        assert caught.value.code == "container_start_failed"
        state = await engine.state(container_id)
        assert not state.running
        # Docker records 127 (command not found); Podman leaves it "created" with 0.
        assert state.exit_code == (127 if engine_service.kind == "docker" else 0)


async def test_gpu_requests_reach_the_engine(engine: Engine, engine_service: EngineService) -> None:
    """No GPU here, so the engine must refuse the pinning loudly: proof it was asked for."""
    for gpu_mode in ("nvidia-runtime", "cdi"):
        gpu_spec = spec(f"gpu-{gpu_mode}", ["true"], gpu_uuids=(GPU_A,), gpu_mode=gpu_mode)
        if engine_service.kind == "podman" and gpu_mode == "nvidia-runtime":
            with pytest.raises(GpuPinningFailed, match="use cdi"):
                await engine.create(gpu_spec)
            continue
        async with container(engine, gpu_spec) as container_id:
            expected = GPU_A if engine_service.kind == "podman" else gpu_mode.split("-")[0]
            with pytest.raises(GpuPinningFailed, match=expected) as caught:
                await engine.start(container_id)
            assert caught.value.code == "gpu_pinning_failed"
            labels = (await engine.inspect(container_id))["Config"]["Labels"]
            assert labels[LABEL_GPU_UUIDS] == GPU_A


# -- Docker with userns-remap: a daemon setting this host's shared dockerd cannot take --------


@contextlib.asynccontextmanager
async def fake_dockerd(tmp_path: Path, security_options: list[str]) -> AsyncIterator[list[Any]]:
    """Just enough of a Docker daemon on a unix socket to create a container; the create
    bodies it received are yielded. (Remapping needs /etc/subuid entries for the whole host.)"""
    from aiohttp import web

    bodies: list[Any] = []

    async def version(_: web.Request) -> web.Response:
        return web.json_response(
            {"Version": "26.1.5", "ApiVersion": "1.45", "MinAPIVersion": "1.24"}
        )

    async def info(_: web.Request) -> web.Response:
        return web.json_response({"SecurityOptions": security_options})

    async def create(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response({"Id": "c0ffee", "Warnings": []}, status=201)

    async def inspect(_: web.Request) -> web.Response:
        body = bodies[-1]
        return web.json_response(
            {"Config": {"User": body["User"]}, "HostConfig": body["HostConfig"]}
        )

    app = web.Application()
    app.add_routes(
        [
            web.get("/version", version),
            web.get("/v1.45/version", version),
            web.get("/v1.45/info", info),
            web.post("/v1.45/containers/create", create),
            web.get("/v1.45/containers/c0ffee/json", inspect),
        ]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(tmp_path / "docker.sock")).start()
    try:
        yield bodies
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("options", "user", "mode"),
    [
        (["name=seccomp,profile=builtin", "name=userns"], "", "userns"),
        (["name=seccomp,profile=builtin"], FALLBACK_USER, "non-root-user"),
    ],
)
async def test_docker_runs_root_jobs_as_nobody_unless_the_daemon_remaps(
    tmp_path: Path, options: list[str], user: str, mode: str
) -> None:
    async with (
        fake_dockerd(tmp_path, options) as bodies,
        Engine(tmp_path / "docker.sock") as client,
    ):
        assert (await client.root_isolation())[0] == mode
        await client.create(spec("remap", ["true"], userns_host_id=1_000_000_000))
        # A job's own non-root numeric user is kept either way; root or a name is not.
        await client.create(spec("own", ["true"], userns_host_id=1_000_000_000, user="1000:1000"))
        await client.create(spec("root", ["true"], userns_host_id=1_000_000_000, user="0:0"))
    assert [b["User"] for b in bodies] == [user, "1000:1000", user or "0:0"]
