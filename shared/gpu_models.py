"""GPU models: canonical names from NVML's board names, and dense BF16 TFLOPS per model.

Figures are dense (no sparsity) BF16 tensor throughput from the vendors' datasheets, in
milli-TFLOPS so that pool totals stay integers. Unknown boards keep their NVML name and
have no TFLOPS; they are never dropped. Both the agent (inventory) and the coordinator
(model filters, pool size in PFLOPS) use this one table.
"""

from __future__ import annotations

import re

from shared.errors import SuanliError


class GpuModelError(SuanliError):
    """A GPU model filter is malformed."""

    code = "bad_gpu_model"


# (canonical name, family, dense BF16 milli-TFLOPS or None, tokens that must all appear)
# Order matters: the first row whose tokens all appear in the board name wins.
_MODELS: list[tuple[str, str, int | None, tuple[str, ...]]] = [
    ("GB200", "GB200", 2_500_000, ("GB200",)),
    ("B200", "B200", 2_250_000, ("B200",)),
    ("H200", "H200", 989_000, ("H200",)),
    ("H100 NVL", "H100", 835_000, ("H100", "NVL")),
    ("H100 PCIe", "H100", 756_000, ("H100", "PCIE")),
    ("H100 SXM", "H100", 989_000, ("H100",)),
    ("H800 PCIe", "H800", 756_000, ("H800", "PCIE")),
    ("H800", "H800", 989_000, ("H800",)),
    ("H20", "H20", 148_000, ("H20",)),
    ("A100", "A100", 312_000, ("A100",)),
    ("A800", "A800", 312_000, ("A800",)),
    ("L40S", "L40S", 362_000, ("L40S",)),
    ("L40", "L40", 181_000, ("L40",)),
    ("L20", "L20", 119_500, ("L20",)),
    ("L4", "L4", 121_000, ("L4",)),
    ("A40", "A40", 149_700, ("A40",)),
    ("A30", "A30", 165_000, ("A30",)),
    ("A10", "A10", 125_000, ("A10",)),
    ("RTX 6000 Ada", "RTX 6000 Ada", 364_200, ("RTX", "6000", "ADA")),
    ("RTX 4090", "RTX 4090", 165_200, ("RTX", "4090")),
    ("V100", "V100", None, ("V100",)),
]
_BY_NAME = {name: (family, milli) for name, family, milli, _ in _MODELS}
_WORD = re.compile(r"[A-Z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.upper())


def _matches(words: list[str], tokens: tuple[str, ...]) -> bool:
    # whole words only: "A100-SXM4-80GB" gives A100, SXM4, 80GB, so "A10" does not match it
    return all(token in words for token in tokens)


def canonical_model(board_name: str) -> str:
    """The canonical model of an NVML board name ("NVIDIA H100 80GB HBM3" → "H100 SXM")."""
    words = _words(board_name)
    for name, _family, _milli, tokens in _MODELS:
        if _matches(words, tokens):
            return name
    return board_name.strip()


def tflops_bf16_milli(model: str) -> int | None:
    """Dense BF16 milli-TFLOPS of a canonical model or board name; None when unknown."""
    known = _BY_NAME.get(model)
    if known is None:
        known = _BY_NAME.get(canonical_model(model))
    return None if known is None else known[1]


def known_models() -> list[str]:
    return [name for name, *_ in _MODELS]


def expand_model_filter(requested: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Turn what a person typed ("h100", "H100 PCIe", "A100") into canonical model names.

    A family name means all its variants. A name the table does not know is kept as typed,
    so boards the table lacks can still be asked for by their exact NVML name.
    """
    out: list[str] = []
    for text in requested:
        if type(text) is not str or not 0 < len(text.strip()) <= 128:
            raise GpuModelError("a GPU model is a name of 1 to 128 characters")
        words = [w for w in _words(text) if w != "NVIDIA"]
        family = [name for name, fam, _m, _t in _MODELS if _words(fam) == words]
        exact = [name for name, _f, _m, _t in _MODELS if _words(name) == words]
        for name in exact or family or [text.strip()]:
            if name not in out:
                out.append(name)
    return tuple(sorted(out))
