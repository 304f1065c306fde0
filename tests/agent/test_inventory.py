"""NVML-measured capacity: `suanli-agent inventory` against a fake libnvidia-ml.so.1.

The agent runs as a real process with LD_LIBRARY_PATH naming the fake's folder, so
NVIDIA's binding loads it through the dynamic loader exactly as it loads a driver's.
The model table it reads throughput from is tested in test_gpu_models.py.
"""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fake_nvml.fixture import GIB, FakeGpu, build, environment, write_config

from agent.inventory import gpu_record, offered_gpus, total_tflops_bf16_milli
from agent.nvml import GpuSample, cuda_version_string

AGENT = Path(sys.executable).parent / "suanli-agent"

DESIGN_GPU_KEYS = {
    "index",
    "uuid",
    "name",
    "memory_total_bytes",
    "memory_used_bytes",
    "utilization_gpu_pct",
    "temperature_c",
    "power_mw",
    "energy_mj",
    "tflops_bf16",
}
MORE_GPU_KEYS = {
    "model",
    "tflops_bf16_milli",
    "compute_capability",
    "power_limit_mw",
    "healthy",
    "health_reason",
    "ecc_uncorrected",
    "retired_pages_pending",
}
HOST_KEYS = {
    "hostname",
    "cpu_count",
    "cpu_percent",
    "memory_total_bytes",
    "memory_available_bytes",
    "disk_path",
    "disk_total_bytes",
    "disk_free_bytes",
}


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_lib() -> Path:
    return build("default")


@pytest.fixture(scope="module")
def old_driver_lib() -> Path:
    return build("old_driver")


def run_agent(
    args: list[str], lib_dir: Path, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = environment(lib_dir, config if config is not None else lib_dir / "absent.conf")
    if config is None:
        del env["FAKE_NVML_CONFIG"]
    return subprocess.run(
        [str(AGENT), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def inventory_json(lib_dir: Path, config: Path | None = None) -> dict[str, Any]:
    result = run_agent(["inventory", "--json"], lib_dir, config)
    assert result.returncode == 0, result.stderr
    inventory: dict[str, Any] = json.loads(result.stdout)
    return inventory


def by_uuid(inventory: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {gpu["uuid"]: gpu for gpu in inventory["gpus"]}


MIXED = [
    FakeGpu(
        "GPU-11111111-0000-0000-0000-000000000000",
        "NVIDIA H100 80GB HBM3",
        memory_used=3 * GIB,
        util=87,
        temperature=61,
        power_mw=512_000,
    ),
    FakeGpu(
        "GPU-22222222-0000-0000-0000-000000000000",
        "NVIDIA A100-SXM4-80GB",
        cc="8.0",
        power_limit_mw=400_000,
    ),
    FakeGpu(
        "GPU-33333333-0000-0000-0000-000000000000",
        "NVIDIA L40S",
        memory_total=48 * GIB,
        cc="8.9",
        power_limit_mw=350_000,
    ),
    FakeGpu(
        "GPU-44444444-0000-0000-0000-000000000000",
        "NVIDIA Mystery Accelerator X1",
        memory_total=24 * GIB,
        cc="8.6",
    ),
    # Consumer boards have no ECC: NVML says NOT_SUPPORTED, which is no fault.
    FakeGpu(
        "GPU-55555555-0000-0000-0000-000000000000",
        "NVIDIA GeForce RTX 4090",
        memory_total=24 * GIB,
        cc="8.9",
        power_limit_mw=450_000,
        unsupported=("ecc", "retired_pages"),
    ),
]


# --- NVML helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "text"), [(12040, "12.4"), (11080, "11.8"), (12000, "12.0")])
def test_cuda_version_string(raw: int, text: str) -> None:
    assert cuda_version_string(raw) == text


# --- inventory records ---------------------------------------------------------------------


def _sample(index: int, name: str | None = "NVIDIA H100 PCIe", healthy: bool = True) -> GpuSample:
    return GpuSample(
        index=index,
        uuid=None if name is None else f"GPU-{index}",
        name=name,
        memory_total_bytes=80 * GIB,
        memory_used_bytes=0,
        compute_capability=(9, 0),
        power_limit_mw=350_000,
        utilization_gpu_pct=0,
        temperature_c=30,
        power_mw=60_000,
        energy_mj=1,
        ecc_uncorrected=0,
        retired_pages_pending=False,
        healthy=healthy,
        health_reason=None if healthy else "GPU is lost",
    )


def test_gpu_record_has_the_design_keys_and_table_throughput() -> None:
    record = gpu_record(_sample(0))
    assert set(record) == DESIGN_GPU_KEYS | MORE_GPU_KEYS
    assert record["model"] == "H100 PCIe"
    assert record["tflops_bf16"] == 756
    assert record["tflops_bf16_milli"] == 756_000
    assert record["compute_capability"] == "9.0"
    nameless = gpu_record(_sample(1, name=None))
    assert nameless["model"] is None and nameless["tflops_bf16"] is None
    unknown = gpu_record(_sample(2, name="NVIDIA Mystery Accelerator X1"))
    assert unknown["model"] == "NVIDIA Mystery Accelerator X1"
    assert unknown["tflops_bf16"] is None and unknown["tflops_bf16_milli"] is None


def test_offered_gpus_filters_by_index_and_drops_the_unhealthy() -> None:
    gpus = [
        gpu_record(_sample(0)),
        gpu_record(_sample(1, healthy=False)),
        gpu_record(_sample(2, name="NVIDIA Mystery Accelerator X1")),
        gpu_record(_sample(3)),
    ]
    inventory: Any = {"gpus": gpus}
    assert [gpu["index"] for gpu in offered_gpus(inventory, None)] == [0, 2, 3]
    assert [gpu["index"] for gpu in offered_gpus(inventory, [1, 3])] == [3]
    assert offered_gpus(inventory, []) == []
    assert total_tflops_bf16_milli(gpus) == 3 * 756_000


# --- against the fake NVML library ---------------------------------------------------------


def test_mixed_gpus_are_reported_with_uuid_name_memory_and_tflops(
    fake_lib: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "nvml.conf", MIXED)
    inventory = inventory_json(fake_lib, config)

    assert inventory["driver_version"] == "550.54.15"
    assert inventory["cuda_version"] == "12.4"
    assert inventory["nvml_note"] is None
    assert [gpu["index"] for gpu in inventory["gpus"]] == [0, 1, 2, 3, 4]
    assert [gpu["uuid"] for gpu in inventory["gpus"]] == [gpu.uuid for gpu in MIXED]
    assert [gpu["name"] for gpu in inventory["gpus"]] == [gpu.name for gpu in MIXED]
    assert [gpu["memory_total_bytes"] for gpu in inventory["gpus"]] == [
        gpu.memory_total for gpu in MIXED
    ]
    assert [gpu["tflops_bf16"] for gpu in inventory["gpus"]] == [989, 312, 362, None, 165.2]
    assert [gpu["model"] for gpu in inventory["gpus"]] == [
        "H100 SXM",
        "A100",
        "L40S",
        "NVIDIA Mystery Accelerator X1",
        "RTX 4090",
    ]

    h100 = inventory["gpus"][0]
    assert h100["memory_used_bytes"] == 3 * GIB
    assert h100["utilization_gpu_pct"] == 87
    assert h100["temperature_c"] == 61
    assert h100["power_mw"] == 512_000
    assert h100["power_limit_mw"] == 700_000
    assert h100["compute_capability"] == "9.0"
    assert h100["ecc_uncorrected"] == 0
    assert h100["retired_pages_pending"] is False
    assert isinstance(h100["energy_mj"], int) and h100["energy_mj"] >= 0

    assert all(gpu["healthy"] and gpu["health_reason"] is None for gpu in inventory["gpus"])
    rtx = inventory["gpus"][4]
    assert rtx["ecc_uncorrected"] is None
    assert rtx["retired_pages_pending"] is None


def test_json_has_the_design_shape_and_only_ints_for_measurements(
    fake_lib: Path, tmp_path: Path
) -> None:
    inventory = inventory_json(fake_lib, write_config(tmp_path / "nvml.conf", MIXED))
    assert set(inventory) == {"gpus", "host", "driver_version", "cuda_version", "nvml_note"}
    assert set(inventory["host"]) == HOST_KEYS
    for gpu in inventory["gpus"]:
        assert set(gpu) == DESIGN_GPU_KEYS | MORE_GPU_KEYS
        for key, value in gpu.items():
            if key != "tflops_bf16":
                assert not isinstance(value, float), key
    host = inventory["host"]
    assert host["cpu_count"] >= 1
    assert 0 < host["memory_available_bytes"] <= host["memory_total_bytes"]
    assert 0 <= host["disk_free_bytes"] <= host["disk_total_bytes"]
    assert all(
        isinstance(value, int)
        for key, value in host.items()
        if key not in ("hostname", "disk_path")
    )


def test_sick_gpus_are_listed_unhealthy_with_a_reason(fake_lib: Path, tmp_path: Path) -> None:
    gpus = [
        FakeGpu("GPU-a0000000-0000-0000-0000-000000000000"),
        FakeGpu("GPU-b0000000-0000-0000-0000-000000000000", ecc_uncorrected=3),
        FakeGpu("GPU-c0000000-0000-0000-0000-000000000000", retired_pages_pending=True),
        FakeGpu("GPU-d0000000-0000-0000-0000-000000000000", state="lost"),
        FakeGpu("GPU-e0000000-0000-0000-0000-000000000000", state="lost_handle"),
        FakeGpu("GPU-f0000000-0000-0000-0000-000000000000", state="reset_required"),
    ]
    inventory = inventory_json(fake_lib, write_config(tmp_path / "nvml.conf", gpus))
    listed = inventory["gpus"]
    assert [gpu["index"] for gpu in listed] == [0, 1, 2, 3, 4, 5]
    assert [gpu["healthy"] for gpu in listed] == [True, False, False, False, False, False]
    assert listed[1]["ecc_uncorrected"] == 3
    assert "3 uncorrected ECC errors" in listed[1]["health_reason"]
    assert listed[1]["uuid"] == gpus[1].uuid  # still identified, so the operator can act
    assert listed[2]["retired_pages_pending"] is True
    assert "retired" in listed[2]["health_reason"]
    assert "lost" in listed[3]["health_reason"]
    assert "lost" in listed[4]["health_reason"]
    assert "reset" in listed[5]["health_reason"]
    assert listed[0]["health_reason"] is None


def test_calls_an_old_driver_lacks_leave_fields_absent_not_errors(
    old_driver_lib: Path, tmp_path: Path
) -> None:
    gpu = FakeGpu(
        "GPU-01d00000-0000-0000-0000-000000000000",
        "Tesla V100-SXM2-32GB",
        memory_total=32 * GIB,
        memory_used=GIB,
        memory_reserved=GIB,
        cc="7.0",
        power_mw=250_000,
    )
    inventory = inventory_json(old_driver_lib, write_config(tmp_path / "nvml.conf", [gpu]))
    (v100,) = inventory["gpus"]
    assert v100["uuid"] == gpu.uuid
    assert v100["healthy"] is True
    assert v100["energy_mj"] is None
    assert v100["power_limit_mw"] is None
    assert v100["retired_pages_pending"] is None
    assert v100["power_mw"] == 250_000
    assert v100["tflops_bf16"] is None  # a known model without BF16
    # Without memory info v2, v1 counts the driver's reservation as used.
    assert v100["memory_used_bytes"] == 2 * GIB
    assert inventory["cuda_version"] == "12.4"  # from the v1 call


def test_memory_v2_does_not_count_the_reservation(fake_lib: Path, tmp_path: Path) -> None:
    gpu = FakeGpu("GPU-0e000000-0000-0000-0000-000000000000", memory_used=GIB, memory_reserved=GIB)
    (reported,) = inventory_json(fake_lib, write_config(tmp_path / "nvml.conf", [gpu]))["gpus"]
    assert reported["memory_used_bytes"] == GIB


SAMPLE_TWICE = textwrap.dedent(
    """
    import asyncio, json, sys
    from agent.nvml import NvmlSampler

    async def main() -> None:
        sampler = NvmlSampler()
        for _ in range(2):
            samples = await asyncio.to_thread(sampler.sample)
            print(json.dumps([[s.energy_mj, s.memory_used_bytes, s.utilization_gpu_pct]
                              for s in samples]), flush=True)
            sys.stdin.readline()
        sampler.close()
        sampler.close()

    asyncio.run(main())
    """
)


def test_sampler_from_asyncio_sees_energy_grow_and_config_changes(
    fake_lib: Path, tmp_path: Path
) -> None:
    config = tmp_path / "nvml.conf"
    gpus = [
        FakeGpu("GPU-e1000000-0000-0000-0000-000000000000", power_mw=300_000),
        FakeGpu("GPU-e2000000-0000-0000-0000-000000000000", power_mw=50_000),
    ]
    write_config(config, gpus)
    with subprocess.Popen(
        [sys.executable, "-c", SAMPLE_TWICE],
        env=environment(fake_lib, config),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        first = json.loads(process.stdout.readline())
        write_config(
            config, [FakeGpu(gpus[0].uuid, power_mw=300_000, memory_used=5 * GIB, util=99), gpus[1]]
        )
        process.stdin.write("\n")
        process.stdin.flush()
        second = json.loads(process.stdout.readline())
        process.stdin.write("\n")
        process.stdin.close()
        assert process.wait(timeout=30) == 0, process.stderr.read() if process.stderr else ""
    assert second[0][0] > first[0][0]
    assert second[1][0] >= first[1][0]
    assert first[0][1:] == [0, 0]
    assert second[0][1:] == [5 * GIB, 99]


def test_energy_counts_from_driver_load_across_processes(fake_lib: Path, tmp_path: Path) -> None:
    gpu = FakeGpu(
        "GPU-e3000000-0000-0000-0000-000000000000", power_mw=200_000, energy_base_mj=1_000_000
    )
    config = write_config(tmp_path / "nvml.conf", [gpu], driver_loaded_at_ms=1_700_000_000_000)
    first = inventory_json(fake_lib, config)["gpus"][0]["energy_mj"]
    second = inventory_json(fake_lib, config)["gpus"][0]["energy_mj"]
    assert 1_000_000 < first < second


def test_table_mode_prints_every_uuid(fake_lib: Path, tmp_path: Path) -> None:
    result = run_agent(["inventory"], fake_lib, write_config(tmp_path / "nvml.conf", MIXED))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for gpu in MIXED:
        assert gpu.uuid in result.stdout
    assert "NVIDIA L40S" in result.stdout
    assert "GPUs: 5" in result.stdout


# --- without a driver ----------------------------------------------------------------------

needs_no_real_driver = pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is not None,
    reason="this host has a real NVIDIA driver, which the loader finds anyway",
)


@needs_no_real_driver
def test_without_a_driver_json_reports_zero_gpus_and_a_note(tmp_path: Path) -> None:
    result = run_agent(["inventory", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    inventory = json.loads(result.stdout)
    assert inventory["gpus"] == []
    assert "no NVIDIA driver" in inventory["nvml_note"]
    assert "\n" not in inventory["nvml_note"]
    assert inventory["driver_version"] is None and inventory["cuda_version"] is None
    assert set(inventory["host"]) == HOST_KEYS


@needs_no_real_driver
def test_without_a_driver_the_table_says_so_in_one_line(tmp_path: Path) -> None:
    result = run_agent(["inventory"], tmp_path)
    assert result.returncode == 0
    assert len(result.stderr.splitlines()) == 1
    assert "no NVIDIA driver" in result.stderr
    assert "GPUs: 0" in result.stdout


def test_driver_not_loaded_reports_zero_gpus(fake_lib: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "nvml.conf", MIXED, init_error="DRIVER_NOT_LOADED")
    inventory = inventory_json(fake_lib, config)
    assert inventory["gpus"] == []
    assert "driver is not loaded" in inventory["nvml_note"]


def test_any_other_init_failure_reports_zero_gpus(fake_lib: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "nvml.conf", MIXED, init_error="LIB_RM_VERSION_MISMATCH")
    inventory = inventory_json(fake_lib, config)
    assert inventory["gpus"] == []
    assert "NVML failed to start" in inventory["nvml_note"]


def test_inventory_is_a_listed_subcommand() -> None:
    result = subprocess.run([str(AGENT), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "inventory" in result.stdout
