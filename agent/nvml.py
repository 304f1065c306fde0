"""GPU capacity and health as NVML measures them, read through NVIDIA's binding (pynvml).

The library is found the way the binding finds it (the dynamic loader, so
LD_LIBRARY_PATH is honoured). A host without a driver has zero GPUs and a note
saying why; a call a driver or board lacks leaves its field None. Nothing here
raises on NVML's account.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import pynvml

__all__ = ["GpuSample", "NvmlSampler", "cuda_version_string"]

T = TypeVar("T")

# A board or driver without the call: the reading does not exist, nothing is wrong.
_ABSENT: tuple[type[BaseException], ...] = (
    pynvml.NVMLError_NotSupported,
    pynvml.NVMLError_FunctionNotFound,
)


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU at one moment. None means NVML could not give that reading."""

    index: int
    uuid: str | None
    name: str | None
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    compute_capability: tuple[int, int] | None
    power_limit_mw: int | None
    utilization_gpu_pct: int | None
    temperature_c: int | None
    power_mw: int | None
    energy_mj: int | None  # since the driver loaded
    ecc_uncorrected: int | None  # volatile: since the driver loaded
    retired_pages_pending: bool | None
    healthy: bool
    health_reason: str | None


def cuda_version_string(version: int) -> str:
    """NVML's CUDA driver version (1000*major + 10*minor) as people write it: 12040 -> "12.4"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _unhealthy_reason(error: pynvml.NVMLError) -> str | None:
    if isinstance(error, pynvml.NVMLError_GpuIsLost):
        return "GPU is lost (fell off the bus or stopped answering)"
    if isinstance(error, pynvml.NVMLError_ResetRequired):
        return "GPU requires a reset"
    return None


class _Reader:
    """Reads one device; remembers the first reading that showed it unhealthy."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def get(self, call: Callable[..., T], *args: Any) -> T | None:
        if self.reason is not None:
            return None
        try:
            return call(*args)
        except _ABSENT:
            return None
        except pynvml.NVMLError as error:
            # Lost or needing a reset condemns the GPU; any other failure (permissions,
            # a driver hiccup) loses this one reading, not the GPU.
            self.reason = _unhealthy_reason(error)
            return None


def _memory(handle: Any, reader: _Reader) -> tuple[int | None, int | None]:
    # v2 does not count the driver's own reservation as used; older drivers lack it.
    version = getattr(pynvml, "nvmlMemory_v2", None)
    info = None
    if version is not None and reader.reason is None:
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(handle, version=version)
        except (*_ABSENT, pynvml.NVMLError_ArgumentVersionMismatch):
            info = None
        except pynvml.NVMLError as error:
            reader.reason = _unhealthy_reason(error)
            return None, None
    if info is None:
        info = reader.get(pynvml.nvmlDeviceGetMemoryInfo, handle)
    if info is None:
        return None, None
    return int(info.total), int(info.used)


def _read_device(index: int) -> GpuSample:
    reader = _Reader()
    handle = reader.get(pynvml.nvmlDeviceGetHandleByIndex, index)
    if handle is None:
        return GpuSample(
            index=index,
            uuid=None,
            name=None,
            memory_total_bytes=None,
            memory_used_bytes=None,
            compute_capability=None,
            power_limit_mw=None,
            utilization_gpu_pct=None,
            temperature_c=None,
            power_mw=None,
            energy_mj=None,
            ecc_uncorrected=None,
            retired_pages_pending=None,
            healthy=False,
            health_reason=reader.reason or "NVML cannot open this GPU",
        )
    uuid = reader.get(pynvml.nvmlDeviceGetUUID, handle)
    name = reader.get(pynvml.nvmlDeviceGetName, handle)
    memory_total, memory_used = _memory(handle, reader)
    capability = reader.get(pynvml.nvmlDeviceGetCudaComputeCapability, handle)
    power_limit = reader.get(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    utilization = reader.get(pynvml.nvmlDeviceGetUtilizationRates, handle)
    temperature = reader.get(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
    power = reader.get(pynvml.nvmlDeviceGetPowerUsage, handle)
    energy = reader.get(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle)
    ecc = reader.get(
        pynvml.nvmlDeviceGetTotalEccErrors,
        handle,
        pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
        pynvml.NVML_VOLATILE_ECC,
    )
    pending = reader.get(pynvml.nvmlDeviceGetRetiredPagesPendingStatus, handle)

    reasons = [reader.reason] if reader.reason else []
    if ecc:
        reasons.append(f"{ecc} uncorrected ECC errors since the driver loaded")
    if pending:
        reasons.append("retired memory pages pending (needs a GPU reset)")
    return GpuSample(
        index=index,
        uuid=uuid,
        name=name,
        memory_total_bytes=memory_total,
        memory_used_bytes=memory_used,
        compute_capability=None if capability is None else (int(capability[0]), int(capability[1])),
        power_limit_mw=None if power_limit is None else int(power_limit),
        utilization_gpu_pct=None if utilization is None else int(utilization.gpu),
        temperature_c=None if temperature is None else int(temperature),
        power_mw=None if power is None else int(power),
        energy_mj=None if energy is None else int(energy),
        ecc_uncorrected=None if ecc is None else int(ecc),
        retired_pages_pending=None if pending is None else bool(pending),
        healthy=not reasons,
        health_reason="; ".join(reasons) if reasons else None,
    )


def _init_note(error: pynvml.NVMLError) -> str:
    if isinstance(error, pynvml.NVMLError_LibraryNotFound):
        return "no NVIDIA driver: libnvidia-ml.so.1 not found; reporting 0 GPUs"
    if isinstance(error, pynvml.NVMLError_DriverNotLoaded):
        return "no NVIDIA driver: the kernel driver is not loaded; reporting 0 GPUs"
    return f"NVML failed to start ({error}); reporting 0 GPUs"


class NvmlSampler:
    """Samples every GPU on the host. One per process; safe to call from threads.

    sample() blocks on the driver, so from asyncio run it with asyncio.to_thread.
    NVML is initialised on first use; if that fails (no driver yet), each later
    sample tries again and returns [] until it succeeds.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._initialised = False
        self.driver_version: str | None = None
        self.cuda_version: str | None = None
        self.note: str | None = None

    def open(self) -> bool:
        """Initialise NVML if not done yet; True when GPUs can be read."""
        with self._lock:
            return self._open_locked()

    def _open_locked(self) -> bool:
        if self._initialised:
            return True
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            self.note = _init_note(error)
            return False
        self._initialised = True
        self.note = None
        self.driver_version = self._system(pynvml.nvmlSystemGetDriverVersion)
        cuda = self._system(pynvml.nvmlSystemGetCudaDriverVersion_v2)
        if cuda is None:
            cuda = self._system(pynvml.nvmlSystemGetCudaDriverVersion)
        self.cuda_version = None if cuda is None else cuda_version_string(int(cuda))
        return True

    @staticmethod
    def _system(call: Callable[[], T]) -> T | None:
        try:
            return call()
        except pynvml.NVMLError:
            return None

    def sample(self) -> list[GpuSample]:
        """Every GPU the driver reports, in index order; [] without a driver."""
        with self._lock:
            if not self._open_locked():
                return []
            try:
                count = int(pynvml.nvmlDeviceGetCount())
            except pynvml.NVMLError as error:
                self.note = f"NVML cannot count GPUs ({error}); reporting 0 GPUs"
                return []
            self.note = None
            return [_read_device(index) for index in range(count)]

    def close(self) -> None:
        """Shut NVML down (the binding keeps the library loaded). Safe to call twice."""
        with self._lock:
            if not self._initialised:
                return
            self._initialised = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
