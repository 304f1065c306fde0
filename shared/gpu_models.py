"""GPU models: canonical names from NVML's board names, and dense BF16 TFLOPS per model.

Figures are dense (no sparsity) BF16 tensor throughput from the vendors' datasheets, in
milli-TFLOPS so that pool totals stay integers. Unknown boards keep their NVML name and
have no TFLOPS; they are never dropped. Both the agent (inventory) and the coordinator
(model filters, pool size in PFLOPS) use this one table.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from shared.errors import SuanliError

__all__ = [
    "GpuModelError",
    "canonical_model",
    "expand_model_filter",
    "known_models",
    "normalise_name",
    "tflops_bf16_milli",
    "tflops_display",
]


class GpuModelError(SuanliError):
    """A GPU model filter is malformed."""

    code = "bad_gpu_model"


@dataclass(frozen=True, slots=True)
class _Model:
    name: str  # canonical, what the coordinator stores and filters on
    family: str  # what a person may type to mean every variant
    tflops_bf16_milli: int | None  # None: no BF16 tensor cores
    pattern: re.Pattern[str]  # over normalise_name's output


def _model(name: str, family: str, milli: int | None, pattern: str) -> _Model:
    return _Model(name, family, milli, re.compile(pattern))


# Sources: NVIDIA's datasheet for each model (H100/H200/GH200/H20/H800, A100/A800/A10/A30/A40,
# L40S/L40/L20/L4, DGX/HGX B200, GB200 NVL72).
# First match wins, so a variant comes before the family name it contains ("H100 NVL"
# before "H100"); a variant's words may have others between them ("H100 80GB PCIe").
# Patterns match whole words, so "A10" is not "A10G" (another board, not in the table),
# "H20" is not "H200" and "B200" is not "GB200".
_MODELS: tuple[_Model, ...] = (
    _model("GB200", "GB200", 2_500_000, r"\bGB200\b"),
    _model("B200", "B200", 2_250_000, r"\bB200\b"),
    _model("GH200", "GH200", 989_000, r"\bGH200\b"),
    _model("H200 NVL", "H200", 835_000, r"\bH200\b.*\bNVL\b"),
    _model("H200", "H200", 989_000, r"\bH200\b"),
    _model("H100 NVL", "H100", 835_000, r"\bH100\b.*\bNVL\b"),
    _model("H100 PCIe", "H100", 756_000, r"\bH100\b.*\bPCIE\b"),
    _model("H100 SXM", "H100", 989_000, r"\bH100\b"),
    _model("H800 PCIe", "H800", 756_000, r"\bH800\b.*\bPCIE\b"),
    _model("H800", "H800", 989_000, r"\bH800\b"),
    _model("H20", "H20", 148_000, r"\bH20\b"),
    _model("A100", "A100", 312_000, r"\bA100\b"),
    _model("A800", "A800", 312_000, r"\bA800\b"),
    _model("L40S", "L40S", 362_000, r"\bL40S\b"),
    _model("L40", "L40", 181_000, r"\bL40\b"),
    _model("L20", "L20", 119_500, r"\bL20\b"),
    _model("L4", "L4", 121_000, r"\bL4\b"),
    _model("A40", "A40", 149_700, r"\bA40\b"),
    _model("A30", "A30", 165_000, r"\bA30\b"),
    _model("A10", "A10", 125_000, r"\bA10\b"),
    # Ada whitepaper / RTX 6000 Ada datasheet: dense FP16/BF16 tensor with FP32 accumulate.
    _model("RTX 6000 Ada", "RTX 6000 Ada", 364_200, r"\bRTX 6000 ADA\b"),
    # Only the desktop board: "RTX 4090 D" and the laptop "RTX 4090" are other chips.
    _model("RTX 4090", "RTX 4090", 165_200, r"\bRTX 4090$"),
    _model("V100", "V100", None, r"\bV100S?\b"),
)
_BY_NAME = {model.name: model for model in _MODELS}
_WORD = re.compile(r"[A-Z0-9]+")


def normalise_name(name: str) -> str:
    """Upper case, with '-' and '_' as spaces and runs of spaces collapsed.

    NVML spells one family many ways: "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe",
    "Tesla V100-SXM2-32GB".
    """
    return " ".join(re.sub(r"[-_]", " ", name).upper().split())


def _lookup(board_name: str) -> _Model | None:
    normalised = normalise_name(board_name)
    for model in _MODELS:
        if model.pattern.search(normalised):
            return model
    return None


@functools.lru_cache(maxsize=1024)
def canonical_model(board_name: str) -> str:
    """The canonical model of an NVML board name ("NVIDIA H100 80GB HBM3" → "H100 SXM").

    A board the table does not know keeps its name, without surrounding spaces.
    """
    model = _lookup(board_name)
    return board_name.strip() if model is None else model.name


def tflops_bf16_milli(model: str) -> int | None:
    """Dense BF16 milli-TFLOPS of a canonical model or board name; None when unknown."""
    known = _BY_NAME.get(model) or _lookup(model)
    return None if known is None else known.tflops_bf16_milli


def tflops_display(milli: int | None) -> int | float | None:
    """milli-TFLOPS as a number for people and display JSON: 989000 → 989, 149700 → 149.7."""
    if milli is None:
        return None
    if milli % 1000 == 0:
        return milli // 1000
    return round(milli / 1000, 1)


def known_models() -> list[str]:
    return [model.name for model in _MODELS]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.upper())


def expand_model_filter(requested: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Turn what a person typed ("h100", "H100 PCIe", "A100") into canonical model names.

    A family name means all its variants, unless it is also a model's own name ("H200",
    "H800"), which then means that model. A name the table does not know is kept as typed,
    so boards the table lacks can still be asked for by their exact NVML name.
    """
    out: list[str] = []
    for text in requested:
        if type(text) is not str or not 0 < len(text.strip()) <= 128:
            raise GpuModelError("a GPU model is a name of 1 to 128 characters")
        words = [w for w in _words(text) if w != "NVIDIA"]
        family = [model.name for model in _MODELS if _words(model.family) == words]
        exact = [model.name for model in _MODELS if _words(model.name) == words]
        for name in exact or family or [text.strip()]:
            if name not in out:
                out.append(name)
    return tuple(sorted(out))
