"""Build the fake NVML library and write its GPU configuration.

A process sees the fake when it starts with LD_LIBRARY_PATH naming the library's
folder and FAKE_NVML_CONFIG naming a config file (format: fake_nvml.c's header);
`environment()` gives both. The config is re-read on every NVML call, so a test
changes a running agent's GPUs with `write_config` (which renames atomically).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_DIR = HERE / ".build"

# Variant name -> extra gcc flags. "old_driver" lacks the symbols of calls old drivers
# lack (energy, enforced power limit, retired-pages status, memory info v2, CUDA
# version v2), so the binding raises NVMLError_FunctionNotFound for them.
VARIANTS: Mapping[str, tuple[str, ...]] = {
    "default": (),
    "old_driver": ("-DFAKE_NVML_OLD_DRIVER",),
}

GIB = 2**30


def build(variant: str = "default") -> Path:
    """Compile the variant if its source changed; return the folder holding libnvidia-ml.so.1."""
    out = BUILD_DIR / variant
    subprocess.run(
        [str(HERE / "build.sh"), str(out), *VARIANTS[variant]],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


@dataclass(frozen=True)
class FakeGpu:
    """One GPU line of the config; defaults describe a healthy, idle H100 SXM."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    memory_total: int = 80 * GIB
    memory_used: int = 0
    memory_reserved: int = 0
    util: int = 0
    temperature: int = 40
    power_mw: int = 100_000
    power_limit_mw: int = 700_000
    cc: str = "9.0"
    ecc_uncorrected: int = 0
    retired_pages_pending: bool = False
    energy_base_mj: int = 0
    state: str = "ok"  # ok | lost | lost_handle | reset_required
    xids: Sequence[int] = field(default=())  # critical XIDs so far; appending one injects it
    unsupported: Sequence[str] = field(default=())

    def line(self) -> str:
        fields = [
            "gpu",
            f"uuid={self.uuid}",
            f"name={self.name}",
            f"memory_total={self.memory_total}",
            f"memory_used={self.memory_used}",
            f"memory_reserved={self.memory_reserved}",
            f"util={self.util}",
            f"temperature={self.temperature}",
            f"power_mw={self.power_mw}",
            f"power_limit_mw={self.power_limit_mw}",
            f"cc={self.cc}",
            f"ecc_uncorrected={self.ecc_uncorrected}",
            f"retired_pages_pending={int(self.retired_pages_pending)}",
            f"energy_base_mj={self.energy_base_mj}",
            f"state={self.state}",
        ]
        if self.xids:
            fields.append("xids=" + ",".join(str(xid) for xid in self.xids))
        if self.unsupported:
            fields.append("unsupported=" + ",".join(self.unsupported))
        return "|".join(fields)


def write_config(
    path: Path,
    gpus: Sequence[FakeGpu],
    *,
    driver_version: str = "550.54.15",
    cuda_version: int = 12040,
    init_error: str | None = None,
    driver_loaded_at_ms: int | None = None,
) -> Path:
    """Write (atomically replace) the fake's config file."""
    lines = [f"driver_version={driver_version}", f"cuda_version={cuda_version}"]
    if init_error is not None:
        lines.append(f"init_error={init_error}")
    if driver_loaded_at_ms is not None:
        lines.append(f"driver_loaded_at_ms={driver_loaded_at_ms}")
    lines.extend(gpu.line() for gpu in gpus)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def environment(
    lib_dir: Path, config: Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for a child process that should see the fake's GPUs."""
    env = dict(os.environ if base is None else base)
    env["LD_LIBRARY_PATH"] = str(lib_dir)
    env["FAKE_NVML_CONFIG"] = str(config)
    return env
