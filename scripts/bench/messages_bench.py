"""Benchmark: decode and validate a heartbeat (msgpack) and a job submission (JSON) with the
msgspec types of shared/messages, against pydantic models with the same fields and bounds.

pydantic reads no msgpack: its heartbeat is parsed by msgspec's untyped decoder first (the
fastest parser at hand, so the comparison favours pydantic). pydantic is not a dependency:
install it into .venv to compare (`.venv/bin/pip install pydantic`); without it only the
msgspec figures are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared import canonical
from shared.messages import agent_protocol, api
from shared.messages import convert as convert_body

GIB = 1 << 30


def heartbeat_body(gpus: int = 8) -> dict[str, Any]:
    """A heartbeat as the agent's daemon sends it: NVML records and the psutil host."""
    return {
        "ask_per_gpu_hour": 15_000_000,
        "inventory": {
            "gpus": [
                {
                    "index": i,
                    "uuid": f"GPU-{i:08x}-1111-2222-3333-444455556666",
                    "name": "NVIDIA H100 80GB HBM3",
                    "memory_total_bytes": 80 * GIB,
                    "memory_used_bytes": 71 * GIB,
                    "utilization_gpu_pct": 97,
                    "temperature_c": 64,
                    "power_mw": 612_000,
                    "energy_mj": 9_876_543_210,
                    "tflops_bf16_milli": 989_000,
                    "power_limit_mw": 700_000,
                    "healthy": True,
                    "health_reason": None,
                    "ecc_uncorrected": 0,
                    "retired_pages_pending": False,
                }
                for i in range(gpus)
            ],
            "host": {
                "hostname": "gpu-node-17",
                "cpu_count": 192,
                "cpu_percent": 35,
                "memory_total_bytes": 2048 * GIB,
                "memory_available_bytes": 1500 * GIB,
                "disk_path": "/",
                "disk_total_bytes": 8192 * GIB,
                "disk_free_bytes": 6000 * GIB,
            },
            "driver_version": "550.54.15",
        },
    }


JOB = {
    "image": "registry.example/team/train:1.4",
    "command": ["python", "train.py", "--epochs", "3", "--lr", "0.0003"],
    "env": {"WANDB_MODE": "offline", "OMP_NUM_THREADS": "8", "DATA": "/data/shards"},
    "secret_env": {"HF_TOKEN": "hf_" + "x" * 34},
    "gpus": 8,
    "gpu_models": ["H100", "H200"],
    "min_gpu_memory_bytes": 80 * GIB,
    "max_duration_s": 7200,
    "max_price_per_gpu_hour_micro_yuan": 20_000_000,
    "idempotency_key": "cli-Zm9vYmFyYmF6cXV4cXV1eA",
}


def _rate(count: int, run: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(count):
        run()
    return count / (time.perf_counter() - start)


def _best(count: int, rounds: int, run: Callable[[], object]) -> float:
    return max(_rate(count, run) for _ in range(rounds))


def pydantic_models() -> tuple[Any, Any] | None:
    """The same heartbeat and job as pydantic (strict) models, or None without pydantic."""
    try:
        from pydantic import (
            BaseModel,
            ConfigDict,
            Field,
            StringConstraints,
            field_validator,
            model_validator,
        )
    except ImportError:
        return None
    text = Field(min_length=1, max_length=128)
    count = Field(ge=0, le=2**63 - 1)

    class GpuReport(BaseModel):
        model_config = ConfigDict(strict=True)
        index: int = Field(ge=0, le=256)
        uuid: str = text
        name: str = text
        memory_total_bytes: int = Field(ge=1, le=2**63 - 1)
        memory_used_bytes: int | None = Field(default=None, ge=0, le=2**63 - 1)
        utilization_gpu_pct: int | None = Field(default=None, ge=0, le=100)
        temperature_c: int | None = Field(default=None, ge=-100, le=200)
        power_mw: int | None = count
        power_limit_mw: int | None = count
        energy_mj: int | None = count
        healthy: bool = True
        health_reason: str | None = Field(default=None, min_length=1, max_length=128)

        @field_validator("uuid", "name", "health_reason")
        @classmethod
        def printable(cls, value: str | None) -> str | None:
            if value is not None and not value.isprintable():
                raise ValueError("must be printable")
            return value

    class HostReport(BaseModel):
        model_config = ConfigDict(strict=True)
        cpu_count: int = Field(ge=1, le=1 << 16)
        memory_total_bytes: int = Field(ge=1, le=2**63 - 1)
        memory_available_bytes: int | None = count
        disk_free_bytes: int | None = count

    class Inventory(BaseModel):
        model_config = ConfigDict(strict=True)
        gpus: list[GpuReport] = Field(max_length=64)
        host: HostReport
        driver_version: str | None = Field(default=None, min_length=1, max_length=128)

        @model_validator(mode="after")
        def unique(self) -> Inventory:
            if len({gpu.uuid for gpu in self.gpus}) != len(self.gpus):
                raise ValueError("a GPU UUID twice")
            return self

    class Heartbeat(BaseModel):
        model_config = ConfigDict(strict=True)
        inventory: Inventory
        ask_per_gpu_hour: int | None = Field(default=None, ge=0, le=10**12)

    # the same per-string rules as shared.messages.api (pydantic's regex engine has no
    # surrogate ranges: strict str already refuses what UTF-8 cannot carry)
    env_name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
    env_value = Annotated[str, StringConstraints(max_length=4096, pattern=r"^[^\x00]*$")]
    command_part = Annotated[str, StringConstraints(max_length=65536, pattern=r"^[^\x00]*$")]
    model_name = Annotated[
        str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00]*$")
    ]

    class JobSubmit(BaseModel):
        model_config = ConfigDict(strict=True, extra="forbid")
        image: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
        gpus: int = Field(ge=1, le=64)
        max_duration_s: int = Field(ge=1, le=30 * 86_400)
        max_price_per_gpu_hour_micro_yuan: int = Field(ge=1, le=10**12)
        command: list[command_part] = Field(default_factory=list, max_length=256)
        env: dict[env_name, env_value] = Field(default_factory=dict, max_length=128)
        secret_env: dict[env_name, env_value] = Field(default_factory=dict, max_length=128)
        min_gpu_memory_bytes: int = Field(default=0, ge=0, le=1 << 50)
        gpu_models: list[model_name] = Field(default_factory=list, max_length=16)
        cpus_milli: int | None = Field(default=None, ge=100, le=1024 * 1000)
        memory_bytes: int | None = Field(default=None, ge=64 << 20, le=1 << 44)
        idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)

        @model_validator(mode="after")
        def across(self) -> JobSubmit:
            if sum(len(part.encode()) for part in self.command) > 65536:
                raise ValueError("command too long")
            if set(self.env) & set(self.secret_env):
                raise ValueError("env and secret_env overlap")
            if len(self.env) + len(self.secret_env) > 128:
                raise ValueError("too many variables")
            if self.idempotency_key is not None and not self.idempotency_key.isprintable():
                raise ValueError("idempotency_key must be printable")
            return self

    return Heartbeat, JobSubmit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2,000 bodies a round")
    args = parser.parse_args()
    count = 2_000 if args.quick else args.count
    beat = heartbeat_body()
    beat_raw = canonical.encode(beat)
    job_raw = json.dumps(JOB).encode()
    heartbeat_decoder = msgspec.msgpack.Decoder(agent_protocol.Heartbeat)
    job_decoder = msgspec.json.Decoder(api.JobSubmit)
    figures = {
        "heartbeat msgpack bytes": _best(
            count, args.rounds, lambda: heartbeat_decoder.decode(beat_raw)
        ),
        "heartbeat opened body": _best(
            count, args.rounds, lambda: convert_body(agent_protocol.Heartbeat, beat)
        ),
        "job submit JSON bytes": _best(count, args.rounds, lambda: job_decoder.decode(job_raw)),
    }
    models = pydantic_models()
    print(
        f"bodies             {count} × {args.rounds} rounds; heartbeat {len(beat_raw)} bytes "
        f"(8 GPUs), job {len(job_raw)} bytes"
    )
    if models is None:
        for name, rate in figures.items():
            print(f"{name:24} msgspec {rate:10,.0f}/s   (pydantic not installed)")
        return
    heartbeat_model, job_model = models
    heartbeat_model.model_validate(msgspec.msgpack.decode(beat_raw))  # same bodies accepted
    job_model.model_validate_json(job_raw)
    rivals = {
        "heartbeat msgpack bytes": lambda: heartbeat_model.model_validate(
            msgspec.msgpack.decode(beat_raw)
        ),
        "heartbeat opened body": lambda: heartbeat_model.model_validate(beat),
        "job submit JSON bytes": lambda: job_model.model_validate_json(job_raw),
    }
    for name, rate in figures.items():
        rival = _best(count, args.rounds, rivals[name])
        print(
            f"{name:24} msgspec {rate:10,.0f}/s   pydantic {rival:10,.0f}/s   "
            f"ratio {rate / rival:6.2f}×"
        )


if __name__ == "__main__":
    main()
