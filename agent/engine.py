"""The container engine that runs leased jobs: the Docker Engine API over a unix socket.

One client serves dockerd and Podman's Docker-compatible service. Every request carries an
explicit API version (negotiated once through `GET /version`), a timeout, and turns failures
into `EngineError`s that say in one sentence what went wrong. `build_create_body` is the whole
security policy of a job container as a pure function: no privilege, every capability dropped,
no-new-privileges, CPU/memory/pids limits, no host mounts, and GPUs pinned to the lease.
"""

from __future__ import annotations

import asyncio
import builtins
import io
import json
import logging
import re
import struct
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol, Self, cast
from urllib.parse import quote

import aiohttp

from shared.errors import SuanliError

__all__ = [
    "API_VERSION_MAX",
    "API_VERSION_MIN",
    "FALLBACK_USER",
    "GPU_MODES",
    "LABEL_GPU_MODE",
    "LABEL_GPU_UUIDS",
    "NETWORKS",
    "ContainerConflict",
    "ContainerNotFound",
    "ContainerSpec",
    "ContainerStartFailed",
    "ContainerState",
    "Engine",
    "EngineError",
    "EngineInfo",
    "EngineTimeout",
    "EngineUnavailable",
    "GpuPinningFailed",
    "ImageNotFound",
    "ImagePullFailed",
    "ImageTooLarge",
    "InvalidContainerSpec",
    "LimitNotEnforced",
    "build_create_body",
    "build_libpod_create_body",
    "cdi_device_name",
    "demultiplex",
    "follow_pull",
    "split_image_ref",
    "unenforced_limits",
]

log = logging.getLogger(__name__)

# Docker 20.10 and Podman 4-5 speak 1.41; Docker 29 refuses anything below 1.44. Nothing this
# client sends changed meaning between these two, so it speaks the newest both sides know.
API_VERSION_MIN = (1, 41)
API_VERSION_MAX = (1, 47)
# Podman's own API: containers on Podman are created (and checked) through it (Engine.create).
LIBPOD_API = "/v4.0.0/libpod"

GpuMode = Literal["nvidia-runtime", "cdi", "none"]
GPU_MODES: tuple[str, ...] = ("nvidia-runtime", "cdi", "none")
NETWORKS: tuple[str, ...] = ("none", "bridge")

# The pinning the agent intended, on the container itself: checkable where no GPU exists, and
# read back when the agent re-adopts containers after a restart.
LABEL_GPU_MODE = "suanli.gpu-mode"
LABEL_GPU_UUIDS = "suanli.gpu-uuids"
_RESERVED_ENV = "NVIDIA_VISIBLE_DEVICES"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_GPU_UUID_RE = re.compile(r"(GPU|MIG)-[A-Za-z0-9/-]+")
_MIN_MEMORY_BYTES = 6 << 20  # Docker refuses less
_CPU_PERIOD_US = 100_000
_MAX_LOG_FRAME = 16 << 20
_TMPFS_PATH_RE = re.compile(r"(/[A-Za-z0-9_.-]+)+")
_MAX_ID = (1 << 32) - 1
# Who a Docker job runs as when the daemon does not remap user namespaces: nobody/nogroup.
FALLBACK_USER = "65534:65534"
# Docker rotates its json-file log at max-size and keeps max-file files.
DOCKER_LOG_FILES = 2
_SIGKILL_EXIT = 137
_REMOVE_TRIES = 8


class EngineError(SuanliError):
    """The container engine refused a request or could not carry it out."""

    code = "engine_error"


class EngineUnavailable(EngineError):
    """The engine's socket does not answer, or it speaks no API version this client knows."""

    code = "engine_unavailable"


class EngineTimeout(EngineError):
    """The engine did not answer within the request's time limit."""

    code = "engine_timeout"


class ImageNotFound(EngineError):
    """The image is neither on the host nor in its registry."""

    code = "image_not_found"


class ImagePullFailed(EngineError):
    """Pulling an image failed: registry unreachable, refused, or out of time."""

    code = "image_pull_failed"


class ImageTooLarge(ImagePullFailed):
    """The image's layers add up to more than the pull was allowed to fetch."""

    code = "image_too_large"


class ContainerNotFound(EngineError):
    """No container with that id or name exists on the engine."""

    code = "container_not_found"


class ContainerConflict(EngineError):
    """The request conflicts with a container's state or name (for example, the name is taken)."""

    code = "container_conflict"


class ContainerStartFailed(EngineError):
    """The engine created the container but could not start its process."""

    code = "container_start_failed"


class GpuPinningFailed(ContainerStartFailed):
    """The engine cannot give the container exactly the leased GPUs."""

    code = "gpu_pinning_failed"


class InvalidContainerSpec(EngineError):
    """A container spec breaks the agent's own rules before any engine sees it."""

    code = "bad_container_spec"


class LimitNotEnforced(EngineError):
    """The engine accepted a container but said it would not enforce one of its limits."""

    code = "limit_not_enforced"


def cdi_device_name(gpu_uuid: str) -> str:
    """The CDI name the NVIDIA Container Toolkit gives one GPU (`nvidia-ctk cdi generate`)."""
    return f"nvidia.com/gpu={gpu_uuid}"


def split_image_ref(ref: str) -> tuple[str, str]:
    """`repo[:tag]` or `repo@digest` as the (fromImage, tag) pair of a pull; the tag defaults to
    latest, since a pull without a tag fetches every tag of the repository."""
    if "@" in ref:
        return ref, ""
    name, sep, tag = ref.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return ref, "latest"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerSpec:
    """One job container as the agent wants it; the hardening is not optional.

    gpu_mode picks how the leased GPUs reach the container: "nvidia-runtime" (Docker device
    request for the NVIDIA driver), "cdi" (Container Device Interface names), or "none" (no GPU
    is attached; the intended UUIDs are still recorded in the labels).
    """

    name: str
    image: str
    command: Sequence[str]
    cpus_milli: int
    memory_bytes: int
    pids_limit: int
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    gpu_uuids: Sequence[str] = ()
    gpu_mode: str = "none"
    network: str = "none"
    read_only_rootfs: bool = False
    user: str | None = None
    init: bool = False
    # Writable tmpfs mounts, path -> size in bytes. Their pages count against the container's
    # memory limit (the memory cgroup charges tmpfs to whoever writes it), so a full tmpfs
    # costs the job memory, never the host more than the limit.
    tmpfs: Mapping[str, int] = field(default_factory=dict)
    shm_bytes: int | None = None  # size of /dev/shm; the engine's default (64 MiB) when None
    # Bound of the engine's own log of the container on the host's disk (all files together);
    # the engine's default (often unbounded) when None.
    log_max_bytes: int | None = None
    # Container uid/gid 0..userns_size-1 appear on the host from userns_host_id on. On Docker,
    # whose user namespaces are a daemon setting, `Engine.create` runs the job as
    # FALLBACK_USER instead when the daemon does not remap. None: no namespace asked for.
    userns_host_id: int | None = None
    userns_size: int = 65536

    def __post_init__(self) -> None:
        if isinstance(self.command, str):
            raise InvalidContainerSpec(
                f"container spec {self.name!r}: the command must be a "
                "list of arguments, not one string"
            )

        def fix(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        fix("command", tuple(self.command))
        fix("gpu_uuids", tuple(self.gpu_uuids))
        fix("env", MappingProxyType(dict(self.env)))
        fix("labels", MappingProxyType(dict(self.labels)))
        fix("tmpfs", MappingProxyType(dict(self.tmpfs)))
        problem = self._problem()
        if problem:
            raise InvalidContainerSpec(f"container spec {self.name!r}: {problem}")

    def _problem(self) -> str | None:
        if not _NAME_RE.fullmatch(self.name):
            return (
                "the name must be 1-128 letters, digits, '_', '.' or '-', starting with a "
                "letter or digit"
            )
        if not self.image or any(c.isspace() for c in self.image):
            return "the image reference is empty or contains whitespace"
        if not all(isinstance(arg, str) for arg in self.command):
            return "every command argument must be a string"
        if self.gpu_mode not in GPU_MODES:
            return f"gpu_mode must be one of {', '.join(GPU_MODES)}, not {self.gpu_mode!r}"
        if self.network not in NETWORKS:
            return f"network must be one of {', '.join(NETWORKS)}, not {self.network!r}"
        for uuid in self.gpu_uuids:
            if not _GPU_UUID_RE.fullmatch(uuid):
                return f"{uuid!r} is not a GPU UUID (GPU-... or MIG-...)"
        if len(set(self.gpu_uuids)) != len(self.gpu_uuids):
            return "a GPU UUID appears twice"
        if self.cpus_milli < 10:
            return "cpus_milli must be at least 10 (a hundredth of a CPU)"
        if self.memory_bytes < _MIN_MEMORY_BYTES:
            return f"memory_bytes must be at least {_MIN_MEMORY_BYTES}"
        if self.pids_limit < 1:
            return "pids_limit must be at least 1"
        for key in self.env:
            if not key or "=" in key or "\0" in key:
                return f"environment variable name {key!r} is empty or contains '=' or NUL"
            if key == _RESERVED_ENV:
                return f"{_RESERVED_ENV} is set by the agent from the lease's GPUs"
        for key in self.labels:
            if not key or key in (LABEL_GPU_MODE, LABEL_GPU_UUIDS):
                return f"label {key!r} is empty or reserved for the agent"
        for name in ("shm_bytes", "log_max_bytes"):
            value = getattr(self, name)
            if value is not None and value < 4096:
                return f"{name} must be at least 4096 when given"
        for path, size in self.tmpfs.items():
            if not _TMPFS_PATH_RE.fullmatch(path) or "/." in path:
                return f"tmpfs path {path!r} must be an absolute path of plain names, not /"
            if type(size) is not int or size < 4096:
                return f"tmpfs {path} must be at least 4096 bytes"
        if self.userns_host_id is not None and not (
            1 <= self.userns_host_id
            and 1 <= self.userns_size
            and self.userns_host_id + self.userns_size <= _MAX_ID
        ):
            return "userns_host_id and userns_size must name a range of host ids above 0"
        return None

    @property
    def cdi_devices(self) -> tuple[str, ...]:
        return tuple(cdi_device_name(uuid) for uuid in self.gpu_uuids)

    def _env(self) -> dict[str, str]:
        env = dict(self.env)
        # The NVIDIA hook (legacy mode) hands a container every GPU named here, and CUDA base
        # images set it to "all": the agent always decides, "void" meaning none.
        pinned = self.gpu_mode == "nvidia-runtime" and self.gpu_uuids
        env[_RESERVED_ENV] = ",".join(self.gpu_uuids) if pinned else "void"
        return env

    def _labels(self) -> dict[str, str]:
        return {
            **self.labels,
            LABEL_GPU_MODE: self.gpu_mode,
            LABEL_GPU_UUIDS: ",".join(self.gpu_uuids),
        }


def build_create_body(spec: ContainerSpec) -> dict[str, Any]:
    """The `POST /containers/create` body (Docker API) for a spec: the job's whole policy."""
    host: dict[str, Any] = {
        "Privileged": False,
        "CapAdd": [],
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "NanoCpus": spec.cpus_milli * 1_000_000,
        "Memory": spec.memory_bytes,
        "MemorySwap": spec.memory_bytes,  # equal to Memory: no swap on top
        "PidsLimit": spec.pids_limit,
        "NetworkMode": spec.network,
        "IpcMode": "private",
        "PidMode": "",
        "Binds": [],
        "Mounts": [],
        "VolumesFrom": [],
        "Devices": [],
        "DeviceRequests": [],
        "PortBindings": {},
        "PublishAllPorts": False,
        "ReadonlyRootfs": spec.read_only_rootfs,
        "Init": spec.init,
        "RestartPolicy": {"Name": "no"},
        "AutoRemove": False,
        "OomKillDisable": False,
    }
    if spec.gpu_uuids and spec.gpu_mode == "nvidia-runtime":
        host["DeviceRequests"] = [
            {"Driver": "nvidia", "DeviceIDs": list(spec.gpu_uuids), "Capabilities": [["gpu"]]}
        ]
    elif spec.gpu_uuids and spec.gpu_mode == "cdi":
        host["DeviceRequests"] = [{"Driver": "cdi", "DeviceIDs": list(spec.cdi_devices)}]
    if spec.tmpfs:
        # exec: jobs run what they install in their scratch; Docker's default is noexec.
        host["Tmpfs"] = {
            path: f"rw,exec,nosuid,nodev,size={size}" for path, size in spec.tmpfs.items()
        }
    if spec.shm_bytes is not None:
        host["ShmSize"] = spec.shm_bytes
    if spec.log_max_bytes is not None:
        host["LogConfig"] = {
            "Type": "json-file",
            "Config": {
                "max-size": str(max(4096, spec.log_max_bytes // DOCKER_LOG_FILES)),
                "max-file": str(DOCKER_LOG_FILES),
            },
        }
    body: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{key}={value}" for key, value in spec._env().items()],
        "Labels": spec._labels(),
        "User": spec.user or "",
        "Tty": False,
        "OpenStdin": False,
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "HostConfig": host,
    }
    if spec.command:
        body["Cmd"] = list(spec.command)
    return body


def build_libpod_create_body(spec: ContainerSpec) -> dict[str, Any]:
    """The same policy as Podman's own `POST /libpod/containers/create` body.

    Podman's Docker-compatible API (4.x) drops device requests without a word, takes a CDI
    name in HostConfig.Devices for a file path and has no uid/gid maps, so GPUs and a user
    namespace reach a Podman container only this way.
    """
    body: dict[str, Any] = {
        "name": spec.name,
        "image": spec.image,
        "env": spec._env(),
        "labels": spec._labels(),
        "privileged": False,
        "cap_add": [],
        "cap_drop": ["ALL"],
        "no_new_privileges": True,
        "resource_limits": {
            "memory": {"limit": spec.memory_bytes, "swap": spec.memory_bytes},
            "cpu": {"quota": spec.cpus_milli * _CPU_PERIOD_US // 1000, "period": _CPU_PERIOD_US},
            "pids": {"limit": spec.pids_limit},
        },
        "netns": {"nsmode": spec.network},
        "ipcns": {"nsmode": "private"},
        "devices": [{"path": name} for name in spec.cdi_devices] if spec.gpu_mode == "cdi" else [],
        "mounts": [],
        "volumes": [],
        "read_only_filesystem": spec.read_only_rootfs,
        "init": spec.init,
        "restart_policy": "no",
        "remove": False,
        "terminal": False,
        "stdin": False,
    }
    if spec.command:
        body["command"] = list(spec.command)
    if spec.user:
        body["user"] = spec.user
    if spec.tmpfs:
        body["mounts"] = [
            {
                "destination": path,
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["rw", "exec", "nosuid", "nodev", f"size={size}"],
            }
            for path, size in spec.tmpfs.items()
        ]
    if spec.read_only_rootfs:
        # Podman would otherwise add tmpfs mounts of its own, of no set size, at /run, /tmp
        # and /var/tmp of a read-only container.
        body["read_only_tmpfs"] = False
    if spec.shm_bytes is not None:
        body["shm_size"] = spec.shm_bytes
    if spec.log_max_bytes is not None:
        # conmon truncates the file once it reaches the size: one file, never more on disk.
        body["log_configuration"] = {"driver": "k8s-file", "size": spec.log_max_bytes}
    if spec.userns_host_id is not None:
        mapping = [{"container_id": 0, "host_id": spec.userns_host_id, "size": spec.userns_size}]
        body["userns"] = {"nsmode": "private"}
        body["idmappings"] = {
            "HostUIDMapping": False,
            "HostGIDMapping": False,
            "UIDMap": mapping,
            "GIDMap": mapping,
        }
    return body


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the engine is and how it can hand GPUs to a container."""

    flavor: Literal["docker", "podman"]
    version: str
    api_version: str
    runtimes: tuple[str, ...]
    default_runtime: str | None
    nvidia_runtime: bool  # an OCI runtime named "nvidia" is registered (NVIDIA toolkit present)
    cdi: bool  # the engine resolves CDI device names
    cdi_spec_dirs: tuple[str, ...]
    cgroup_version: str | None
    ncpu: int | None
    mem_total: int | None
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def gpu_modes(self) -> tuple[str, ...]:
        """The gpu_mode values this engine honours, best first; "none" always works."""
        modes: list[str] = []
        if self.flavor == "docker" and self.nvidia_runtime:
            modes.append("nvidia-runtime")  # Podman ignores Docker device requests
        if self.cdi:
            modes.append("cdi")
        return (*modes, "none")

    @property
    def gpu_mode(self) -> str:
        return self.gpu_modes[0]


@dataclass(frozen=True, slots=True)
class ContainerState:
    """A container's state from inspect. exit_code 137 means SIGKILL: the memory limit, or a
    stop whose grace ran out; Podman 4.3 reports oom_killed False even for the former."""

    status: str
    running: bool
    exit_code: int
    oom_killed: bool
    error: str
    pid: int
    started_at: str
    finished_at: str

    @property
    def killed(self) -> bool:
        return self.exit_code == _SIGKILL_EXIT

    @property
    def memory_kill_suspected(self) -> bool:
        return self.oom_killed or self.killed


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip() or "no message"
    if isinstance(data, dict):
        return str(data.get("message") or data.get("cause") or data).strip()
    return str(data)


def _version_tuple(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


_NOT_FOUND_WORDS = (
    "not found",
    "manifest unknown",
    "name unknown",
    "pull access denied",
    "repository does not exist",
    "no such image",
    "requested access to the resource is denied",
)
# Docker without the NVIDIA hook or CDI, CDI names no spec defines, the NVIDIA hook itself.
_GPU_START_WORDS = ("could not select device driver", "cdi device", "nvidia-container")


def _pull_error(ref: str, message: str) -> EngineError:
    if any(word in message.lower() for word in _NOT_FOUND_WORDS):
        return ImageNotFound(f"image {ref} was not found in its registry: {message}")
    return ImagePullFailed(f"pulling image {ref} failed: {message}")


def _numeric_non_root(user: str | None) -> bool:
    """A "uid:gid" of two non-zero numbers: a user the image cannot turn into root."""
    uid, sep, gid = (user or "").partition(":")
    return bool(sep) and uid.isdigit() and gid.isdigit() and int(uid) > 0 and int(gid) > 0


def unenforced_limits(
    spec: ContainerSpec, document: Mapping[str, Any], flavor: str = "docker"
) -> list[str]:
    """What a created container's inspect document (Podman's own, on Podman) says the engine
    will not enforce of spec: each a phrase naming the limit. Empty when all is in place."""
    host = document.get("HostConfig") or {}
    problems = []
    if host.get("Memory") != spec.memory_bytes:
        problems.append(f"memory {spec.memory_bytes} bytes (the engine has {host.get('Memory')})")
    if spec.read_only_rootfs and not host.get("ReadonlyRootfs"):
        problems.append("a read-only root filesystem")
    if spec.log_max_bytes is not None:
        log_config = host.get("LogConfig") or {}
        if not ((log_config.get("Config") or {}).get("max-size") or log_config.get("Size")):
            problems.append(f"a log bound of {spec.log_max_bytes} bytes")
    if spec.user and spec.user != (document.get("Config") or {}).get("User"):
        problems.append(f"the user {spec.user}")
    if spec.userns_host_id is not None and flavor == "podman":
        wanted = f"0:{spec.userns_host_id}:{spec.userns_size}"
        maps = (host.get("IDMappings") or {}).get("UidMap")
        if maps != [wanted]:
            problems.append(f"the user namespace {wanted} (the engine has {maps})")
    tmpfs = host.get("Tmpfs") or {}
    for path in spec.tmpfs:
        if f"size={spec.tmpfs[path]}" not in str(tmpfs.get(path, "")).split(","):
            problems.append(f"a tmpfs of {spec.tmpfs[path]} bytes at {path}")
    return problems


def _start_error(container_id: str, message: str) -> EngineError:
    if any(word in message.lower() for word in _GPU_START_WORDS):
        return GpuPinningFailed(f"container {container_id[:12]} could not get its GPUs: {message}")
    return ContainerStartFailed(f"container {container_id[:12]} could not start: {message}")


class Engine:
    """A client of one engine socket. Methods are coroutines; call `close()` when done."""

    def __init__(
        self, socket_path: str | Path, *, timeout_s: float = 30.0, api_version: str | None = None
    ) -> None:
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s
        self._api_version = api_version
        self._version: dict[str, Any] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._negotiate_lock: asyncio.Lock | None = None
        self._userns_remapped: bool | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path)
            )
        return self._session

    async def _raw(
        self, method: str, path: str, *, timeout: aiohttp.ClientTimeout, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        """Send a request; the caller reads and releases the response."""
        try:
            return await self._http().request(
                method, "http://engine" + path, timeout=timeout, **kwargs
            )
        except aiohttp.ClientConnectionError as exc:
            raise EngineUnavailable(
                f"the container engine at {self.socket_path} is not answering: {exc}"
            ) from exc
        except TimeoutError as exc:
            raise EngineTimeout(
                f"the container engine did not answer {method} {path} "
                f"within {timeout.total or timeout.sock_connect} s"
            ) from exc

    async def _prefix(self) -> str:
        if self._api_version is None:
            if self._negotiate_lock is None:
                self._negotiate_lock = asyncio.Lock()
            async with self._negotiate_lock:
                if self._api_version is None:
                    await self._negotiate()
        return f"/v{self._api_version}"

    async def _negotiate(self) -> None:
        version = await self._fetch_version("/version")
        server = _version_tuple(str(version.get("ApiVersion", "1.41")))
        low = _version_tuple(str(version.get("MinAPIVersion", "1.12")))
        chosen = min(server, API_VERSION_MAX)
        if chosen < API_VERSION_MIN or chosen < low:
            raise EngineUnavailable(
                f"the container engine speaks API {low[0]}.{low[1]} to {server[0]}.{server[1]}, "
                f"and this agent needs {API_VERSION_MIN[0]}.{API_VERSION_MIN[1]} to "
                f"{API_VERSION_MAX[0]}.{API_VERSION_MAX[1]}"
            )
        self._api_version = f"{chosen[0]}.{chosen[1]}"

    async def _fetch_version(self, path: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        response = await self._raw("GET", path, timeout=timeout)
        async with response:
            body = await self._read(response, "GET", path, timeout)
            if response.status != 200:
                raise EngineUnavailable(
                    f"the container engine answered GET /version with "
                    f"{response.status}: {_message(body)}"
                )
        version = cast(dict[str, Any], json.loads(body))
        self._version = version
        return version

    async def _read(
        self,
        response: aiohttp.ClientResponse,
        method: str,
        path: str,
        timeout: aiohttp.ClientTimeout,
    ) -> bytes:
        try:
            return await response.read()
        except aiohttp.ClientError as exc:
            raise EngineUnavailable(
                f"the container engine broke off {method} {path}: {exc}"
            ) from exc
        except TimeoutError as exc:
            raise EngineTimeout(
                f"the container engine did not finish answering {method} {path} "
                f"within {timeout.total} s"
            ) from exc

    async def _call(
        self,
        method: str,
        path: str,
        *,
        ok: Collection[int] = (200,),
        timeout_s: float | None = None,
        libpod: bool = False,
        **kwargs: Any,
    ) -> tuple[int, bytes]:
        """One request under the API prefix; a status outside `ok` raises an EngineError whose
        sentence names the request. Callers map 404/409 to their own errors first via `ok`."""
        full = (LIBPOD_API if libpod else await self._prefix()) + path
        timeout = aiohttp.ClientTimeout(total=self.timeout_s if timeout_s is None else timeout_s)
        response = await self._raw(method, full, timeout=timeout, **kwargs)
        async with response:
            body = await self._read(response, method, path, timeout)
        if response.status not in ok:
            raise EngineError(
                f"the container engine refused {method} {path.split('?')[0]} "
                f"({response.status}): {_message(body)}"
            )
        return response.status, body

    async def _container_call(
        self,
        method: str,
        container_id: str,
        action: str,
        *,
        ok: Collection[int] = (200, 204),
        **kwargs: Any,
    ) -> tuple[int, bytes]:
        path = f"/containers/{quote(container_id, safe='')}{action}"
        status, body = await self._call(method, path, ok={*ok, 404}, **kwargs)
        if status == 404:
            raise ContainerNotFound(f"the container engine has no container {container_id}")
        return status, body

    # -- engine ----------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise EngineUnavailable unless the engine answers `/_ping` with OK."""
        timeout = aiohttp.ClientTimeout(total=min(self.timeout_s, 10.0))
        response = await self._raw("GET", "/_ping", timeout=timeout)
        async with response:
            body = await self._read(response, "GET", "/_ping", timeout)
        if response.status != 200 or body.strip() != b"OK":
            raise EngineUnavailable(
                f"the container engine at {self.socket_path} answered its "
                f"ping with {response.status} {body[:80]!r}"
            )

    async def version(self) -> dict[str, Any]:
        """The engine's `/version` document (Docker's shape; Podman adds a component)."""
        return await self._fetch_version(f"{await self._prefix()}/version")

    @property
    def flavor(self) -> Literal["docker", "podman"] | None:
        """Which engine this is ("docker" or "podman") once it has been asked anything."""
        if self._version is None:
            return None
        components = self._version.get("Components") or []
        if any("podman" in str(c.get("Name", "")).lower() for c in components):
            return "podman"
        return "docker"

    async def _flavor(self) -> Literal["docker", "podman"]:
        if self._version is None:
            await self.version()
        flavor = self.flavor
        assert flavor is not None
        return flavor

    async def info(self) -> EngineInfo:
        """The engine's runtimes and GPU support, so the agent can pick a gpu_mode."""
        version = await self.version()
        _, body = await self._call("GET", "/info")
        raw = cast(dict[str, Any], json.loads(body))
        flavor = await self._flavor()
        runtimes = tuple(sorted((raw.get("Runtimes") or {}).keys()))
        spec_dirs = tuple(raw.get("CDISpecDirs") or ())
        # Podman resolves CDI names since 4.1 (through its own API, see build_libpod_create_body);
        # Docker only from 25, and says so by listing its spec dirs once the feature is on.
        cdi = bool(spec_dirs) if flavor == "docker" else True
        return EngineInfo(
            flavor=flavor,
            version=str(version.get("Version", "")),
            api_version=str(self._api_version),
            runtimes=runtimes,
            default_runtime=raw.get("DefaultRuntime") or None,
            nvidia_runtime="nvidia" in runtimes,
            cdi=cdi,
            cdi_spec_dirs=spec_dirs,
            cgroup_version=str(raw["CgroupVersion"]) if raw.get("CgroupVersion") else None,
            ncpu=raw.get("NCPU"),
            mem_total=raw.get("MemTotal"),
            raw=MappingProxyType(raw),
        )

    # -- images ----------------------------------------------------------------------------

    async def image_exists(self, ref: str) -> bool:
        status, _ = await self._call("GET", f"/images/{quote(ref, safe='/:@')}/json", ok=(200, 404))
        return status == 200

    async def remove_image(self, ref: str) -> None:
        """Delete an image (forced: even if stopped containers use it); absent is fine."""
        await self._call(
            "DELETE", f"/images/{quote(ref, safe='/:@')}", params={"force": "true"}, ok=(200, 404)
        )

    async def pull(
        self,
        ref: str,
        *,
        timeout_s: float = 600.0,
        max_bytes: int | None = None,
        progress: Callable[[str], object] | None = None,
    ) -> None:
        """Pull an image, giving up after timeout_s or once its layers exceed max_bytes.

        Closing the request is what stops the engine's download, so both limits end it."""
        image, tag = split_image_ref(ref)
        params = {"fromImage": image, **({"tag": tag} if tag else {})}
        path = f"{await self._prefix()}/images/create"
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._raw(
                    "POST",
                    path,
                    params=params,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s),
                )
                async with response:
                    if response.status != 200:
                        message = _message(await response.read())
                        if response.status == 404:
                            raise ImageNotFound(
                                f"image {ref} was not found in its registry: {message}"
                            )
                        raise _pull_error(ref, message)
                    await follow_pull(ref, response.content, max_bytes, progress)
        except TimeoutError as exc:
            raise ImagePullFailed(
                f"pulling image {ref} did not finish within {timeout_s:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise ImagePullFailed(f"pulling image {ref} broke off: {exc}") from exc
        if not await self.image_exists(ref):
            raise ImagePullFailed(
                f"pulling image {ref} ended without error, yet the engine does not have it"
            )

    async def import_rootfs(
        self, source: bytes | Path, ref: str, *, timeout_s: float = 300.0
    ) -> str:
        """Import a root filesystem tarball as image `ref` (`repo:tag`); return the image id.

        The tag is applied by a separate request: Podman 4.3's import ignores `tag`."""
        repo, tag = split_image_ref(ref)
        with source.open("rb") if isinstance(source, Path) else io.BytesIO(source) as stream:
            _, body = await self._call(
                "POST",
                "/images/create",
                params={"fromSrc": "-"},
                data=stream,
                timeout_s=timeout_s,
                headers={"Content-Type": "application/x-tar"},
            )
        image_id = None
        for line in body.splitlines():
            event = json.loads(line) if line.strip() else {}
            if isinstance(event, dict) and event.get("error"):
                raise EngineError(f"importing image {ref} failed: {event['error']}")
            status = str(event.get("status", "")) if isinstance(event, dict) else ""
            if status.startswith("sha256:"):
                image_id = status
        if image_id is None:
            raise EngineError(f"importing image {ref} gave no image id: {body[:200]!r}")
        await self._call(
            "POST", f"/images/{image_id}/tag", params={"repo": repo, "tag": tag}, ok=(200, 201)
        )
        return image_id

    # -- containers ------------------------------------------------------------------------

    async def create(self, spec: ContainerSpec) -> str:
        """Create (not start) the container; return its id.

        Podman gets its own API (the compatible one drops CDI devices and user namespaces);
        Docker the compatible one, with the job's user replaced by FALLBACK_USER where a user
        namespace was asked for and the daemon does not remap. What the engine then says it
        applied is checked against the spec: a limit it dropped removes the container."""
        flavor = await self._flavor()
        if flavor == "podman" and spec.gpu_mode == "nvidia-runtime" and spec.gpu_uuids:
            raise GpuPinningFailed(
                "Podman ignores Docker device requests, so gpu_mode "
                "nvidia-runtime would start the job without its GPUs; use cdi"
            )
        if flavor == "podman":
            status, body = await self._call(
                "POST",
                "/containers/create",
                libpod=True,
                json=build_libpod_create_body(spec),
                ok=(201, 404, 409, 500),
                timeout_s=max(self.timeout_s, 60),
            )
            if status == 500:
                # Podman's own API answers a missing image with 500 "image not known".
                if "image not known" not in _message(body):
                    raise EngineError(
                        f"the container engine refused POST /containers/create "
                        f"(500): {_message(body)}"
                    )
                status = 404
        else:
            if (
                spec.userns_host_id is not None
                and not _numeric_non_root(spec.user)
                and not await self.userns_remapped()
            ):
                spec = replace(spec, user=FALLBACK_USER)
            status, body = await self._call(
                "POST",
                "/containers/create",
                params={"name": spec.name},
                json=build_create_body(spec),
                ok=(201, 404, 409),
                timeout_s=max(self.timeout_s, 60),
            )
        if status == 404:
            raise ImageNotFound(f"image {spec.image} is not on this host: {_message(body)}")
        if status == 409:
            raise ContainerConflict(f"cannot create container {spec.name}: {_message(body)}")
        created = json.loads(body)
        container_id = str(created["Id"])
        discarded = [w for w in created.get("Warnings") or () if "discarded" in str(w).lower()]
        if not discarded:
            # Podman's own inspect shows the log size and id maps; its compatible one does not.
            _, raw = await self._call(
                "GET", f"/containers/{quote(container_id, safe='')}/json", libpod=flavor == "podman"
            )
            document = json.loads(raw)
            discarded = unenforced_limits(spec, document, flavor)
        if discarded:
            await self.remove(container_id, force=True)
            raise LimitNotEnforced(
                f"the engine would not enforce a limit of container "
                f"{spec.name}: {'; '.join(map(str, discarded))}"
            )
        for warning in created.get("Warnings") or ():
            log.warning("engine warning creating %s: %s", spec.name, warning)
        return container_id

    async def userns_remapped(self) -> bool:
        """Whether a Docker daemon runs every container in a user namespace (`userns-remap`),
        which it says in /info SecurityOptions as "name=userns". Asked once per client."""
        if self._userns_remapped is None:
            _, body = await self._call("GET", "/info")
            options = json.loads(body).get("SecurityOptions") or ()
            self._userns_remapped = any("name=userns" in str(o).split(",") for o in options)
        return self._userns_remapped

    async def root_isolation(self) -> tuple[str, str]:
        """How a job asking for a user namespace is kept from being root on the host, as
        (mode, sentence): "userns" (container root is an unprivileged host uid) or
        "non-root-user" (Docker without userns-remap: the job runs as FALLBACK_USER)."""
        flavor = await self._flavor()
        if flavor == "podman":
            return "userns", (
                "Podman: each job gets its own user namespace (explicit uid/gid "
                "maps); container root is not host root"
            )
        if await self.userns_remapped():
            return "userns", (
                "Docker remaps user namespaces (userns-remap): container root is not host root"
            )
        return "non-root-user", (
            f"Docker without userns-remap: container root would be host "
            f"root, so jobs run as uid:gid {FALLBACK_USER}; set "
            f'"userns-remap" in daemon.json for a user namespace'
        )

    async def start(self, container_id: str) -> None:
        """Start a created container. 304 (already running) is success."""
        status, body = await self._container_call(
            "POST", container_id, "/start", ok=range(200, 600), timeout_s=max(self.timeout_s, 60)
        )
        if status not in (204, 304):
            raise _start_error(container_id, _message(body))

    async def wait(self, container_id: str, *, timeout_s: float | None = None) -> int:
        """Wait until the container is not running; return its exit code. Without timeout_s it
        waits as long as the job runs; cancel the task to stop waiting."""
        path = f"/containers/{quote(container_id, safe='')}/wait"
        full = await self._prefix() + path
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=self.timeout_s)
        try:
            response = await self._raw(
                "POST", full, params={"condition": "not-running"}, timeout=timeout
            )
            async with response:
                body = await self._read(response, "POST", path, timeout)
        except EngineTimeout as exc:
            raise EngineTimeout(
                f"container {container_id[:12]} was still running after {timeout_s:g} s"
            ) from exc
        if response.status == 404:
            raise ContainerNotFound(f"the container engine has no container {container_id}")
        if response.status != 200:
            raise EngineError(
                f"waiting for container {container_id[:12]} failed "
                f"({response.status}): {_message(body)}"
            )
        return int(json.loads(body)["StatusCode"])

    async def inspect(self, container_id: str) -> dict[str, Any]:
        """The engine's full inspect document of a container."""
        _, body = await self._container_call("GET", container_id, "/json", ok=(200,))
        return cast(dict[str, Any], json.loads(body))

    async def state(self, container_id: str) -> ContainerState:
        state = (await self.inspect(container_id)).get("State") or {}
        return ContainerState(
            status=str(state.get("Status", "")),
            running=bool(state.get("Running")),
            exit_code=int(state.get("ExitCode") or 0),
            oom_killed=bool(state.get("OOMKilled")),
            error=str(state.get("Error") or ""),
            pid=int(state.get("Pid") or 0),
            started_at=str(state.get("StartedAt", "")),
            finished_at=str(state.get("FinishedAt", "")),
        )

    async def stop(self, container_id: str, grace_s: int = 10) -> bool:
        """SIGTERM, then SIGKILL after grace_s. False if it was not running."""
        status, _ = await self._container_call(
            "POST",
            container_id,
            "/stop",
            params={"t": str(int(grace_s))},
            ok=(204, 304),
            timeout_s=grace_s + max(self.timeout_s, 30),
        )
        return status == 204

    async def kill(self, container_id: str, signal: str = "SIGKILL") -> bool:
        """Send a signal to the container's main process. False if it was not running."""
        status, body = await self._container_call(
            "POST", container_id, "/kill", params={"signal": signal}, ok=(204, 409, 500)
        )
        if status == 204:
            return True
        message = _message(body)
        # Docker answers 409 "is not running"; Podman 500 "container state improper".
        if status == 409 or "state improper" in message or "not running" in message:
            return False
        raise EngineError(
            f"signalling container {container_id[:12]} with {signal} failed: {message}"
        )

    async def remove(self, container_id: str, *, force: bool = True) -> None:
        """Delete the container and its anonymous volumes (force: even while running).

        Podman 4.3 may answer 500 "device or resource busy" while its own cleanup of a just
        exited container still holds a mount; that passes within moments, so it is retried."""
        for attempt in range(_REMOVE_TRIES):
            status, body = await self._container_call(
                "DELETE",
                container_id,
                "",
                params={"force": str(force).lower(), "v": "true"},
                ok=(204, 409, 500),
                timeout_s=max(self.timeout_s, 60),
            )
            if status != 500 or "resource busy" not in _message(body):
                break
            log.warning("removing container %s: %s; retrying", container_id[:12], _message(body))
            await asyncio.sleep(0.2 * (attempt + 1))
        if status == 500:
            raise EngineError(f"cannot remove container {container_id[:12]}: {_message(body)}")
        if status == 409:
            raise ContainerConflict(
                f"cannot remove container {container_id[:12]}: {_message(body)}"
            )

    async def logs(
        self,
        container_id: str,
        *,
        since: int | None = None,
        follow: bool = False,
        stdout: bool = True,
        stderr: bool = True,
    ) -> AsyncIterator[tuple[str, bytes]]:
        """The container's output as ("stdout" | "stderr", bytes) chunks, from `since` (unix
        seconds) on. With follow it goes on until the container exits."""
        config = (await self.inspect(container_id)).get("Config") or {}
        params = {
            "stdout": str(stdout).lower(),
            "stderr": str(stderr).lower(),
            "follow": str(follow).lower(),
        }
        if since is not None:
            params["since"] = str(int(since))
        path = f"/containers/{quote(container_id, safe='')}/logs"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout_s, sock_read=None if follow else self.timeout_s
        )
        response = await self._raw(
            "GET", await self._prefix() + path, params=params, timeout=timeout
        )
        async with response:
            if response.status == 404:
                raise ContainerNotFound(f"the container engine has no container {container_id}")
            if response.status != 200:
                raise EngineError(
                    f"reading the logs of container {container_id[:12]} failed "
                    f"({response.status}): {_message(await response.read())}"
                )
            try:
                if config.get("Tty"):
                    async for chunk in response.content.iter_any():
                        yield "stdout", chunk
                else:
                    async for frame in demultiplex(response.content):
                        yield frame
            except aiohttp.ClientError as exc:
                raise EngineUnavailable(
                    f"the log stream of container {container_id[:12]} broke off: {exc}"
                ) from exc
            except TimeoutError as exc:
                raise EngineTimeout(
                    f"the log stream of container {container_id[:12]} stalled"
                ) from exc

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[dict[str, Any]]:
        """Every container (running or not) carrying all of these labels, as the engine's
        summaries (keys Id, Names, Image, State, Status, Labels)."""
        filters = {"label": [f"{key}={value}" for key, value in (labels or {}).items()]}
        _, body = await self._call(
            "GET", "/containers/json", params={"all": "true", "filters": json.dumps(filters)}
        )
        return cast(builtins.list[dict[str, Any]], json.loads(body))


async def follow_pull(
    ref: str,
    lines: AsyncIterable[bytes],
    max_bytes: int | None,
    progress: Callable[[str], object] | None,
) -> None:
    """Read a pull's progress lines (JSON, one per line) until the engine ends them; raise on
    an error line or once the layer sizes seen add up to more than max_bytes."""
    sizes: dict[str, int] = {}
    async for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("error") or event.get("errorDetail"):
            detail = event.get("errorDetail") or {}
            raise _pull_error(ref, str(event.get("error") or detail.get("message")))
        layer = str(event.get("id") or "")
        detail = event.get("progressDetail") or {}
        seen = max(int(detail.get("total") or 0), int(detail.get("current") or 0))
        if layer and seen:
            sizes[layer] = max(sizes.get(layer, 0), seen)
        if max_bytes is not None and sum(sizes.values()) > max_bytes:
            raise ImageTooLarge(
                f"pulling image {ref} stopped: its layers exceed the limit of {max_bytes} bytes"
            )
        if progress is not None:
            words = [layer, str(event.get("status") or ""), str(event.get("progress") or "")]
            progress(" ".join(word for word in words if word))


_STREAMS = {0: "stdin", 1: "stdout", 2: "stderr", 3: "system"}


class _Reader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


async def demultiplex(content: _Reader) -> AsyncIterator[tuple[str, bytes]]:
    """Docker's multiplexed stream: frames of an 8-byte header (stream, 0, 0, 0, big-endian
    uint32 size) and a payload. A stream ending between frames is a clean end."""
    while True:
        try:
            header = await content.readexactly(8)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise EngineError("a container log stream ended inside a frame header") from exc
            return
        kind, size = header[0], struct.unpack(">I", header[4:])[0]
        if kind not in _STREAMS or header[1:4] != b"\0\0\0" or size > _MAX_LOG_FRAME:
            raise EngineError(f"a container log stream has a malformed frame header {header!r}")
        try:
            payload = await content.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise EngineError("a container log stream ended inside a frame") from exc
        yield _STREAMS[kind], payload
