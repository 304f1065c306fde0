"""The one GPU model table: NVML board names to canonical models and dense BF16 TFLOPS, and the
model filters a job may name."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import shared
from shared.gpu_models import (
    GpuModelError,
    canonical_model,
    expand_model_filter,
    known_models,
    normalise_name,
    tflops_bf16_milli,
    tflops_display,
)

H100S = ("H100 NVL", "H100 PCIe", "H100 SXM")


@pytest.mark.parametrize(
    ("board_name", "model", "milli"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989_000),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756_000),
        ("NVIDIA H100 NVL", "H100 NVL", 835_000),
        ("NVIDIA H200", "H200", 989_000),
        ("NVIDIA H200 NVL", "H200 NVL", 835_000),
        ("NVIDIA GH200 480GB", "GH200", 989_000),
        ("NVIDIA H20", "H20", 148_000),
        ("NVIDIA H800", "H800", 989_000),
        ("NVIDIA H800 PCIe", "H800 PCIe", 756_000),
        ("NVIDIA A100-SXM4-80GB", "A100", 312_000),
        ("NVIDIA A100-SXM4-40GB", "A100", 312_000),
        ("NVIDIA A100-PCIE-40GB", "A100", 312_000),
        ("NVIDIA A100 80GB PCIe", "A100", 312_000),
        ("NVIDIA A800-SXM4-80GB", "A800", 312_000),
        ("NVIDIA A800 80GB PCIe", "A800", 312_000),
        ("NVIDIA A10", "A10", 125_000),
        ("NVIDIA A30", "A30", 165_000),
        ("NVIDIA A40", "A40", 149_700),
        ("NVIDIA L40S", "L40S", 362_000),
        ("NVIDIA L40", "L40", 181_000),
        ("NVIDIA L20", "L20", 119_500),
        ("NVIDIA L4", "L4", 121_000),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 165_200),
        ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada", 364_200),
        ("NVIDIA B200", "B200", 2_250_000),
        ("NVIDIA GB200", "GB200", 2_500_000),
        # spelling NVML does not use, but a person or an old driver might
        ("nvidia h100 pcie", "H100 PCIe", 756_000),
        ("NVIDIA_H100_NVL", "H100 NVL", 835_000),
        ("NVIDIA H100 80GB PCIe", "H100 PCIe", 756_000),
        ("  NVIDIA   L40S ", "L40S", 362_000),
    ],
)
def test_board_names_map_to_their_model_and_dense_bf16_tflops(
    board_name: str, model: str, milli: int
) -> None:
    assert canonical_model(board_name) == model
    assert tflops_bf16_milli(board_name) == milli
    assert tflops_bf16_milli(model) == milli


@pytest.mark.parametrize(
    "board_name",
    [
        "NVIDIA A10G",  # a different board from the A10
        "NVIDIA GeForce RTX 4090 D",  # a cut-down chip for China
        "NVIDIA GeForce RTX 4090 Laptop GPU",  # an AD103, not the desktop AD102
        "NVIDIA GeForce RTX 3090",
        "Quadro RTX 6000",  # Turing: no BF16
        "NVIDIA Mystery Accelerator X1",
    ],
)
def test_unknown_boards_keep_their_name_and_have_no_tflops(board_name: str) -> None:
    assert canonical_model(board_name) == board_name
    assert canonical_model(f" {board_name} ") == board_name
    assert tflops_bf16_milli(board_name) is None


def test_an_empty_name_is_unknown() -> None:
    assert canonical_model("") == ""
    assert tflops_bf16_milli("") is None


@pytest.mark.parametrize("board_name", ["Tesla V100-SXM2-32GB", "Tesla V100S-PCIE-32GB"])
def test_v100_is_known_but_has_no_bf16(board_name: str) -> None:
    assert canonical_model(board_name) == "V100"
    assert tflops_bf16_milli(board_name) is None


def test_the_coordinators_canonical_names_are_stable() -> None:
    stable = {"H100 SXM", "H100 PCIe", "H100 NVL", "H200", "A100", "RTX 4090", "RTX 6000 Ada"}
    assert stable <= set(known_models())


def test_table_names_are_unique_canonical_and_figures_integers() -> None:
    models = known_models()
    assert len(set(models)) == len(models)
    for model in models:
        assert canonical_model(model) == model
        milli = tflops_bf16_milli(model)
        assert milli is None or type(milli) is int


@given(st.text(max_size=40))
def test_a_boards_tflops_are_its_canonical_models(board_name: str) -> None:
    model = canonical_model(board_name)
    assert model in known_models() or model == board_name.strip()
    assert tflops_bf16_milli(model) == tflops_bf16_milli(board_name)


def test_normalise_name() -> None:
    assert normalise_name("NVIDIA A100-SXM4-80GB") == "NVIDIA A100 SXM4 80GB"
    assert normalise_name(" Tesla  v100_sxm2 ") == "TESLA V100 SXM2"


@pytest.mark.parametrize(
    ("milli", "shown"),
    [(989_000, 989), (149_700, 149.7), (119_500, 119.5), (165_200, 165.2), (None, None)],
)
def test_tflops_display(milli: int | None, shown: float | None) -> None:
    assert tflops_display(milli) == shown
    if milli is not None and milli % 1000 == 0:
        assert type(tflops_display(milli)) is int


# --- model filters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "models"),
    [
        (["h100"], H100S),
        (["NVIDIA H100"], H100S),
        (["H100 PCIe"], ("H100 PCIe",)),
        (["h100-pcie"], ("H100 PCIe",)),
        (["H100 SXM", "H100 SXM"], ("H100 SXM",)),
        (["H100", "H100 SXM"], H100S),
        (["A100", "h100 nvl"], ("A100", "H100 NVL")),
        (["H200"], ("H200",)),  # a model's own name means that model, not its family
        (["H200 NVL"], ("H200 NVL",)),
        (["RTX 6000 Ada"], ("RTX 6000 Ada",)),
        (["NVIDIA Mystery Accelerator X1"], ("NVIDIA Mystery Accelerator X1",)),
        ([" Quadro RTX 6000 "], ("Quadro RTX 6000",)),
        ((), ()),
    ],
)
def test_expand_model_filter(requested: list[str], models: tuple[str, ...]) -> None:
    assert expand_model_filter(requested) == models
    assert expand_model_filter(tuple(requested)) == models


@pytest.mark.parametrize("bad", ["", "   ", "x" * 129, None, 100, b"H100", ["H100"]])
def test_a_malformed_model_filter_is_refused(bad: Any) -> None:
    with pytest.raises(GpuModelError, match="1 to 128 characters"):
        expand_model_filter(["A100", bad])


def test_the_error_is_a_suanli_error_with_its_own_code() -> None:
    assert issubclass(GpuModelError, shared.SuanliError)
    assert GpuModelError("x").as_body() == {"error": "bad_gpu_model", "detail": "x"}
