"""`suanli audit verify` and `replay-auctions`: download the whole log, check it against a
signed checkpoint and against the checkpoint the previous run saved, re-verify every entry
(`EntryAuditor`), and compare the coordinator's ledger balances with the log's postings."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from rich.progress import Progress

from coordinator.client.audit.entries import EntryAuditor
from coordinator.client.audit.errors import AuditUsageError, Stop
from coordinator.client.audit.key_chain import (
    KeyChain,
    compare_served,
    is_rotation,
    trusted_key,
    verified_checkpoint,
)
from coordinator.client.audit.log_client import LogClient
from coordinator.client.audit.reports import AuditReport
from coordinator.client.audit.state import load_state, save_state
from shared import ledger_names
from shared import log_entries as L
from shared.checkpoint import Checkpoint, open_checkpoint
from shared.errors import SuanliError
from shared.http_client import Refused
from shared.identity import VerifierKey, parse_verifier_key
from shared.merkle import MerkleTree, verify_consistency
from shared.money import format_money

# how long a checkpoint covering the ledger balances read may take to be signed
BALANCE_WAIT_S = 10


async def verify_log(
    url: str,
    log_key: str | None,
    state_path: Path | None,
    progress: Progress | None = None,
    *,
    ca_file: str | None = None,
    auctions_only: bool = False,
    token: str | None = None,
) -> AuditReport:
    """Audit the whole log, as the package's docstring says. Raises AuditError (or, from the
    coordinator's answers, CoordinatorError) only when the audit cannot run at all; everything
    that fails to verify is a discrepancy in the report."""
    state = {} if auctions_only else load_state(state_path)
    report = AuditReport(coordinator=url)
    async with LogClient(url, ca_file) as client:
        key, report.key_trust, served = await trusted_key(
            client, log_key, state, None if auctions_only else state_path, report
        )
        report.coordinator = client.url  # the one of the URLs given that answered
        report.log_key, report.origin = str(key), key.name
        with contextlib.suppress(Stop):
            await _verify(
                client, key, served, state, state_path, progress, report, auctions_only, token
            )
    return report


async def replay_auctions(
    url: str, log_key: str | None, progress: Progress | None = None, *, ca_file: str | None = None
) -> AuditReport:
    """Replay every auction round of the log (checked against a signed checkpoint)."""
    return await verify_log(url, log_key, None, progress, ca_file=ca_file, auctions_only=True)


async def _verify(
    client: LogClient,
    key: VerifierKey,
    served: VerifierKey,
    state: dict[str, Any],
    state_path: Path | None,
    progress: Progress | None,
    report: AuditReport,
    auctions_only: bool,
    token: str | None = None,
) -> None:
    # balances are read first, with the log size they belong to; the checkpoint must cover it
    balances = await client.balances(token) if token and not auctions_only else None
    note, checkpoint = await client.checkpoint()
    if balances is not None:
        for _ in range(BALANCE_WAIT_S * 4):
            if checkpoint.size >= balances["log_size"]:
                break
            await asyncio.sleep(0.25)
            note, checkpoint = await client.checkpoint()
    data = await download(client, checkpoint.size, progress)
    # which key signs the checkpoint follows from the rotations in the tree it covers
    chain = KeyChain(key)
    chain.follow([(n, raw) for n, raw in enumerate(data) if is_rotation(raw)], report)
    if not auctions_only:
        chain.check_pinned(state, state_path)
    compare_served(served, chain, checkpoint.size, report)
    checkpoint = verified_checkpoint(note, chain, checkpoint.size, report)
    if chain.rotations:
        report.log_key = str(chain.verifier_at(checkpoint.size))
        report.notes.append(
            f"the log key rotated {chain.rotations} time(s); each rotation is "
            f"signed by the key before it, from the trusted key {key}"
        )
    report.size, report.root_hash = checkpoint.size, checkpoint.root_hash.hex()
    tree = MerkleTree()
    tree.append_many(data)
    intact = tree.root() == checkpoint.root_hash
    if not intact:
        report.problem(
            "root_mismatch",
            f"the {checkpoint.size} entries the coordinator serves "
            f"hash to the root {tree.root().hex()}, not to the root "
            f"{checkpoint.root_hash.hex()} of its signed checkpoint; entries were "
            "changed after they were logged",
        )
    consistent = True
    if not auctions_only:
        consistent = await _consistency(client, key, state, state_path, checkpoint, report)
    EntryAuditor(report, chain, auctions_only).run(data)
    if balances is not None:
        if checkpoint.size >= balances["log_size"]:
            compare_balances(data[: balances["log_size"]], balances["accounts"], report)
        else:
            report.problem(
                "balances_unverifiable",
                f"the ledger balances belong to a log of "
                f"{balances['log_size']} entries, but no checkpoint covering them was "
                f"signed within {BALANCE_WAIT_S} s",
            )
    if (
        state_path is not None
        and not auctions_only
        and intact
        and consistent
        and not any(d.code == "log_key_changed" for d in report.discrepancies)
    ):
        save_state(state_path, client.url, chain.verifier_at(checkpoint.size), note)
        report.state_saved = True


# which side of each audited account the log's postings fully explain: receivables are
# debited by deferred usage and credited by payments; earnings are credited by usage (payouts
# are not logged); the pool and caps are debited by voucher use (their funding is policy)
_AUDITED_SIDES = {
    ledger_names.RECEIVABLE: (True, True),
    ledger_names.EARNINGS: (False, True),
    ledger_names.POOL: (True, False),
    ledger_names.CAP: (True, False),
}


def compare_balances(entries: list[bytes], accounts: list[Any], report: AuditReport) -> None:
    """Compare the coordinator's ledger balances with the sums of the postings in the log."""
    sums: dict[str, list[int]] = {}
    for raw in entries:
        try:
            entry = L.decode_entry(raw)
        except SuanliError:
            continue  # already a discrepancy of the entry itself
        for posting in getattr(entry.body, "postings", ()):
            sums.setdefault(posting.debit_account, [0, 0])[0] += posting.amount
            sums.setdefault(posting.credit_account, [0, 0])[1] += posting.amount
    compared = 0
    for account in accounts:
        name = account.get("id") if isinstance(account, dict) else None
        kind, named, _ = str(name).partition(":")
        sides = _AUDITED_SIDES.get(kind) if named else None
        if sides is None:
            continue
        logged = sums.get(str(name), [0, 0])
        for side, wanted, value in (
            ("debits", sides[0], account.get("debits_posted")),
            ("credits", sides[1], account.get("credits_posted")),
        ):
            if not wanted:
                continue
            compared += 1
            if value != logged[0 if side == "debits" else 1]:
                report.problem(
                    "balance_mismatch",
                    f"the coordinator reports {format_money(value)} of {side} on "
                    f"{name}, but the log's postings add up to "
                    f"{format_money(logged[0 if side == 'debits' else 1])}",
                )
    report.balances_compared = compared


async def download(client: LogClient, size: int, progress: Progress | None = None) -> list[bytes]:
    """Every entry of the tree of `size` entries, page by page."""
    task = progress.add_task("downloading the log", total=size) if progress is not None else None
    data: list[bytes] = []
    while len(data) < size:
        page = await client.entries(len(data), size)
        data.extend(page)
        if progress is not None and task is not None:
            progress.advance(task, len(page))
    return data


async def _consistency(
    client: LogClient,
    key: VerifierKey,
    state: dict[str, Any],
    state_path: Path | None,
    checkpoint: Checkpoint,
    report: AuditReport,
) -> bool:
    """Whether the log grew only by appending since the checkpoint the previous run saved."""
    saved_note = state.get("checkpoint")
    if saved_note is None:
        if state_path is not None:
            report.notes.append(
                f"no earlier checkpoint in {state_path}; this run's is saved for "
                "the next run to check the log against"
            )
        return True
    # the state's checkpoint was signed by the key pinned with it, which the chain reaches
    pinned = parse_verifier_key(state["log_key"]) if "log_key" in state else key
    try:
        saved = open_checkpoint(saved_note, pinned, pinned.name)
    except SuanliError as exc:
        raise AuditUsageError(
            f"the checkpoint saved in {state_path} does not verify with the "
            f"log key pinned with it: {exc.detail}"
        ) from None
    report.previous_size = saved.size
    if saved.size > checkpoint.size:
        report.problem(
            "inconsistent_history",
            f"the log shrank from {saved.size} entries (the "
            f"checkpoint saved in {state_path}) to {checkpoint.size}; its history "
            "was rewritten",
        )
        return False
    if saved.size == 0:
        return True
    try:
        proof = (
            []
            if saved.size == checkpoint.size
            else await client.proof(
                "/v1/log/proof/consistency", {"old": saved.size, "new": checkpoint.size}
            )
        )
    except Refused as exc:
        report.problem(
            "inconsistent_history",
            f"the coordinator cannot prove that its log of "
            f"{checkpoint.size} entries extends the {saved.size} saved in {state_path}: "
            f"{exc.detail}",
        )
        return False
    if not verify_consistency(
        saved.size, checkpoint.size, saved.root_hash, checkpoint.root_hash, proof
    ):
        report.problem(
            "inconsistent_history",
            f"the log of {checkpoint.size} entries does not "
            f"extend the log of {saved.size} entries whose checkpoint was saved in "
            f"{state_path}: its history was rewritten or forked",
        )
        return False
    return True
