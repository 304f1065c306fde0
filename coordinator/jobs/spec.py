"""What an enterprise may ask for: a job's spec, validated field by field."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from coordinator.errors import Unprocessable
from shared.money import usage_amount

MAX_GPUS = 64
MAX_COMMAND_ITEMS = 256
MAX_COMMAND_BYTES = 64 * 1024
MAX_ENV = 128
MAX_ENV_VALUE = 4096
MAX_DURATION_S = 30 * 86_400
MAX_PRICE = 10**12
MAX_MODELS = 16
MAX_KEY = 128
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
REDACTED = "<redacted>"

SPEC_FIELDS = {
    "image": "container image reference, e.g. registry.example/team/train:1.4",
    "command": "command and arguments, a list of strings (empty: the image's default)",
    "env": "environment variables, a map of name to string",
    "secret_env": "secret environment variables, a map of name to string: delivered only to "
    "the winning agent, never shown back (the name is, with a redacted value), "
    "never logged, erased when the job ends",
    "gpus": "number of GPUs, 1 to 64",
    "min_gpu_memory_bytes": "least memory each GPU must have",
    "gpu_models": 'GPU models allowed (empty: any), e.g. ["H100"]',
    "cpus_milli": "CPU limit in thousandths of a core (default 4000 per GPU)",
    "memory_bytes": "memory limit for the container (default 16 GiB per GPU)",
    "max_duration_s": "longest the job may run, in seconds",
    "max_price_per_gpu_hour_micro_yuan": "most the job pays per GPU-hour, in micro-yuan",
}


@dataclass(frozen=True)
class JobRequest:
    image: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    gpus: int
    min_gpu_memory_bytes: int
    gpu_models: tuple[str, ...]
    cpus_milli: int
    memory_bytes: int
    max_duration_s: int
    max_price_per_gpu_hour: int
    # only the names: the values live apart (job_secrets) until the job ends
    secret_env_names: tuple[str, ...] = ()

    def to_json(self, env_values: bool = True) -> dict[str, Any]:
        """The spec as JSON; secret values are never in it, and `env_values=False` (for an
        auditor) redacts the plain env values too."""
        return {
            "image": self.image,
            "command": list(self.command),
            "env": {name: value if env_values else REDACTED for name, value in self.env},
            "secret_env": {name: REDACTED for name in self.secret_env_names},
            "gpus": self.gpus,
            "min_gpu_memory_bytes": self.min_gpu_memory_bytes,
            "gpu_models": list(self.gpu_models),
            "cpus_milli": self.cpus_milli,
            "memory_bytes": self.memory_bytes,
            "max_duration_s": self.max_duration_s,
            "max_price_per_gpu_hour_micro_yuan": self.max_price_per_gpu_hour,
        }

    @property
    def max_cost_micro_yuan(self) -> int:
        """The most the job can cost: all its GPUs for its whole duration at its maximum price."""
        return usage_amount(self.gpus * self.max_duration_s * 1000, self.max_price_per_gpu_hour)


def _is_text(value: object, max_length: int) -> bool:
    """A string that UTF-8 can carry (JSON can smuggle in a lone surrogate such as \\ud800)."""
    if type(value) is not str or len(value) > max_length or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int_field(
    body: dict[str, Any], name: str, low: int, high: int, default: int | None = None
) -> int:
    value = body.get(name, default)
    if type(value) is not int or not low <= value <= high:
        raise Unprocessable(f"{name} must be an integer from {low} to {high}", code="invalid_job")
    return value


def parse_job_request(body: object) -> JobRequest:
    """Validate an enterprise's job JSON; every refusal names the field and the rule."""
    if not isinstance(body, dict):
        raise Unprocessable("the job must be a JSON object", code="invalid_job")
    unknown = set(body) - set(SPEC_FIELDS) - {"idempotency_key"}
    if unknown:
        raise Unprocessable(f"unknown job fields: {', '.join(sorted(unknown))}", code="invalid_job")
    image = body.get("image")
    if type(image) is not str or not _IMAGE.fullmatch(image):
        raise Unprocessable(
            "image must be an image reference of 1 to 255 characters without spaces",
            code="invalid_job",
        )
    command = body.get("command", [])
    if (
        type(command) is not list
        or len(command) > MAX_COMMAND_ITEMS
        or not all(_is_text(part, MAX_COMMAND_BYTES) for part in command)
    ):
        raise Unprocessable(
            f"command must be a list of at most {MAX_COMMAND_ITEMS} strings "
            "of valid Unicode without NUL characters",
            code="invalid_job",
        )
    if sum(len(part.encode()) for part in command) > MAX_COMMAND_BYTES:
        raise Unprocessable(f"command is longer than {MAX_COMMAND_BYTES} bytes", code="invalid_job")
    env = _env_field(body, "env")
    secret_env = _env_field(body, "secret_env")
    both = sorted(set(env) & set(secret_env))
    if both:
        raise Unprocessable(
            f"secret_env names {', '.join(both)}, which env also has; give each variable once",
            code="invalid_job",
        )
    if len(env) + len(secret_env) > MAX_ENV:
        raise Unprocessable(
            f"env and secret_env hold at most {MAX_ENV} variables together", code="invalid_job"
        )
    gpus = _int_field(body, "gpus", 1, MAX_GPUS)
    models = body.get("gpu_models", [])
    if (
        type(models) is not list
        or len(models) > MAX_MODELS
        or any(not _is_text(m, 128) or not m for m in models)
    ):
        raise Unprocessable(
            f"gpu_models must be a list of at most {MAX_MODELS} model names", code="invalid_job"
        )
    return JobRequest(
        image=image,
        command=tuple(command),
        env=tuple(sorted(env.items())),
        gpus=gpus,
        min_gpu_memory_bytes=_int_field(body, "min_gpu_memory_bytes", 0, 1 << 50, 0),
        gpu_models=tuple(models),
        cpus_milli=_int_field(body, "cpus_milli", 100, 1024 * 1000, 4000 * gpus),
        memory_bytes=_int_field(body, "memory_bytes", 64 << 20, 1 << 44, gpus * (16 << 30)),
        max_duration_s=_int_field(body, "max_duration_s", 1, MAX_DURATION_S),
        max_price_per_gpu_hour=_int_field(body, "max_price_per_gpu_hour_micro_yuan", 1, MAX_PRICE),
        secret_env_names=tuple(sorted(secret_env)),
    )


def _env_field(body: dict[str, Any], field_name: str) -> dict[str, str]:
    env = body.get(field_name, {})
    if type(env) is not dict or len(env) > MAX_ENV:
        raise Unprocessable(
            f"{field_name} must be a map of at most {MAX_ENV} variables", code="invalid_job"
        )
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise Unprocessable(
                f"{field_name} name {name!r} must be letters, digits and _ and not "
                "start with a digit",
                code="invalid_job",
            )
        if not _is_text(value, MAX_ENV_VALUE):
            raise Unprocessable(
                f"{field_name} {name} must be a string of at most {MAX_ENV_VALUE} "
                "characters of valid Unicode without NUL",
                code="invalid_job",
            )
    return dict(env)


def secret_env_values(body: object) -> dict[str, str]:
    """The secret env values of a job body that parse_job_request accepted."""
    if not isinstance(body, dict):
        return {}
    return _env_field(body, "secret_env")
