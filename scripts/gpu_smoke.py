"""GPU smoke test: the agent's NVML inventory and metering against a real GPU and driver.

1. Prints the real NVML inventory (agent.inventory.read_inventory: the JSON that
   `suanli-agent inventory --json` prints).
2. Runs ~10 s of matrix products (bf16 where supported) on CUDA device 0 with PyTorch while a
   background thread samples NVML with the agent's NvmlSampler at ~5 Hz and folds each sample
   into a LeaseRecord for that GPU (agent.metering.account_sample), as the daemon does.
3. Seals the lease's final receipt with a fresh key (seal_final_receipt), opens and checks it
   (shared.receipts.open_receipt + check_pure), and prints its fields, the TFLOPS the matmuls
   reached and the envelope's SHA-256.

Exit 1, with one sentence, when there is no NVIDIA driver, no GPU, no PyTorch/CUDA, or a check
fails. Run it through scripts/gpu-smoke, which finds a Python and, where needed, cryptography.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.clock import now_ms  # noqa: E402  (the repository is on sys.path only now)
from shared.money import format_money  # noqa: E402

PRICE_PER_GPU_HOUR = 10_000_000  # µ¥: ¥10 per GPU-hour
SAMPLE_HZ = 5


def fail(sentence: str) -> NoReturn:
    print(f"gpu-smoke: {sentence}", file=sys.stderr)
    sys.exit(1)


def inventory() -> dict[str, Any]:
    try:
        from agent.inventory import read_inventory
    except ImportError as exc:
        fail(f"cannot load the agent's NVML code ({exc}); it needs nvidia-ml-py and psutil")
    found = read_inventory()
    if not found["gpus"]:
        note = found["nvml_note"] or "the NVIDIA driver reports no GPUs"
        fail(note.replace("; reporting 0 GPUs", ""))
    return dict(found)


def cuda_device() -> tuple[Any, int]:
    # CUDA's default order is fastest first; NVML's is PCI bus order. Match them.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    try:
        import torch
    except ImportError:
        fail("PyTorch is not installed for this Python, so there is no workload to meter")
    if not torch.cuda.is_available():
        fail(
            f"PyTorch {torch.__version__} cannot use CUDA here (built for CUDA "
            f"{torch.version.cuda}); no workload to meter"
        )
    return torch, 0


def nvml_uuid_of(torch: Any, device: int, gpus: list[dict[str, Any]]) -> dict[str, Any]:
    """The inventory entry of CUDA device `device`: by UUID where torch tells it, else index."""
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    if uuid is not None:
        wanted = _hex(str(uuid))
        for gpu in gpus:
            if gpu["uuid"] and len(wanted) == 32 and _hex(gpu["uuid"]) == wanted:
                return gpu
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        fail(
            "CUDA_VISIBLE_DEVICES is set and PyTorch does not say the device's UUID, so the "
            "NVML GPU under CUDA device 0 is unknown; unset it"
        )
    return next(gpu for gpu in gpus if gpu["index"] == device)


def _hex(uuid: str) -> str:
    """A UUID's 32 hex digits, however it is dressed ("GPU-…", "UUID('…')", bare)."""
    text = uuid.lower().removeprefix("gpu-").removeprefix("uuid(")
    return "".join(ch for ch in text if ch in "0123456789abcdef")


class Meter(threading.Thread):
    """Samples NVML at SAMPLE_HZ and accounts each sample into the record, like the daemon."""

    def __init__(self, sampler: Any, record: Any) -> None:
        super().__init__(name="nvml-meter", daemon=True)
        self.sampler, self.record = sampler, record
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.samples = 0
        self.sample_s: list[float] = []
        self.max_util = 0
        self.max_power_mw = 0
        self.error: BaseException | None = None

    def once(self) -> None:
        from agent.metering import account_sample

        start = time.perf_counter()
        samples = {s.uuid: s for s in self.sampler.sample() if s.uuid}
        self.sample_s.append(time.perf_counter() - start)
        with self.lock:
            account_sample(self.record, samples)
            self.samples += 1
            for uuid in self.record.gpu_uuids:
                sample = samples.get(uuid)
                if sample is not None:
                    self.max_util = max(self.max_util, sample.utilization_gpu_pct or 0)
                    self.max_power_mw = max(self.max_power_mw, sample.power_mw or 0)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.once()
                self.stop.wait(1 / SAMPLE_HZ)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


def matmuls(torch: Any, device: int, seconds: float, size: int) -> tuple[str, float, int]:
    """bf16 (else fp16) products for about `seconds`; returns dtype, TFLOPS, products."""
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    cuda = torch.device("cuda", device)
    a = torch.randn(size, size, device=cuda, dtype=dtype)
    b = torch.randn(size, size, device=cuda, dtype=dtype)
    c = torch.empty(size, size, device=cuda, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=c)
    torch.cuda.synchronize(cuda)
    batch, done = 10, 0
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            torch.matmul(a, b, out=c)
        torch.cuda.synchronize(cuda)
        done += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
        each = elapsed / done  # aim at batches of ~0.5 s that end near `seconds`
        batch = max(1, min(int(0.5 / each), int((seconds - elapsed) / each) + 1, 1000))
    if not torch.isfinite(c[:64, :64].float()).all():
        fail("the matrix products gave non-finite numbers")
    return str(dtype).removeprefix("torch."), 2 * size**3 * done / elapsed / 1e12, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="matmul time (default 10)")
    parser.add_argument("--size", type=int, default=8192, help="square matrix size (default 8192)")
    args = parser.parse_args()

    found = inventory()  # fails first and fast where there is no driver
    print(json.dumps(found, indent=2))
    torch, device = cuda_device()
    try:
        from agent.lease import LeaseRecord, LeaseTerms
        from agent.metering import seal_final_receipt
        from agent.nvml import NvmlSampler
        from shared.identity import PrivateKey
        from shared.receipts import check_pure, open_receipt
    except ImportError as exc:
        fail(
            f"cannot load the agent's receipt code ({exc}); on a host without cryptography, "
            "carry wheels in .wheels/ as the header of scripts/gpu-smoke says"
        )

    gpu = nvml_uuid_of(torch, device, found["gpus"])
    print(
        f"\nCUDA device {device} = NVML GPU {gpu['index']} {gpu['uuid']} ({gpu['name']}), "
        f"torch {torch.__version__}",
        flush=True,
    )
    terms = LeaseTerms(
        lease_id=f"smoke-{secrets.token_hex(8)}",
        job_id=f"smoke-job-{secrets.token_hex(8)}",
        gpu_uuids=(gpu["uuid"],),
        price_per_gpu_hour=PRICE_PER_GPU_HOUR,
    )
    record = LeaseRecord(terms, created_at_ms=now_ms())
    torch.zeros(1, device=torch.device("cuda", device))  # CUDA context before the lease starts

    with NvmlSampler() as sampler:
        meter = Meter(sampler, record)
        with meter.lock:
            # billing counts from the start, as if the coordinator had answered it at once
            record.container.started_at_ms = record.metering.billable_from_ms = now_ms()
        meter.start()
        try:
            dtype, tflops, products = matmuls(torch, device, args.seconds, args.size)
        finally:
            meter.stop.set()
            meter.join()
        if meter.error is not None:
            fail(f"sampling NVML failed: {meter.error!r}")
        meter.once()  # the last reading, after the work
        record.container.ended_at_ms = now_ms()
        record.container.exit_code = 0

    key = PrivateKey.generate()
    sealed = seal_final_receipt(record, key, now_ms())
    opened = open_receipt(sealed.envelope, key.public)
    check_pure(None, opened.receipt)
    if opened.receipt != sealed.receipt or opened.digest != sealed.digest:
        fail("the opened receipt differs from the sealed one")
    receipt = opened.receipt

    mean_sample_ms = 1e3 * sum(meter.sample_s) / len(meter.sample_s)
    mean_power_w = receipt.energy_mj / receipt.gpu_ms if receipt.gpu_ms else 0.0
    print(
        f"\nworkload   {products} {dtype} matmuls of {args.size}×{args.size} in "
        f"~{args.seconds:g} s: {tflops:.1f} TFLOPS"
    )
    print(
        f"metering   {meter.samples} NVML samples at ~{SAMPLE_HZ} Hz, "
        f"one NvmlSampler.sample() of {len(found['gpus'])} GPU(s): mean {mean_sample_ms:.2f} ms, "
        f"max {1e3 * max(meter.sample_s):.2f} ms; peak utilisation {meter.max_util} %, "
        f"peak power {meter.max_power_mw / 1000:.0f} W"
    )
    print(
        "receipt    (final, sealed with a fresh key, "
        "opened and checked: signature, amount, chain start)"
    )
    print(f"  lease_id          {receipt.lease_id}")
    print(f"  agent_id          {receipt.agent_id}")
    print(f"  seq, final, exit  {receipt.seq}, {receipt.final}, {receipt.exit_code}")
    print(f"  gpu_uuids         {', '.join(receipt.gpu_uuids)}")
    print(f"  gpu_ms            {receipt.gpu_ms}")
    print(f"  energy_mj         {receipt.energy_mj}  (mean {mean_power_w:.0f} W over the lease)")
    print(f"  utilization_pct   {receipt.utilization_pct}")
    print(
        f"  peak_memory_bytes {receipt.peak_memory_bytes}  "
        f"({receipt.peak_memory_bytes / 2**30:.2f} GiB)"
    )
    print(f"  price             {format_money(receipt.price_per_gpu_hour)} per GPU-hour")
    print(f"  amount            {format_money(receipt.amount)}")
    print(f"  envelope          {len(sealed.envelope)} bytes, SHA-256 {sealed.digest.hex()}")

    problems = []
    if receipt.energy_mj <= 0:
        problems.append("energy_mj is 0 (does this GPU report its energy counter?)")
    if receipt.utilization_pct < 50:
        problems.append(f"utilization_pct is {receipt.utilization_pct} under a saturating matmul")
    if receipt.peak_memory_bytes < 3 * args.size**2 * 2:
        problems.append("peak_memory_bytes is below the three matrices' size")
    if problems:
        fail("the receipt is signed but implausible: " + "; ".join(problems))
    print("gpu-smoke: ok")


if __name__ == "__main__":
    main()
