"""The container engine's failures, each a one-sentence `EngineError` with its own code."""

from __future__ import annotations

import json
import re

from shared.errors import SuanliError


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


class RegistryAuthRefused(ImagePullFailed):
    """The image's registry refused the credentials the job gave for it."""

    code = "registry_auth_refused"


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


def engine_message(body: bytes) -> str:
    """The engine's own words in an answer's body (JSON `message` or `cause`, else the text)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip() or "no message"
    if isinstance(data, dict):
        return str(data.get("message") or data.get("cause") or data).strip()
    return str(data)


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


def pull_error(ref: str, message: str) -> EngineError:
    if any(word in message.lower() for word in _NOT_FOUND_WORDS):
        return ImageNotFound(f"image {ref} was not found in its registry: {message}")
    return ImagePullFailed(f"pulling image {ref} failed: {message}")


# what a registry answers to wrong credentials, as Docker and Podman pass it on
_AUTH_REFUSED = re.compile(r"\b(unauthorized|denied|authentication required)\b.*", re.I | re.S)


def auth_refusal(ref: str, host: str, message: str) -> RegistryAuthRefused | None:
    """The refusal of a pull made with credentials, in the registry's own words (the part of the
    engine's message the registry wrote, which names neither the password nor the provider's
    network); None when the failure was something else."""
    found = _AUTH_REFUSED.search(message)
    if found is None:
        return None
    words = found.group(0).strip()[:300]
    return RegistryAuthRefused(
        f"registry {host} refused the credentials given for image {ref}: {words}"
    )


def start_error(container_id: str, message: str) -> EngineError:
    if any(word in message.lower() for word in _GPU_START_WORDS):
        return GpuPinningFailed(f"container {container_id[:12]} could not get its GPUs: {message}")
    return ContainerStartFailed(f"container {container_id[:12]} could not start: {message}")
