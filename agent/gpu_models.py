"""Dense BF16 throughput of known GPU models, so capacity can be counted in TFLOPS and "P".

Values are peak dense tensor-core BF16 (no structured sparsity), in milli-TFLOPS so
they stay integers. A model that is not in the table is still a GPU: it is reported
with its throughput unknown (None), never dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MODELS", "GpuModel", "lookup", "normalise_name", "tflops_bf16_milli", "tflops_display"]


@dataclass(frozen=True, slots=True)
class GpuModel:
    """One row of the table: a pattern over normalised NVML names and its throughput."""

    model: str
    pattern: re.Pattern[str]
    tflops_bf16_milli: int | None  # None: the model has no BF16 tensor cores


def _model(model: str, pattern: str, tflops_milli: int | None) -> GpuModel:
    return GpuModel(model, re.compile(pattern), tflops_milli)


# Sources: NVIDIA datasheets for each model (H100/H200/H20/H800, A100/A800/A10/A30/A40,
# L40S/L40/L20/L4, RTX 4090 (FP16 with FP32 accumulate), RTX 6000 Ada, DGX/HGX B200, GB200 NVL72).
# First match wins, so a variant comes before the family name it contains ("H100 NVL"
# before "H100"). Patterns match whole words of the name normalised by normalise_name:
# "A10" does not match "A10G" (a different board, not in the table), "H20" not "H200".
MODELS: tuple[GpuModel, ...] = (
    _model("GB200", r"\bGB200\b", 2_500_000),
    _model("B200", r"\bB200\b", 2_250_000),
    _model("GH200", r"\bGH200\b", 989_000),
    _model("H200 NVL", r"\bH200 NVL\b", 835_000),
    _model("H200", r"\bH200\b", 989_000),
    _model("H100 NVL", r"\bH100 NVL\b", 835_000),
    _model("H100 PCIe", r"\bH100 PCIE\b", 756_000),
    _model("H100 SXM", r"\bH100\b", 989_000),
    _model("H800 PCIe", r"\bH800 PCIE\b", 756_000),
    _model("H800", r"\bH800\b", 989_000),
    _model("H20", r"\bH20\b", 148_000),
    _model("A100", r"\bA100\b", 312_000),
    _model("A800", r"\bA800\b", 312_000),
    _model("A10", r"\bA10\b", 125_000),
    _model("A30", r"\bA30\b", 165_000),
    _model("A40", r"\bA40\b", 149_700),
    _model("L40S", r"\bL40S\b", 362_000),
    _model("L40", r"\bL40\b", 181_000),
    _model("L20", r"\bL20\b", 119_500),
    _model("L4", r"\bL4\b", 121_000),
    # Only the desktop board: "RTX 4090 D" and the laptop "RTX 4090" are other chips.
    _model("RTX 4090", r"\bRTX 4090$", 165_000),
    _model("RTX 6000 Ada", r"\bRTX 6000 ADA\b", 364_000),
    _model("V100", r"\bV100S?\b", None),
)


def normalise_name(name: str) -> str:
    """Upper case, with '-' and '_' as spaces and runs of spaces collapsed.

    NVML spells the same family many ways: "NVIDIA A100-SXM4-80GB",
    "NVIDIA A100 80GB PCIe", "Tesla V100-SXM2-32GB".
    """
    return " ".join(re.sub(r"[-_]", " ", name).upper().split())


def lookup(name: str) -> GpuModel | None:
    """The table row for an NVML device name, or None for a model not in the table."""
    normalised = normalise_name(name)
    for model in MODELS:
        if model.pattern.search(normalised):
            return model
    return None


def tflops_bf16_milli(name: str) -> int | None:
    """Dense BF16 milli-TFLOPS of the named GPU, or None when unknown or not applicable."""
    model = lookup(name)
    return None if model is None else model.tflops_bf16_milli


def tflops_display(milli: int | None) -> int | float | None:
    """milli-TFLOPS as a number for people and display JSON: 989000 -> 989, 149700 -> 149.7."""
    if milli is None:
        return None
    if milli % 1000 == 0:
        return milli // 1000
    return round(milli / 1000, 1)
