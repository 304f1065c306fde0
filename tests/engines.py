"""Real container engines for tests: dockerd and Podman's Docker-compatible service.

Each runs as a child of the test session in its own temp dir (socket, storage, state), so it
touches nothing of the host's engines, and holds the image `BUSYBOX_IMAGE`, imported from a
tarball of the host's static busybox since tests have no registry. Missing binaries skip the
tests, except under CI=true, where they fail: a broken install must not pass as green.

Import the fixtures (docker_service, podman_service, engine_service, engine) into a conftest
or test module; `engine_service` and `engine` are parametrized over both engines.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from agent.engine import Engine

BUSYBOX_IMAGE = "suanli-test/busybox:1"
KINDS = ("docker", "podman")
BINARIES = {
    "docker": ("dockerd", "containerd", "containerd-shim-runc-v2", "runc"),
    "podman": ("podman", "conmon", "runc"),
}
BUSYBOX = Path("/bin/busybox")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI, where every engine must be installed."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def missing_binaries(kind: str) -> list[str]:
    missing = [name for name in BINARIES[kind] if shutil.which(name) is None]
    if not _is_static_elf(BUSYBOX):
        missing.append(f"{BUSYBOX} (static, from busybox-static)")
    return missing


def _is_static_elf(path: Path) -> bool:
    """True for a 64-bit ELF without an interpreter: runnable in an image holding nothing else."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    pt_interp = 3
    return all(
        int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], "little")
        != pt_interp
        for i in range(phnum)
    )


def busybox_rootfs() -> bytes:
    """A root filesystem tarball: static busybox with a symlink for each applet it has."""
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, mode in (
            ("bin", 0o755),
            ("dev", 0o755),
            ("etc", 0o755),
            ("proc", 0o555),
            ("sys", 0o555),
            ("tmp", 0o1777),
        ):
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, mode
            tar.addfile(entry)
        binary = BUSYBOX.read_bytes()
        entry = tarfile.TarInfo("bin/busybox")
        entry.size, entry.mode = len(binary), 0o755
        tar.addfile(entry, io.BytesIO(binary))
        for applet in sorted(set(applets) - {"busybox"}):
            entry = tarfile.TarInfo(f"bin/{applet}")
            entry.type, entry.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(entry)
    return buffer.getvalue()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass
class EngineService:
    """One engine process serving the Docker API on `socket`."""

    kind: str
    workdir: Path
    socket: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    started_in_s: float = 0.0

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 60.0
    ) -> tuple[int, bytes]:
        """A plain synchronous API call, for set-up and clean-up outside any event loop."""
        connection = _UnixConnection(self.socket, timeout)
        try:
            headers = {"Content-Type": "application/x-tar"} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def containers_of(self, agent_id: str) -> list[dict[str, Any]]:
        """Every container, running or not, that carries the agent's label."""
        filters = urllib.parse.quote(json.dumps({"label": [f"suanli.agent={agent_id}"]}))
        status, body = self.request("GET", f"/v1.41/containers/json?all=true&filters={filters}")
        assert status == 200, body
        return list(json.loads(body))

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited with {self.process.returncode} while "
                    f"starting:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.request("GET", "/_ping", timeout=2.0) == (200, b"OK"):
                    return
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.kind} did not answer /_ping within {START_TIMEOUT_S:g} s:\n{self.log_tail()}"
        )

    def import_image(self, ref: str, tarball: bytes) -> str:
        status, body = self.request("POST", "/v1.41/images/create?fromSrc=-", tarball)
        if status != 200:
            raise RuntimeError(f"{self.kind} refused the image import ({status}): {body[:300]!r}")
        image_id = json.loads(body.splitlines()[-1])["status"]
        repo, _, tag = ref.rpartition(":")
        status, body = self.request("POST", f"/v1.41/images/{image_id}/tag?repo={repo}&tag={tag}")
        if status not in (200, 201):
            raise RuntimeError(f"{self.kind} refused to tag {image_id} ({status}): {body!r}")
        return str(image_id)

    def remove_all_containers(self) -> None:
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            _, body = self.request("GET", "/v1.41/containers/json?all=true", timeout=10)
            for container in json.loads(body):
                self.request(
                    "DELETE", f"/v1.41/containers/{container['Id']}?force=true&v=true", timeout=30
                )

    def stop(self) -> None:
        """Stop the engine and everything it started, unmount its storage, delete its dir."""
        if self.process.poll() is None:
            self.remove_all_containers()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _kill_processes_mentioning(self.workdir)
        _unmount_under(self.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _kill_processes_mentioning(workdir: Path) -> None:
    """Kill what the engine left behind (containerd, shims, conmon): processes whose command
    line names its private dir, which nothing else on the host can know."""
    needle = str(workdir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


def _unmount_under(workdir: Path) -> None:
    prefix = str(workdir) + "/"
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        if subprocess.run(["umount", point], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)


def _spawn(kind: str, workdir: Path, argv: list[str], env: dict[str, str]) -> EngineService:
    log_path = workdir / f"{kind}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
    sock = workdir / f"{kind}.sock"
    return EngineService(kind, workdir, sock, process, log_path)


def start_docker(workdir: Path, extra_env: dict[str, str] | None = None) -> EngineService:
    config = workdir / "daemon.json"
    config.write_text("{}\n")  # not the host's /etc/docker/daemon.json
    argv = [
        "dockerd",
        "--host",
        f"unix://{workdir}/docker.sock",
        "--config-file",
        str(config),
        "--data-root",
        str(workdir / "data"),
        "--exec-root",
        str(workdir / "exec"),
        "--pidfile",
        str(workdir / "docker.pid"),
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
    ]
    return _spawn("docker", workdir, argv, {**os.environ, **(extra_env or {})})


def start_podman(workdir: Path, extra_env: dict[str, str] | None = None) -> EngineService:
    # crun fails on this hybrid-cgroup host and the default rlimits are refused (see
    # environment-notes); storage, state and temp files stay under workdir.
    conf = workdir / "containers.conf"
    conf.write_text(f"""\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{workdir}/events.log"
tmp_dir = "{workdir}/tmp"
lock_type = "file"

[network]
network_config_dir = "{workdir}/networks"
""")
    storage = workdir / "storage.conf"
    storage.write_text(f"""\
[storage]
driver = "overlay"
graphroot = "{workdir}/storage"
runroot = "{workdir}/run"
""")
    # its own HOME: registry certificates a test trusts go to $HOME/.config/containers/certs.d
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(conf),
        "CONTAINERS_STORAGE_CONF": str(storage),
        "HOME": str(workdir / "home"),
        **(extra_env or {}),
    }
    argv = ["podman", "system", "service", "--time=0", f"unix://{workdir}/podman.sock"]
    return _spawn("podman", workdir, argv, env)


def serve(kind: str, extra_env: dict[str, str] | None = None) -> Iterator[EngineService]:
    """Start one engine with the busybox image, yield it, and tear it all down; `extra_env`
    goes to the engine's process (a test's CA bundle in SSL_CERT_FILE, say)."""
    if os.geteuid() != 0:
        unavailable(f"{kind} engine tests start the engine as root, and this is uid {os.geteuid()}")
    missing = missing_binaries(kind)
    if missing:
        unavailable(
            f"{kind} engine tests need {', '.join(missing)}; run scripts/install-test-deps as root"
        )
    # Short and under /tmp: containerd and conmon put unix sockets in here (108-byte limit).
    workdir = Path(tempfile.mkdtemp(prefix=f"suanli-{kind}-", dir="/tmp"))
    began = time.monotonic()
    service = (start_docker if kind == "docker" else start_podman)(workdir, extra_env)
    try:
        service.wait_ready()
        service.import_image(BUSYBOX_IMAGE, busybox_rootfs())
        service.started_in_s = time.monotonic() - began
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def docker_service() -> Iterator[EngineService]:
    yield from serve("docker")


@pytest.fixture(scope="session")
def podman_service() -> Iterator[EngineService]:
    yield from serve("podman")


@pytest.fixture(scope="session", params=KINDS)
def engine_service(request: pytest.FixtureRequest) -> EngineService:
    service: Any = request.getfixturevalue(f"{request.param}_service")
    assert isinstance(service, EngineService)
    return service


@pytest.fixture
async def engine(engine_service: EngineService) -> AsyncIterator[Engine]:
    async with Engine(engine_service.socket, timeout_s=30.0) as client:
        yield client
