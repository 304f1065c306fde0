"""Delivering spooled receipts: sent in order, dropped from the spool only once the
coordinator's signed acknowledgement names them, kept with their rule when rejected."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from agent.coordinator_client import CoordinatorClient
from agent.spool import Spool
from shared.clock import now_ms
from shared.errors import SuanliError
from shared.http_client import CoordinatorError
from shared.log_entries import read_acknowledgement

log = logging.getLogger(__name__)
RECEIPT_BATCH = 100


async def deliver_receipts(
    client: CoordinatorClient, spool: Spool, last_accepted_ms: dict[str, int]
) -> int:
    """Send a batch of spooled receipts; return how many were accepted. Each accepted lease's
    time of acceptance goes into last_accepted_ms."""
    pending = await asyncio.to_thread(spool.pending_receipts, RECEIPT_BATCH)
    if not pending:
        return 0
    try:
        answer = await client.signed(
            "/v1/agent/receipts", {"receipts": [p.envelope for p in pending]}
        )
    except CoordinatorError as exc:
        log.warning("sending receipts failed: %s", exc.detail)
        return 0
    accepted = 0
    now = now_ms()
    sent = {(p.lease_id, p.seq): p.digest for p in pending}
    acknowledgements = acknowledged_digests(answer.get("acknowledgements"))
    for item in answer.get("results", []):
        lease_id, seq = item.get("lease_id"), item.get("seq")
        if item.get("status") == "accepted":
            envelope = acknowledging(
                acknowledgements, item.get("acknowledgement"), sent.get((lease_id, seq))
            )
            if envelope is None:
                log.error(
                    "receipt %s/%s was accepted without an acknowledgement that names it; "
                    "it stays in the spool",
                    lease_id,
                    seq,
                )
                continue
            await asyncio.to_thread(spool.acknowledge, lease_id, seq, envelope, now)
            last_accepted_ms[lease_id] = now
            accepted += 1
        elif item.get("status") == "rejected":
            log.error(
                "receipt %s/%s rejected by rule %s: %s",
                lease_id,
                seq,
                item.get("rule"),
                item.get("detail"),
            )
            await asyncio.to_thread(
                spool.reject, lease_id, seq, str(item.get("rule")), str(item.get("detail"))
            )
    return accepted


def acknowledged_digests(envelopes: Any) -> list[tuple[bytes, frozenset[bytes]]]:
    """Each acknowledgement of a reply with the receipt digests it names (none if malformed)."""
    found: list[tuple[bytes, frozenset[bytes]]] = []
    for envelope in envelopes if type(envelopes) is list else []:
        try:
            named = frozenset(r.digest for r in read_acknowledgement(envelope).receipts)
        except SuanliError:
            named = frozenset()
        found.append((envelope if type(envelope) is bytes else b"", named))
    return found


def acknowledging(
    acknowledgements: list[tuple[bytes, frozenset[bytes]]], position: object, digest: bytes | None
) -> bytes | None:
    """The acknowledgement an accepted result points to, if it names the receipt that was sent."""
    if digest is None or type(position) is not int or not 0 <= position < len(acknowledgements):
        return None
    envelope, named = acknowledgements[position]
    return envelope if digest in named else None
