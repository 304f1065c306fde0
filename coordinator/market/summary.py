"""The market's capacity report: GPUs by model (free, leased, unavailable), asks and compute."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from coordinator.market.agents import Agent
from shared.gpu_models import tflops_bf16_milli, tflops_display


def summary(agents: Iterable[Agent]) -> dict[str, Any]:
    """What `GET /v1/market` shows: each model's counts and asks, and the fleet's PFLOPS."""
    agents = list(agents)
    by_model: dict[str, dict[str, Any]] = {}
    total_milli = 0
    for agent in agents:
        for gpu in agent.gpus.values():
            if gpu.claimed_from is not None or agent.revoked:
                continue  # another agent's GPU, or no longer in the market
            row = by_model.setdefault(
                gpu.model,
                {
                    "model": gpu.model,
                    "gpus": 0,
                    "free": 0,
                    "leased": 0,
                    "unavailable": 0,
                    "memory_total_bytes": gpu.memory_total_bytes,
                    "asks": [],
                    "tflops_bf16_each": tflops_display(tflops_bf16_milli(gpu.model)),
                },
            )
            row["gpus"] += 1
            usable = agent.online and gpu.healthy and gpu.flag is None
            if gpu.lease_id is not None:
                row["leased"] += 1
            elif usable:
                row["free"] += 1
                if agent.ask_per_gpu_hour is not None:
                    row["asks"].append(agent.ask_per_gpu_hour)
            else:
                row["unavailable"] += 1
            if usable or gpu.lease_id is not None:
                total_milli += tflops_bf16_milli(gpu.model) or 0
    models = []
    for row in sorted(by_model.values(), key=lambda r: r["model"]):
        asks = sorted(row.pop("asks"))
        row["ask_min_micro_yuan"] = asks[0] if asks else None
        row["ask_median_micro_yuan"] = asks[len(asks) // 2] if asks else None
        row["ask_max_micro_yuan"] = asks[-1] if asks else None
        models.append(row)
    return {
        "agents_online": sum(1 for a in agents if a.online),
        "agents_total": sum(1 for a in agents if not a.revoked),
        "models": models,
        "pflops_bf16_milli": total_milli // 1000,
        "pflops_bf16": f"{total_milli // 1_000_000}.{total_milli // 1000 % 1000:03d}",
    }
