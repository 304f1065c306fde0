"""`suanli audit receipt`: prove that one receipt envelope is in the log, against a signed
checkpoint, with the entry registering its agent's key, and check the coordinator's
acknowledgement of it when the holder kept one."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from coordinator.client.audit.errors import AuditUsageError, Stop
from coordinator.client.audit.key_chain import (
    KeyChain,
    compare_served,
    trusted_key,
    verified_checkpoint,
)
from coordinator.client.audit.log_client import LogClient
from coordinator.client.audit.reports import ReceiptReport
from coordinator.client.audit.state import load_state
from shared import ledger_names
from shared import log_entries as L
from shared.checkpoint import Checkpoint
from shared.envelope import envelope_digest, peek_key_id
from shared.errors import ReceiptRuleError, SuanliError
from shared.http_client import BadAnswer, Refused
from shared.identity import PublicKey, VerifierKey
from shared.merkle import verify_inclusion
from shared.receipts import check_amount, open_receipt

RECEIPT_WAIT_S = 10.0
_POLL_S = 0.5


async def check_receipt(
    url: str,
    envelope: bytes,
    log_key: str | None = None,
    state_path: Path | None = None,
    *,
    ca_file: str | None = None,
    wait_s: float = RECEIPT_WAIT_S,
    acknowledgement: bytes | None = None,
) -> ReceiptReport:
    """Prove that this receipt envelope is in the log: find it, fetch it and its agent's key
    entry, verify both inclusion proofs against a signed checkpoint, and check the receipt and
    the postings, and the coordinator's acknowledgement if one is given. A receipt accepted
    moments ago may wait up to `wait_s` for a checkpoint that covers it."""
    digest = envelope_digest(envelope)
    report = ReceiptReport(coordinator=url, digest=digest.hex())
    state = load_state(state_path)
    async with LogClient(url, ca_file) as client:
        key, _, served = await trusted_key(client, log_key, state, state_path, report)
        report.coordinator = client.url  # the one of the URLs given that answered
        with contextlib.suppress(Stop):
            await _check_receipt(
                client,
                key,
                served,
                state,
                state_path,
                envelope,
                digest,
                report,
                wait_s,
                acknowledgement,
            )
    return report


async def _find(client: LogClient, name: str, value: bytes) -> int | None:
    try:
        answer = await client.json("/v1/log/find", {name: value.hex()})
    except Refused as exc:
        if exc.status == 404:
            return None
        raise
    index = answer.get("index")
    if type(index) is not int or index < 0:
        raise BadAnswer("the coordinator's /v1/log/find answer has no index")
    return index


async def _proven_entry(
    client: LogClient, index: int, checkpoint: Checkpoint, report: ReceiptReport, what: str
) -> bytes | None:
    data = (await client.entries(index, index + 1))[0]
    proof = await client.proof("/v1/log/proof/inclusion", {"index": index, "size": checkpoint.size})
    if not verify_inclusion(data, index, checkpoint.size, proof, checkpoint.root_hash):
        report.problem(
            "not_included",
            f"the coordinator's entry {index} ({what}) is not proven to "
            f"be in its signed checkpoint of {checkpoint.size} entries",
            index,
        )
        return None
    return data


async def _proven_chain(
    client: LogClient,
    trusted: VerifierKey,
    note: str,
    checkpoint: Checkpoint,
    report: ReceiptReport,
) -> tuple[KeyChain, Checkpoint]:
    """The key chain of the checkpoint's tree, from the log_key entries the coordinator lists,
    each proven to be in it; and the checkpoint, verified with the key in force at its size.
    A rotation left out of the list leaves the chain short of the checkpoint's signer."""
    chain = KeyChain(trusted)
    rotations = []
    for index in sorted({i for i in await client.key_changes() if i < checkpoint.size}):
        data = await _proven_entry(client, index, checkpoint, report, "a log key rotation")
        if data is not None:
            rotations.append((index, data))
    chain.follow(rotations, report)
    return chain, verified_checkpoint(note, chain, checkpoint.size, report)


async def _check_receipt(
    client: LogClient,
    key: VerifierKey,
    served: VerifierKey,
    state: dict[str, Any],
    state_path: Path | None,
    envelope: bytes,
    digest: bytes,
    report: ReceiptReport,
    wait_s: float,
    acknowledgement: bytes | None,
) -> None:
    try:
        agent_key_id = peek_key_id(envelope, "receipt")
    except SuanliError as exc:
        raise AuditUsageError(f"the file is not a receipt envelope: {exc.detail}") from None
    report.agent_id = agent_key_id.hex()
    index = await _find(client, "digest", digest)
    if index is None:
        report.problem(
            "receipt_not_logged", f"the coordinator's log has no receipt with digest {digest.hex()}"
        )
        return
    report.index = index
    deadline = time.monotonic() + wait_s
    while True:
        note, checkpoint = await client.checkpoint()
        if index < checkpoint.size or time.monotonic() >= deadline:
            break
        await asyncio.sleep(_POLL_S)
    chain, checkpoint = await _proven_chain(client, key, note, checkpoint, report)
    chain.check_pinned(state, state_path)
    compare_served(served, chain, checkpoint.size, report)
    report.size, report.root_hash = checkpoint.size, checkpoint.root_hash.hex()
    if index >= checkpoint.size:
        report.problem(
            "not_yet_checkpointed",
            f"the receipt is entry {index}, but the latest "
            f"signed checkpoint covers only {checkpoint.size} entries; try again later",
        )
        return
    data = await _proven_entry(client, index, checkpoint, report, "the receipt")
    agent_index = await _find(client, "agent_id", agent_key_id)
    if agent_index is None or agent_index >= index:
        report.problem(
            "unregistered_agent",
            f"the receipt is signed by agent "
            f"{agent_key_id.hex()}, whose key the log registers in no entry before "
            "the receipt's",
            index,
        )
        return
    agent_data = await _proven_entry(client, agent_index, checkpoint, report, "the agent's key")
    if data is None or agent_data is None:
        return
    try:
        entry, agent_entry = L.decode_entry(data), L.decode_entry(agent_data)
    except L.LogEntryError as exc:
        report.problem("bad_entry", exc.detail, index)
        return
    body, agent_body = entry.body, agent_entry.body
    if not isinstance(body, L.ReceiptEntry) or body.envelope != envelope:
        report.problem(
            "receipt_not_logged",
            "the entry the coordinator names holds another receipt than the file's",
            index,
        )
        return
    if not isinstance(agent_body, L.AgentKey) or agent_body.agent_id != agent_key_id.hex():
        report.problem(
            "unregistered_agent",
            "the agent_key entry the coordinator names is another agent's",
            agent_index,
        )
        return
    try:
        sealed = open_receipt(envelope, PublicKey(agent_body.public_key))
        check_amount(sealed.receipt)
    except ReceiptRuleError as exc:
        report.problem("bad_receipt", f"the receipt fails rule {exc.rule}: {exc.detail}", index)
        return
    receipt = sealed.receipt
    report.lease_id, report.seq, report.amount = receipt.lease_id, receipt.seq, receipt.amount
    report.accepted_at_ms = entry.at_ms
    report.charged = sum(
        p.amount for p in body.postings if p.code in ledger_names.USAGE_CHARGE_CODES
    )
    if acknowledgement is not None:
        _check_acknowledgement(
            acknowledgement, chain.verifier_at(index), digest, index, body, report
        )
    report.notes.append(
        "the receipt's place in its lease's chain, and that its lease's postings "
        "add up to its receipts, is checked by `suanli audit verify`, which reads "
        "the whole log"
    )


def _check_acknowledgement(
    envelope: bytes,
    key: VerifierKey,
    digest: bytes,
    index: int,
    body: L.ReceiptEntry,
    report: ReceiptReport,
) -> None:
    """The coordinator's countersignature the holder kept must name this receipt as logged."""
    try:
        acknowledged = L.open_acknowledgement(envelope, key.public).find(digest)
    except SuanliError as exc:
        report.problem(
            "bad_acknowledgement",
            f"the acknowledgement does not verify with the log "
            f"key in force at the receipt's entry, {key}: {exc.detail}",
            index,
        )
        return
    if acknowledged is None:
        report.problem(
            "bad_acknowledgement", "the acknowledgement does not name this receipt", index
        )
        return
    report.delta = acknowledged.delta
    logged = tuple(p.transfer_id for p in body.postings)
    if (acknowledged.lease_id, acknowledged.seq, acknowledged.amount) != (
        report.lease_id,
        report.seq,
        report.amount,
    ) or acknowledged.delta > report.amount:
        report.problem(
            "bad_acknowledgement",
            "the acknowledgement names another lease, seq or amount than the receipt",
            index,
        )
    if acknowledged.log_index != index:
        report.problem(
            "bad_acknowledgement",
            f"the acknowledgement places the receipt at log "
            f"entry {acknowledged.log_index}, but the log holds it at {index}",
            index,
        )
    if acknowledged.transfer_ids != logged:
        report.problem(
            "postings_mismatch",
            "the acknowledgement names other ledger transfers than the log's entry posts",
            index,
        )
