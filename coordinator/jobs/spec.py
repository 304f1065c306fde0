"""What an enterprise may ask for: a job's spec, as the door decoded it (api.JobSubmit) with the
defaults that depend on its GPU count filled in."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from shared.messages import api, decode_json
from shared.money import usage_amount

REDACTED = "<redacted>"
DEFAULT_CPUS_MILLI_PER_GPU = 4000
DEFAULT_MEMORY_BYTES_PER_GPU = 16 << 30


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
    registry_auth: bool = False  # whether credentials came (they live apart, as secrets do)
    name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    network: str = "none"  # api.JobNetwork
    scratch_bytes: int = 0

    def to_json(self, env_values: bool = True) -> dict[str, Any]:
        """The spec as JSON; secret values are never in it, and `env_values=False` (for an
        auditor) redacts the plain env values too, and shows no name and no labels at all: their
        keys as much as their values may carry business names an audit of money does not need,
        and even whether a job has any would tell something of it."""
        return {
            "image": self.image,
            "command": list(self.command),
            "env": {name: value if env_values else REDACTED for name, value in self.env},
            "secret_env": {name: REDACTED for name in self.secret_env_names},
            "registry_auth": self.registry_auth,
            "gpus": self.gpus,
            "min_gpu_memory_bytes": self.min_gpu_memory_bytes,
            "gpu_models": list(self.gpu_models),
            "cpus_milli": self.cpus_milli,
            "memory_bytes": self.memory_bytes,
            "max_duration_s": self.max_duration_s,
            "max_price_per_gpu_hour_micro_yuan": self.max_price_per_gpu_hour,
            "name": self.name if env_values else None,
            "labels": dict(self.labels) if env_values else {},
            "network": self.network,
            "scratch_bytes": self.scratch_bytes,
        }

    @property
    def max_cost_micro_yuan(self) -> int:
        """The most the job can cost: all its GPUs for its whole duration at its maximum price."""
        return usage_amount(self.gpus * self.max_duration_s * 1000, self.max_price_per_gpu_hour)


def parse_job_request(body: api.JobSubmit) -> JobRequest:
    """The job a submission asks for: cpus_milli and memory_bytes default by GPU count, env
    sorted by name, secret env values left out (they live apart, in `body.secret_env`)."""
    cpus_milli = body.cpus_milli
    memory_bytes = body.memory_bytes
    return JobRequest(
        image=body.image,
        command=tuple(body.command),
        env=tuple(sorted(body.env.items())),
        gpus=body.gpus,
        min_gpu_memory_bytes=body.min_gpu_memory_bytes,
        gpu_models=tuple(body.gpu_models),
        cpus_milli=(
            DEFAULT_CPUS_MILLI_PER_GPU * body.gpus
            if isinstance(cpus_milli, msgspec.UnsetType)
            else cpus_milli
        ),
        memory_bytes=(
            DEFAULT_MEMORY_BYTES_PER_GPU * body.gpus
            if isinstance(memory_bytes, msgspec.UnsetType)
            else memory_bytes
        ),
        max_duration_s=body.max_duration_s,
        max_price_per_gpu_hour=body.max_price_per_gpu_hour_micro_yuan,
        secret_env_names=tuple(sorted(body.secret_env)),
        registry_auth=body.registry_auth is not None,
        name=body.name,
        labels=tuple(sorted(body.labels.items())),
        network=body.network,
        scratch_bytes=body.scratch_bytes,
    )


def load_job_request(spec: str) -> JobRequest:
    """A job's spec as stored (`JobRequest.to_json`), read back as a submission is read."""
    fields = json.loads(spec)
    with_auth = fields.pop("registry_auth", False) is True
    body = decode_json(api.JobSubmit, json.dumps(fields).encode(), code="invalid_job")
    return replace(parse_job_request(body), registry_auth=with_auth)
