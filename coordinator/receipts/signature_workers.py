"""Receipt envelopes opened on every core: signature, decoding and field checks in worker processes.

Verifying an Ed25519 signature holds the interpreter for ~60 µs, so one event loop verifying
every receipt would cap the coordinator at one core's verify rate. A batch large enough to pay
for the hand-off is cut into one piece per worker; the workers run `shared.receipts.open_receipt`
(the code auditors run) and send back the decoded receipt or the rule it broke. Small batches,
and a coordinator configured with no workers, are opened in the event loop itself. The pool
starts with the first large batch, so a coordinator that never sees one never forks.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache

from shared.errors import ReceiptRuleError
from shared.identity import PublicKey
from shared.receipts import Receipt, SealedReceipt, open_receipt

log = logging.getLogger(__name__)
# below this many envelopes the hand-off to a worker costs more than it saves
INLINE_BELOW = 16

Opened = SealedReceipt | ReceiptRuleError
# what a worker sends back per envelope: (receipt, digest, None, None) or (None, None, rule, detail)
_Result = tuple[Receipt | None, bytes | None, str | None, str | None]


@lru_cache(maxsize=4096)
def _key(raw: bytes) -> PublicKey:
    return PublicKey(raw)


def _open_one(envelope: bytes, key: PublicKey) -> Opened:
    try:
        return open_receipt(envelope, key)
    except ReceiptRuleError as exc:
        return exc


def _open_chunk(raw_key: bytes, envelopes: list[bytes]) -> list[_Result]:
    """In a worker: open each envelope with the agent's key."""
    key = _key(raw_key)
    results: list[_Result] = []
    for envelope in envelopes:
        opened = _open_one(envelope, key)
        if isinstance(opened, ReceiptRuleError):
            results.append((None, None, str(opened.rule), opened.detail))
        else:
            results.append((opened.receipt, opened.digest, None, None))
    return results


class SignatureWorkers:
    """Opens a batch of one agent's receipt envelopes (signature, decoding, field checks), in
    worker processes when it pays."""

    def __init__(self, workers: int) -> None:
        if workers < 0:
            raise ValueError("the number of receipt workers is 0 or more")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    async def open_all(self, key: PublicKey, envelopes: list[bytes]) -> list[Opened]:
        if self.workers == 0 or len(envelopes) < INLINE_BELOW:
            return [_open_one(envelope, key) for envelope in envelopes]
        if self._pool is None:
            # a fresh interpreter per worker: forking a process that runs threads is unsafe
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        loop = asyncio.get_running_loop()
        size = -(-len(envelopes) // self.workers)
        chunks = [envelopes[at : at + size] for at in range(0, len(envelopes), size)]
        try:
            answers = await asyncio.gather(
                *(loop.run_in_executor(self._pool, _open_chunk, key.raw, chunk) for chunk in chunks)
            )
        except BrokenProcessPool:
            # a worker died (killed, out of memory): this batch is opened here, the next
            # large one starts a fresh pool
            log.warning("a receipt worker process died; starting a new pool with the next batch")
            self.close()
            return [_open_one(envelope, key) for envelope in envelopes]
        opened: list[Opened] = []
        for chunk, answer in zip(chunks, answers, strict=True):
            for envelope, (receipt, digest, rule, detail) in zip(chunk, answer, strict=True):
                if receipt is None:
                    assert rule is not None and detail is not None
                    opened.append(ReceiptRuleError(rule, detail))
                else:
                    assert digest is not None
                    opened.append(SealedReceipt(receipt, envelope, digest))
        return opened

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)
