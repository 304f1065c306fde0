"""The container engine that runs leased jobs: the Docker Engine API over a unix socket.

One client (`Engine`) serves dockerd and Podman's Docker-compatible service; containers on
Podman are created through Podman's own API. `build_create_body` and
`build_libpod_create_body` are the whole security policy of a job container as pure functions.
"""

from agent.engine.api import API_VERSION_MAX, API_VERSION_MIN
from agent.engine.containers import Engine
from agent.engine.errors import (
    ContainerConflict,
    ContainerNotFound,
    ContainerStartFailed,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    GpuPinningFailed,
    ImageNotFound,
    ImagePullFailed,
    ImageTooLarge,
    InvalidContainerSpec,
    LimitNotEnforced,
    RegistryAuthRefused,
)
from agent.engine.hardening import build_create_body, build_libpod_create_body, unenforced_limits
from agent.engine.info import ContainerState, EngineInfo
from agent.engine.registry_auth import RegistryCredentials
from agent.engine.spec import (
    FALLBACK_USER,
    GPU_MODES,
    LABEL_GPU_MODE,
    LABEL_GPU_UUIDS,
    NETWORKS,
    ContainerSpec,
    cdi_device_name,
)
from agent.engine.streams import demultiplex, follow_pull, split_image_ref

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
    "RegistryAuthRefused",
    "RegistryCredentials",
    "build_create_body",
    "build_libpod_create_body",
    "cdi_device_name",
    "demultiplex",
    "follow_pull",
    "split_image_ref",
    "unenforced_limits",
]
