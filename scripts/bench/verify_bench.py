"""Benchmark: opening sealed receipts through shared/ against raw `cryptography` verifies."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.envelope import domain, open_envelope
from shared.identity import PrivateKey
from shared.money import usage_amount
from shared.receipts import GENESIS_PREV, Receipt, open_receipt, seal_receipt


def _receipts(count: int, key: PrivateKey) -> list[bytes]:
    envelopes = []
    for i in range(count):
        gpu_ms = 8 * 60_000 * (i + 1)
        receipt = Receipt(
            lease_id=f"lease-{i:08d}",
            job_id=f"job-{i:08d}",
            agent_id=key.public.agent_id,
            seq=1,
            prev=GENESIS_PREV,
            issued_at_ms=1_790_000_000_000 + i,
            gpu_uuids=tuple(f"GPU-{i:08x}-0000-0000-0000-{g:012x}" for g in range(8)),
            gpu_ms=gpu_ms,
            energy_mj=gpu_ms * 700,
            utilization_pct=93,
            peak_memory_bytes=70 << 30,
            price_per_gpu_hour=15_000_000,
            amount=usage_amount(gpu_ms, 15_000_000),
            final=False,
            exit_code=None,
        )
        envelopes.append(seal_receipt(receipt, key).envelope)
    return envelopes


def _rate(count: int, run: object, clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    run()  # type: ignore[operator]
    return count / (clock() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="time by this process's CPU, not the wall clock: a figure that other work on a "
        "busy machine moves far less",
    )
    args = parser.parse_args()
    key = PrivateKey.generate()
    envelopes = _receipts(args.count, key)
    public = key.public
    raw_key = Ed25519PublicKey.from_public_bytes(public.raw)
    prefix = domain("receipt")
    # the same signed messages, checked by cryptography with nothing around it
    signed = [
        (envelope[-64:], prefix + open_envelope(envelope, "receipt", public).payload_bytes)
        for envelope in envelopes
    ]

    def through_shared() -> None:
        for envelope in envelopes:
            open_receipt(envelope, public)

    def raw_verify() -> None:
        verify = raw_key.verify
        for signature, message in signed:
            verify(signature, message)

    clock = time.process_time if args.cpu else time.perf_counter
    best_shared = best_raw = 0.0
    for _ in range(args.rounds):
        best_raw = max(best_raw, _rate(args.count, raw_verify, clock))
        best_shared = max(best_shared, _rate(args.count, through_shared, clock))
    print(f"receipts           {args.count} × {args.rounds} rounds, {len(envelopes[0])} bytes each")
    print(f"shared/ open       {best_shared:10,.0f} receipts/s")
    print(f"raw Ed25519 verify {best_raw:10,.0f} verifies/s")
    print(f"ratio              {best_shared / best_raw:10.3f}  (goal ≥ 0.9)")


if __name__ == "__main__":
    main()
