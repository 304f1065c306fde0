"""The create bodies of a job container, Docker's and Podman's own, and the check of what the
engine says it applied: together the whole security policy of a job as pure functions (no
privilege, every capability dropped, no-new-privileges, CPU/memory/pids limits, no host
mounts, GPUs pinned to the lease)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.engine.spec import EGRESS_SYSCTLS, SCRATCH_MOUNT, ContainerSpec

_CPU_PERIOD_US = 100_000
# Docker rotates its json-file log at max-size and keeps max-file files.
DOCKER_LOG_FILES = 2


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
        "NetworkMode": spec.engine_network,
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
    if spec.network == "egress":
        host["Dns"] = list(spec.dns)
        host["Sysctls"] = dict(EGRESS_SYSCTLS)
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
    if spec.scratch_volume is not None:
        # the source is mounted nodev,nosuid, and a bind mount keeps its source's flags
        host["Mounts"] = [{"Type": "bind", "Source": spec.scratch_volume, "Target": SCRATCH_MOUNT}]
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
        "Env": [f"{key}={value}" for key, value in spec.engine_env().items()],
        "Labels": spec.engine_labels(),
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
        "env": spec.engine_env(),
        "labels": spec.engine_labels(),
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
    if spec.network == "egress":
        body["netns"] = {"nsmode": "bridge"}
        body["Networks"] = {spec.egress_network: {}}
        body["dns_server"] = list(spec.dns)
        body["sysctl"] = dict(EGRESS_SYSCTLS)
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
    if spec.scratch_volume is not None:
        body["mounts"].append(
            {
                "destination": SCRATCH_MOUNT,
                "type": "bind",
                "source": spec.scratch_volume,
                "options": ["rbind", "rw", "nosuid", "nodev"],
            }
        )
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


def numeric_non_root(user: str | None) -> bool:
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
    networks = sorted(((document.get("NetworkSettings") or {}).get("Networks") or {}).keys())
    wanted_networks = [spec.egress_network] if spec.network == "egress" else []
    if spec.network == "egress" and networks != wanted_networks:
        problems.append(f"the network {spec.engine_network} alone (the engine has {networks})")
    if spec.network == "none" and host.get("NetworkMode") not in ("none", None):
        problems.append(f"no network (the engine has {host.get('NetworkMode')})")
    if spec.scratch_volume is not None and not any(
        (mount.get("Destination"), mount.get("Source")) == (SCRATCH_MOUNT, spec.scratch_volume)
        for mount in document.get("Mounts") or []
    ):
        problems.append(f"the scratch volume at {SCRATCH_MOUNT}")
    tmpfs = host.get("Tmpfs") or {}
    for path in spec.tmpfs:
        if f"size={spec.tmpfs[path]}" not in str(tmpfs.get(path, "")).split(","):
            problems.append(f"a tmpfs of {spec.tmpfs[path]} bytes at {path}")
    return problems
