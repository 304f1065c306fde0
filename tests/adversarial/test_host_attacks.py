"""A hostile job against the provider's host, on real Docker and Podman: each attack bounded.

The containers here are the agent's own: built by `agent.runner.job_spec` from a lease's job,
or started by a real `suanli-agent` process for a real coordinator's lease.

- a log flood: the engine's log file on the host's disk stays under `engine_log_max_bytes`;
- writes: the root filesystem is read-only, the scratch tmpfs fills up with ENOSPC, and
  tmpfs pages count against the job's memory limit (so scratch cannot grow past it);
- root: container root is not host root (Podman: a user namespace, seen from the host;
  Docker without userns-remap: the job runs as 65534, seen from the host too);
- memory: a job asking 2^44 bytes runs with the host's cap, and its owner is told;
- the registry: an image on the provider's loopback is refused and the engine never
  connects there, and the engine's own pull error never reaches the enterprise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import engines
import psutil  # type: ignore[import-untyped]
import pytest
from agent_harness import AgentProcess
from coordinator_harness import BIN, Api, CoordinatorProcess
from databases import new_database
from engines import BUSYBOX_IMAGE, EngineService
from fake_nvml.fixture import FakeGpu

from agent.config import AgentSettings
from agent.engine import FALLBACK_USER, ContainerNotFound, ContainerSpec, Engine
from agent.host_limits import job_limits
from agent.job_container import job_spec
from agent.lease import JobTerms, LeaseRecord, LeaseTerms

MIB = 1 << 20
RUN = secrets.token_hex(4)
USERNS_HOST_ID = 1_000_000_000
GPUS = [
    FakeGpu(uuid="GPU-0b7f6a52-0000-4000-8000-00000000a001", power_mw=300_000),
    FakeGpu(uuid="GPU-0b7f6a52-0000-4000-8000-00000000a002", power_mw=300_000),
]


# -- the agent's own container for a job, on a live engine ------------------------------------


def agent_spec(
    short: str, command: list[str], settings: AgentSettings, memory_bytes: int = 256 * MIB
) -> ContainerSpec:
    """The container the agent's runner would create for a one-GPU job (of two) like this."""
    job = JobTerms(
        image=BUSYBOX_IMAGE,
        command=tuple(command),
        env={},
        cpus_milli=1000,
        memory_bytes=memory_bytes,
    )
    terms = LeaseTerms(
        lease_id=f"attack-{RUN}-{short}",
        job_id="job",
        gpu_uuids=(GPUS[0].uuid,),
        price_per_gpu_hour=1,
        job=job,
    )
    record = LeaseRecord(terms, created_at_ms=0)
    limits = job_limits(
        memory_bytes,
        psutil.virtual_memory().total,
        settings.memory_reserve_bytes,
        1,
        2,
        settings.memory_by_gpu_share,
        settings.scratch_bytes,
        settings.tmp_bytes,
    )
    return job_spec(
        record, settings, limits, agent_id="attacker-test", gpu_mode="none", host_cpus_milli=2000
    )


@contextlib.asynccontextmanager
async def running(engine: Engine, spec: ContainerSpec) -> AsyncIterator[str]:
    container_id = await engine.create(spec)
    try:
        await engine.start(container_id)
        yield container_id
    finally:
        with contextlib.suppress(ContainerNotFound):
            await engine.remove(container_id, force=True)


async def output(engine: Engine, container_id: str) -> str:
    chunks = [data async for _, data in engine.logs(container_id)]
    return b"".join(chunks).decode(errors="replace")


async def log_files(engine: Engine, engine_service: EngineService, container_id: str) -> list[Path]:
    document = await engine.inspect(container_id)
    path = document.get("LogPath") or ""
    if engine_service.kind == "podman" and not path:
        _, body = await engine._call("GET", f"/containers/{container_id}/json", libpod=True)
        path = json.loads(body)["HostConfig"]["LogConfig"]["Path"]
    assert path, f"no log path in {document.get('HostConfig', {}).get('LogConfig')}"
    log_path = Path(path)
    return [log_path, *sorted(log_path.parent.glob(log_path.name + ".*"))]


async def test_a_log_flood_stays_bounded_on_the_hosts_disk(
    engine: Engine, engine_service: EngineService
) -> None:
    """Attack: 300 MB of stdout made an 811 MB engine log. Here 24 MB against a 1 MiB bound."""
    bound = 1 * MIB
    settings = AgentSettings(engine_log_max_bytes=bound)
    line = "x" * 199
    flood = agent_spec(
        "logflood", ["sh", "-c", f"yes {line} | head -c 24000000; echo done"], settings
    )
    async with running(engine, flood) as container_id:
        files = await log_files(engine, engine_service, container_id)
        largest = 0
        while True:
            on_disk = 0
            for path in {*files, *files[0].parent.glob(files[0].name + "*")}:
                with contextlib.suppress(FileNotFoundError):
                    on_disk += path.stat().st_size
            largest = max(largest, on_disk)
            if not (await engine.state(container_id)).running:
                break
            await asyncio.sleep(0.02)
        assert await engine.wait(container_id, timeout_s=60) == 0
        # One engine write past the bound before it rotates or truncates, no more.
        assert 0 < largest <= bound + 128 * 1024, f"{largest} bytes of log on the host's disk"
        assert (await output(engine, container_id)).rstrip().endswith("done")


async def test_the_root_filesystem_is_read_only_and_scratch_is_bounded(engine: Engine) -> None:
    """Attack: the root filesystem was writable without a quota."""
    settings = AgentSettings(scratch_bytes=8 * MIB, tmp_bytes=4 * MIB)
    script = (
        "touch /attack; echo root=$?; touch /etc/attack; echo etc=$?; "
        "dd if=/dev/zero of=/scratch/fill bs=1M count=64; echo scratch=$?; "
        "wc -c < /scratch/fill; dd if=/dev/zero of=/tmp/fill bs=1M count=64; echo tmp=$?; "
        "wc -c < /tmp/fill; echo home=$HOME"
    )
    writer = agent_spec("writer", ["sh", "-c", script], settings)
    async with running(engine, writer) as container_id:
        assert await engine.wait(container_id, timeout_s=30) == 0
        text = await output(engine, container_id)
    assert text.count("Read-only file system") == 2 and "root=1" in text and "etc=1" in text, text
    assert text.count("No space left on device") == 2, text
    assert "scratch=1" in text and "tmp=1" in text
    sizes = [int(word) for word in text.split() if word.isdigit()]
    assert 8 * MIB in sizes and 4 * MIB in sizes, text  # filled to the size, never past it
    assert "home=/scratch" in text


async def test_tmpfs_pages_are_charged_to_the_jobs_memory(engine: Engine) -> None:
    """Why scratch is carved out of the memory cap: even a tmpfs sized above the limit (the
    agent never makes one) holds no more than the limit, its writer killed at that point."""
    settings = AgentSettings()
    agent_made = agent_spec("tmpfs", ["true"], settings, memory_bytes=32 * MIB)
    assert agent_made.tmpfs == {"/scratch": 16 * MIB, "/tmp": 8 * MIB}
    script = "dd if=/dev/zero of=/scratch/f bs=1M count=96; echo dd=$?; wc -c < /scratch/f"
    oversized = replace(
        agent_made,
        name=f"attack-{RUN}-tmpfs-big",
        tmpfs={"/scratch": 128 * MIB},
        command=("sh", "-c", script),
    )
    async with running(engine, oversized) as container_id:
        assert await engine.wait(container_id, timeout_s=30) == 0
        text = await output(engine, container_id)
    assert "dd=137" in text, text  # killed by the memory cgroup, not "No space left"
    assert int(text.split()[-1]) <= 32 * MIB


@pytest.mark.slow
async def test_container_root_is_not_host_root(
    engine: Engine, engine_service: EngineService
) -> None:
    """Attack: the job ran as uid 0 without a user namespace, so container root was host root."""
    settings = AgentSettings(userns_host_id=USERNS_HOST_ID)
    sleeper = agent_spec("root", ["sh", "-c", "id -u; id -g; sleep 30"], settings)
    async with running(engine, sleeper) as container_id:
        pid = (await engine.state(container_id)).pid
        assert pid > 0
        status = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ":" in line
        )
        host_uids = {int(v) for v in status["Uid"].split()}
        host_gids = {int(v) for v in status["Gid"].split()}
        uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
        deadline = time.monotonic() + 10
        while len((await output(engine, container_id)).split()) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        inside = [int(v) for v in (await output(engine, container_id)).split()]
        mode, sentence = await engine.root_isolation()
    assert 0 not in host_uids and 0 not in host_gids, status["Uid"]
    if engine_service.kind == "podman":
        # root inside, an unprivileged uid outside: a user namespace of the agent's range.
        assert mode == "userns" and "not host root" in sentence
        assert inside == [0, 0]
        assert host_uids == host_gids == {USERNS_HOST_ID}
        assert uid_map == ["0", str(USERNS_HOST_ID), "65536"]
    else:
        # This dockerd has no userns-remap: the agent's fallback is a non-root user.
        assert mode == "non-root-user" and "userns-remap" in sentence
        fallback = [int(v) for v in FALLBACK_USER.split(":")]
        assert inside == fallback
        assert host_uids == {fallback[0]} and host_gids == {fallback[1]}
        assert uid_map == ["0", "0", "4294967295"], "no user namespace: the same ids as the host"


REMAP_HOST_ID = 2_000_000_000


@pytest.fixture(scope="module")
def remapping_docker() -> Iterator[EngineService]:
    """A private dockerd with `userns-remap`. It needs /etc/subuid and /etc/subgid ranges,
    which are the whole host's files: it gets its own copies, bind-mounted over them in a
    private mount namespace, so the host's stay as they are."""
    if os.geteuid() != 0 or engines.missing_binaries("docker") or not shutil.which("unshare"):
        engines.unavailable("a remapping dockerd needs root, dockerd and unshare")
    workdir = Path(tempfile.mkdtemp(prefix="suanli-remap-", dir="/tmp"))
    workdir.chmod(0o711)  # the remapped root must reach its storage below
    for name in ("subuid", "subgid"):
        (workdir / name).write_text(f"nobody:{REMAP_HOST_ID}:65536\n")
    (workdir / "daemon.json").write_text("{}\n")
    script = (
        f"mount --bind {workdir}/subuid /etc/subuid && "
        f"mount --bind {workdir}/subgid /etc/subgid && "
        f"exec dockerd --host unix://{workdir}/docker.sock "
        f"--config-file {workdir}/daemon.json --data-root {workdir}/data "
        f"--exec-root {workdir}/exec --pidfile {workdir}/docker.pid --iptables=false "
        f"--ip6tables=false --bridge=none --userns-remap=nobody:nogroup"
    )
    service = engines._spawn(
        "docker",
        workdir,
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        dict(os.environ),
    )
    try:
        service.wait_ready()
        service.import_image(BUSYBOX_IMAGE, engines.busybox_rootfs())
        yield service
    finally:
        service.stop()


async def test_docker_with_userns_remap_keeps_root_off_the_host(
    remapping_docker: EngineService,
) -> None:
    """Where the operator turns on userns-remap, Docker jobs keep root inside, not outside."""
    settings = AgentSettings()
    sleeper = agent_spec("remap", ["sh", "-c", "id -u; sleep 30"], settings)
    async with Engine(remapping_docker.socket) as engine:
        mode, sentence = await engine.root_isolation()
        assert mode == "userns" and "userns-remap" in sentence
        async with running(engine, sleeper) as container_id:
            config = (await engine.inspect(container_id))["Config"]
            pid = (await engine.state(container_id)).pid
            uid_line = next(
                line
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("Uid:")
            )
            deadline = time.monotonic() + 10
            while not (await output(engine, container_id)).strip() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            inside = (await output(engine, container_id)).split()
    assert config["User"] == "", "no fallback user where the daemon remaps"
    assert inside == ["0"]
    assert {int(v) for v in uid_line.split()[1:]} == {REMAP_HOST_ID}


# -- a real agent and coordinator -------------------------------------------------------------


class Stack:
    def __init__(
        self, coordinator: CoordinatorProcess, agent: AgentProcess, api: Api, engine: EngineService
    ) -> None:
        self.coordinator, self.agent, self.api, self.engine = coordinator, agent, api, engine

    async def submit(self, image: str, command: list[str], **fields: Any) -> str:
        status, job = await self.api.submit(
            image=image, command=command, max_price_per_gpu_hour_micro_yuan=10_000_000, **fields
        )
        assert status == 201, job
        return str(job["id"])

    async def wait(self, job_id: str, predicate: Any, timeout_s: float = 40) -> dict[str, Any]:
        try:
            return await self.api.wait_for(job_id, predicate, timeout_s)
        except AssertionError:
            raise AssertionError(
                f"{await self.api.job(job_id)}\n--- agent log ---\n{self.agent.log()[-4000:]}"
            ) from None

    def containers(self) -> list[dict[str, Any]]:
        return self.engine.containers_of(self.agent.agent_id)

    async def job_log(self, job_id: str) -> str:
        _, log = await self.api.call("GET", f"/v1/jobs/{job_id}/logs")
        return str(log["data"])


@contextlib.asynccontextmanager
async def agent_stack(
    tmp_path: Path, engine_service: EngineService, database_engine: str, **settings: Any
) -> AsyncIterator[Stack]:
    (tmp_path / "coordinator").mkdir()
    coordinator = CoordinatorProcess(
        tmp_path / "coordinator", database=new_database(database_engine, tmp_path / "coordinator")
    )
    coordinator.start()
    agent = AgentProcess(tmp_path / "agent", coordinator, engine_service.socket, GPUS)
    agent.settings.update(settings)
    agent.workdir.mkdir()
    api = Api(coordinator.url, coordinator.add_enterprise(5))
    stack = Stack(coordinator, agent, api, engine_service)
    try:
        agent.enroll()
        agent.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _, market = await api.call("GET", "/v1/market")
            if market.get("models") and market["models"][0]["free"] == 2:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(
                f"the agent's GPUs never reached the market:\n{agent.log()[-3000:]}"
            )
        yield stack
    finally:
        agent.stop()
        coordinator.stop()
        await api.close()
        for container in stack.containers():
            engine_service.request("DELETE", f"/v1.41/containers/{container['Id']}?force=true")


async def test_a_job_asking_2_44_bytes_runs_with_the_hosts_cap(
    tmp_path: Path, engine_service: EngineService, engine_name: str
) -> None:
    """Attack: 2^44 bytes of memory passed through to the engine, not capped by the host."""
    reserve = 2 << 30
    async with agent_stack(
        tmp_path, engine_service, engine_name, memory_reserve_bytes=reserve
    ) as stack:
        job_id = await stack.submit(BUSYBOX_IMAGE, ["sleep", "60"], gpus=1, memory_bytes=1 << 44)
        await stack.wait(job_id, lambda j: j["state"] == "running")
        [container] = stack.containers()
        status, body = engine_service.request("GET", f"/v1.41/containers/{container['Id']}/json")
        assert status == 200
        host = json.loads(body)["HostConfig"]
        # One of the host's two GPUs: half of what the host has beyond the reserve.
        cap = (psutil.virtual_memory().total - reserve) // 2
        assert host["Memory"] == cap and host["MemorySwap"] == cap
        assert host["ReadonlyRootfs"] is True
        text = await stack.job_log(job_id)
        assert f"memory limit {cap} bytes, not the {1 << 44} asked" in text, text
        status, _ = await stack.api.call("POST", f"/v1/jobs/{job_id}/cancel")
        assert status == 200
        await stack.wait(job_id, lambda j: j["state"] == "cancelled")


class Listener:
    """A TCP service on the provider's loopback that answers every request with a 500 and
    counts the connections it was ever offered."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = int(self.server.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            with connection:
                connection.settimeout(2)
                with contextlib.suppress(OSError):
                    connection.recv(65536)
                    connection.sendall(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 25"
                        b"\r\nConnection: close\r\n\r\nprovider-internal-secret\n"
                    )

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


@pytest.fixture
def loopback_service() -> Iterator[Listener]:
    listener = Listener()
    try:
        yield listener
    finally:
        listener.close()


async def test_an_image_on_the_providers_loopback_is_refused_unpulled(
    tmp_path: Path, engine_service: EngineService, engine_name: str, loopback_service: Listener
) -> None:
    """Attack: `127.0.0.1:PORT/...` made the provider's engine call its own loopback."""
    registry = f"127.0.0.1:{loopback_service.port}"
    # The attack itself: the engine, asked directly, does connect to the provider's loopback.
    async with Engine(engine_service.socket) as engine:
        with contextlib.suppress(Exception):
            await engine.pull(f"{registry}/probe:1", timeout_s=20)
    assert loopback_service.connections > 0, "the engine never tried: this test proves nothing"
    before = loopback_service.connections
    async with agent_stack(tmp_path, engine_service, engine_name) as stack:
        for image in (f"{registry}/x:1", f"localhost:{loopback_service.port}/x:1"):
            job_id = await stack.submit(image, ["true"])
            job = await stack.wait(job_id, lambda j: j["state"] == "failed")
            host = image.split("/")[0]
            assert job["reason"] == "registry_refused"
            assert job["reason_detail"] == f"the provider's registry policy refuses registry {host}"
        assert "registry policy refuses image" in stack.agent.log()
    assert loopback_service.connections == before, "the agent let the engine contact it"


async def test_an_engine_pull_error_does_not_reach_the_enterprise(
    tmp_path: Path, engine_service: EngineService, engine_name: str, loopback_service: Listener
) -> None:
    """Attack: the engine's pull error, naming the provider's network, went to the enterprise.
    Here the operator allows a registry on its own network, which then fails."""
    registry = f"127.0.0.1:{loopback_service.port}"
    async with agent_stack(
        tmp_path,
        engine_service,
        engine_name,
        registry_allow=[registry],
        registry_refuse_private=False,
    ) as stack:
        image = f"{registry}/team/x:1"
        job_id = await stack.submit(image, ["true"])
        job = await stack.wait(job_id, lambda j: j["state"] == "failed", timeout_s=60)
        assert loopback_service.connections > 0, "the allowed registry was asked"
        assert job["reason"] == "image_pull_failed"
        assert job["reason_detail"] == f"the provider's engine could not pull image {image}"
        agent_log = stack.agent.log()
        assert f"image {image}: pulling image {image} failed" in agent_log, agent_log[-3000:]
        assert "provider-internal-secret" not in json.dumps(job)
        assert "provider-internal-secret" not in await stack.job_log(job_id)


def test_self_test_says_whether_container_root_is_host_root(
    tmp_path: Path, engine_service: EngineService
) -> None:
    result = subprocess.run(
        [
            BIN / "suanli-agent",
            "self-test",
            "--state-dir",
            str(tmp_path / "none"),
            "--engine-socket",
            str(engine_service.socket),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    checks = {c["check"]: c for c in json.loads(result.stdout)}
    root = checks["container root"]
    assert root["ok"], root
    if engine_service.kind == "podman":
        assert root["detail"].startswith("userns: Podman") and "not host root" in root["detail"]
    else:
        assert root["detail"].startswith("non-root-user: Docker without userns-remap")
        assert FALLBACK_USER in root["detail"]
    # A bounded probe container was created (never started) and checked, then removed.
    assert checks["job limits"]["ok"], checks["job limits"]
    assert "engine log at most 67108864 bytes per job" in checks["job limits"]["detail"]
    _, images = engine_service.request("GET", "/v1.41/images/json")
    assert "self-test-probe" not in images.decode()
    _, containers = engine_service.request("GET", "/v1.41/containers/json?all=true")
    assert "suanli-self-test" not in containers.decode()
    assert "private hosts refused" in checks["registry policy"]["detail"]


async def test_a_log_flood_through_the_agent_ends_and_ships_what_it_can(
    tmp_path: Path, engine_service: EngineService, engine_name: str
) -> None:
    """The bound on disk must not stall the agent's own log shipping or the job's end. What
    the engine rotated away before the agent read it is lost: the bound is a window."""
    async with agent_stack(
        tmp_path,
        engine_service,
        engine_name,
        engine_log_max_bytes=256 * 1024,
        max_job_log_bytes=512 * 1024,
    ) as stack:
        job_id = await stack.submit(
            BUSYBOX_IMAGE, ["sh", "-c", f"echo first; yes {'y' * 99} | head -c 8000000; echo last"]
        )
        began = time.monotonic()
        job = await stack.wait(job_id, lambda j: j["state"] in ("succeeded", "failed"))
        assert job["state"] == "succeeded", job
        assert time.monotonic() - began < 30
        text = await stack.job_log(job_id)
        assert "y" * 99 + "\n" in text and len(text) <= 512 * 1024 + 4096
