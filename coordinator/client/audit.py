"""`suanli audit`: re-verify the coordinator's transparency log, trusting only `shared/`, the
log's key and the agent keys the log itself registered.

`verify_log` downloads the whole log, checks it against a signed checkpoint and against the
checkpoint the previous run saved (a rewritten history is caught there), then re-verifies every
receipt (signature, chain, postings against what its lease added), replays every auction round and totals
the postings. `replay_auctions` does the auctions alone; `check_receipt` proves one receipt is in
the log. Each returns a report whose `discrepancies` name what failed; the CLI prints it and
exits non-zero when there is any. Only `shared/`, aiohttp and rich are imported here.

Exit status: 0 everything verified; 1 the coordinator could not be reached or refused;
2 the command line, the state file or a key is wrong; 3 discrepancies were found.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Self

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from coordinator.client.audit_windows import WindowAudit
from shared import canonical, ledger_names
from shared import log_entries as L
from shared.auction import AuctionError, replay, replay_round, round_from_record
from shared.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint_body
from shared.clock import now_ms
from shared.envelope import envelope_digest, peek_key_id
from shared.errors import KeyMaterialError, ReceiptRuleError, SuanliError
from shared.identity import PublicKey, VerifierKey, parse_verifier_key, verifier_key
from shared.merkle import MerkleTree, verify_consistency, verify_inclusion
from shared.money import format_yuan
from shared.note import parse_note
from shared.receipts import SealedReceipt, check_amount, check_pure, open_receipt
from shared.transport import TransportError, check_coordinator_url, client_ssl_context
from shared.uscc import validate_uscc

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_USAGE = 2
EXIT_DISCREPANCY = 3
DEFAULT_TIMEOUT_S = 60.0
STATE_VERSION = 1
RECEIPT_WAIT_S = 10.0
_POLL_S = 0.5
_MAX_LISTED = 200


class AuditError(SuanliError):
    """The audit could not run: the coordinator is unreachable or refused, or the inputs are bad."""

    code = "audit_failed"


class AuditUsageError(AuditError):
    """The command line, the state file or a given key is wrong; nothing was concluded."""

    code = "audit_usage"


# -- reports -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Discrepancy:
    """One thing that did not verify: a stable code, the entry (if any) and a sentence."""

    code: str
    detail: str
    index: int | None = None

    def line(self) -> str:
        return f"entry {self.index}: {self.detail}" if self.index is not None else self.detail

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "index": self.index, "detail": self.detail}


class _Findings:
    """What both reports share: the discrepancies found, and `ok` when there is none."""

    discrepancies: list[Discrepancy]

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def problem(self, code: str, detail: str, index: int | None = None) -> None:
        self.discrepancies.append(Discrepancy(code, detail, index))


@dataclass
class AuditReport(_Findings):
    """What an audit saw and every discrepancy it found; `ok` when there is none."""

    coordinator: str
    origin: str = ""
    log_key: str = ""
    key_trust: str = ""  # "given", "pinned" or "first use"
    size: int = 0
    root_hash: str = ""
    previous_size: int | None = None
    entries_by_kind: Counter[str] = field(default_factory=Counter)
    receipts: int = 0
    acknowledgements: int = 0
    leases: int = 0
    agents: int = 0
    enterprises: int = 0
    auctions_replayed: int = 0
    charged: int = 0
    voucher: int = 0
    deferred: int = 0
    accounts: dict[str, dict[str, int]] = field(default_factory=dict)
    balances_compared: int | None = None
    discrepancies: list[Discrepancy] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    state_saved: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "coordinator": self.coordinator,
            "origin": self.origin,
            "log_key": self.log_key,
            "key_trust": self.key_trust,
            "size": self.size,
            "root_hash": self.root_hash,
            "previous_size": self.previous_size,
            "entries": sum(self.entries_by_kind.values()),
            "entries_by_kind": dict(sorted(self.entries_by_kind.items())),
            "receipts": self.receipts,
            "acknowledgements": self.acknowledgements,
            "leases": self.leases,
            "agents": self.agents,
            "enterprises": self.enterprises,
            "auctions_replayed": self.auctions_replayed,
            "charged_micro_yuan": self.charged,
            "voucher_micro_yuan": self.voucher,
            "deferred_micro_yuan": self.deferred,
            "accounts": {name: dict(sums) for name, sums in sorted(self.accounts.items())},
            "balances_compared": self.balances_compared,
            "discrepancies": [d.to_json() for d in self.discrepancies],
            "notes": list(self.notes),
            "state_saved": self.state_saved,
        }


@dataclass
class ReceiptReport(_Findings):
    """Whether one receipt is in the log, proven against a signed checkpoint, and what it says."""

    coordinator: str
    digest: str
    index: int | None = None
    size: int = 0
    root_hash: str = ""
    agent_id: str = ""
    lease_id: str = ""
    seq: int = 0
    amount: int = 0
    delta: int = 0
    charged: int = 0
    accepted_at_ms: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "coordinator": self.coordinator,
            "digest": self.digest,
            "index": self.index,
            "size": self.size,
            "root_hash": self.root_hash,
            "agent_id": self.agent_id,
            "lease_id": self.lease_id,
            "seq": self.seq,
            "amount_micro_yuan": self.amount,
            "delta_micro_yuan": self.delta,
            "charged_micro_yuan": self.charged,
            "accepted_at_ms": self.accepted_at_ms,
            "discrepancies": [d.to_json() for d in self.discrepancies],
            "notes": list(self.notes),
        }


class _Stop(Exception):
    """Nothing more can be checked (no verifiable checkpoint); the report says why."""


# -- the log's HTTP API ------------------------------------------------------------------------


class LogClient:
    """The coordinator's public log routes; no token is needed or sent."""

    def __init__(
        self, url: str, ca_file: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.url = check_coordinator_url(url)
        self._ssl = (
            client_ssl_context(ca_file) if self.url.startswith("https://") or ca_file else None
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(
        self, path: str, query: dict[str, str] | None = None, token: str | None = None
    ) -> tuple[int, bytes]:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"User-Agent": f"suanli-audit/{version('suanli')}"},
            )
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else None
            async with self._session.get(
                self.url + path, params=query, headers=headers, allow_redirects=False
            ) as response:
                return response.status, await response.read()
        except TimeoutError:
            raise AuditError(
                f"the coordinator at {self.url} did not answer {path} within "
                f"{self._timeout.total:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise AuditError(
                f"cannot reach the coordinator at {self.url} ({exc.__class__.__name__}: {exc})"
            ) from None

    async def text(self, path: str) -> str:
        status, raw = await self._get(path)
        if status != 200:
            raise _refusal(self.url, path, status, raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AuditError(f"the coordinator's {path} is not UTF-8 text") from None

    async def json(self, path: str, query: dict[str, int | str]) -> dict[str, Any]:
        status, raw = await self._get(path, {name: str(value) for name, value in query.items()})
        if status != 200:
            raise _refusal(self.url, path, status, raw)
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise AuditError(f"the coordinator's {path} did not answer with a JSON object")
        return data

    async def balances(self, token: str) -> dict[str, Any]:
        """The ledger balances an auditor's token may read, with the log size they belong to."""
        status, raw = await self._get("/v1/ledger/balances", token=token)
        if status != 200:
            raise _refusal(self.url, "/v1/ledger/balances", status, raw)
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if (
            not isinstance(data, dict)
            or type(data.get("log_size")) is not int
            or not isinstance(data.get("accounts"), list)
        ):
            raise AuditError("the coordinator's /v1/ledger/balances answer is malformed")
        return data

    async def checkpoint(self) -> tuple[str, Checkpoint]:
        """The latest checkpoint, parsed but NOT verified: which key must have signed it
        depends on the log_key entries of the tree it covers (`KeyChain`)."""
        note = await self.text("/v1/log/checkpoint")
        try:
            return note, parse_checkpoint_body(parse_note(note)[0])
        except SuanliError as exc:
            raise AuditError(
                f"the coordinator's checkpoint is not a signed note: {exc.detail}"
            ) from None

    async def key_changes(self) -> list[int]:
        answer = await self.json("/v1/log/key-changes", {})
        indices = answer.get("indices")
        if not isinstance(indices, list) or any(type(i) is not int or i < 0 for i in indices):
            raise AuditError("the coordinator's /v1/log/key-changes answer has no index list")
        return indices

    async def entries(self, start: int, end: int) -> list[bytes]:
        page = await self.json("/v1/log/entries", {"start": start, "end": end})
        data = page.get("entries")
        if (
            page.get("start") != start
            or not isinstance(data, list)
            or not 0 < len(data) <= end - start
        ):
            raise AuditError(
                f"the coordinator answered entries [{start}, {end}) with a page "
                "that does not start there or holds no entries"
            )
        return [_unbase64(item, f"entry {start + n}") for n, item in enumerate(data)]

    async def proof(self, path: str, query: dict[str, int | str]) -> list[bytes]:
        answer = await self.json(path, query)
        proof = answer.get("proof")
        if not isinstance(proof, list):
            raise AuditError(f"the coordinator's {path} answer has no proof list")
        return [_unbase64(item, "a proof hash") for item in proof]


class Refused(AuditError):
    """The coordinator answered with an error."""

    code = "audit_refused"

    def __init__(self, detail: str, status: int) -> None:
        super().__init__(detail)
        self.status = status


def _refusal(url: str, path: str, status: int, raw: bytes) -> Refused:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return Refused(f"the coordinator refused {path}: {body['detail']}", status)
    return Refused(f"the coordinator at {url} answered {path} with HTTP {status}", status)


def _unbase64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise AuditError(f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AuditError(f"{what} is not valid base64") from None


# -- the log key and the saved state -----------------------------------------------------------


def load_state(path: Path | None) -> dict[str, Any]:
    """What the previous run saved: the pinned log key and the checkpoint it verified."""
    if path is None or not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AuditUsageError(f"cannot read the audit state {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise AuditUsageError(f"{path} is not a suanli audit state file (version {STATE_VERSION})")
    return state


def save_state(path: Path, url: str, key: VerifierKey, note: str) -> None:
    """Replace the state file atomically, so an interrupted run never leaves half a state."""
    state = {
        "version": STATE_VERSION,
        "coordinator": url,
        "log_key": str(key),
        "checkpoint": note,
        "saved_at_ms": now_ms(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(state, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def trusted_key(
    client: LogClient,
    given: str | None,
    state: dict[str, Any],
    state_path: Path | None,
    report: AuditReport | ReceiptReport,
) -> tuple[VerifierKey, str, VerifierKey]:
    """The log key to trust: --log-key, else the one pinned in the state, else the coordinator's
    own (trust on first use, said in the report's notes), and the key the coordinator presents
    now. A given key must match a pinned one."""
    served = await client.text("/v1/log/key")
    try:
        fetched = parse_verifier_key(served.strip())
        pinned = parse_verifier_key(state["log_key"]) if "log_key" in state else None
        chosen = parse_verifier_key(given) if given is not None else None
    except KeyMaterialError as exc:
        raise AuditUsageError(f"a log key is malformed: {exc.detail}") from None
    if chosen is not None and pinned is not None and chosen.name != pinned.name:
        raise AuditUsageError(f"--log-key {chosen} is not the key {pinned} pinned in {state_path}")
    # a given key other than the pinned one must chain to it (`check_pinned`): the key given
    # once, before a rotation, stays good for runs whose state pins the key it rotated to
    if chosen is not None:
        key, trust = chosen, "given"
    elif pinned is not None:
        key, trust = pinned, "pinned"
    else:
        key, trust = fetched, "first use"
        where = (
            f"; it is pinned in {state_path} from now on"
            if state_path
            else ("; pass --log-key with a key obtained another way to check it")
        )
        report.notes.append(
            f"trusting the log key {fetched} on first use, as the coordinator presents it{where}"
        )
    return key, trust, fetched


class KeyChain:
    """The log's key at each position of the log, from the trusted key through the log_key
    entries: each must be signed by the key in force before it, and the trusted key must be one
    of the keys the chain holds. `at(n)` is the key that signs entry n's acknowledgement and a
    checkpoint of n entries."""

    def __init__(self, trusted: VerifierKey) -> None:
        self.trusted = trusted
        self.origin = trusted.name
        self.first = trusted.public
        self.changes: list[tuple[int, PublicKey]] = []  # (log_key entry, the key after it)
        self.keys: list[PublicKey] = [trusted.public]  # every key of the chain, in order

    def check_pinned(self, state: dict[str, Any], state_path: Path | None) -> None:
        """A key pinned in the state must be the trusted key or one the chain reaches from it."""
        if "log_key" not in state:
            return
        pinned = parse_verifier_key(state["log_key"])
        keys = self.keys[self.keys.index(self.trusted.public) :]
        if pinned.name != self.origin or pinned.public not in keys:
            raise AuditUsageError(
                f"--log-key {self.trusted} is not the key {pinned} pinned in "
                f"{state_path}, nor does the log's key chain lead from it there"
            )

    def at(self, position: int) -> PublicKey:
        key = self.first
        for index, new in self.changes:
            if index >= position:
                break
            key = new
        return key

    def verifier_at(self, size: int) -> VerifierKey:
        return verifier_key(self.origin, self.at(size))

    @property
    def rotations(self) -> int:
        return len(self.changes)

    def follow(
        self, rotations: list[tuple[int, bytes]], report: AuditReport | ReceiptReport
    ) -> None:
        """Walk the log_key entries (index, entry bytes) in log order; one that does not verify
        is a discrepancy and changes nothing. Raises _Stop when the trusted key is not in the
        chain at all."""
        parsed: list[tuple[int, L.LogKeyEntry]] = []
        for index, raw in rotations:
            try:
                body = L.decode_entry(raw).body
            except L.LogEntryError as exc:
                report.problem("bad_entry", exc.detail, index)
                continue
            if isinstance(body, L.LogKeyEntry):
                parsed.append((index, body))
        if parsed:
            # the log's first key is the one its first rotation names as old; the trusted key
            # must be it or a key the chain reaches from it
            self.first = PublicKey(L.read_log_key(parsed[0][1].envelope).old_key)
        seen = self.keys = [self.first]
        for index, body in parsed:
            in_force = self.at(index + 1)
            try:
                change = L.open_log_key(body.envelope, in_force)
            except SuanliError as exc:
                report.problem(
                    "log_key_signature",
                    f"the log_key entry is not signed by the key "
                    f"in force, {verifier_key(self.origin, in_force)}: {exc.detail}",
                    index,
                )
                continue
            if change.origin != self.origin:
                report.problem(
                    "log_key_signature",
                    f"the log_key entry rotates the key of the log "
                    f"{change.origin!r}, not of {self.origin!r}",
                    index,
                )
                continue
            self.changes.append((index, PublicKey(change.new_key)))
            seen.append(PublicKey(change.new_key))
        if self.trusted.public not in seen:
            # nothing the chain's keys signed can be believed, and none of them may be pinned
            report.problem(
                "untrusted_log_key",
                f"the trusted log key {self.trusted} is none of the "
                f"keys the log's rotations chain ({len(seen)} keys, from "
                f"{verifier_key(self.origin, seen[0])}); the log cannot be followed "
                "from it",
            )
            raise _Stop


def _compare_served(
    served: VerifierKey, chain: KeyChain, size: int, report: AuditReport | ReceiptReport
) -> None:
    expected = chain.verifier_at(size)
    if served != expected:
        report.problem(
            "log_key_changed",
            f"the coordinator now presents the log key {served}, "
            f"not {expected}, the key the log's chain from the trusted key "
            f"{chain.trusted} reaches at its checkpoint",
        )


# -- verify ------------------------------------------------------------------------------------


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
    """Audit the whole log; see the module docstring. Raises AuditError only when the audit
    cannot run at all; everything that fails to verify is a discrepancy in the report."""
    state = {} if auctions_only else load_state(state_path)
    report = AuditReport(coordinator=url)
    async with LogClient(url, ca_file) as client:
        report.coordinator = client.url
        key, report.key_trust, served = await trusted_key(
            client, log_key, state, None if auctions_only else state_path, report
        )
        report.log_key, report.origin = str(key), key.name
        with contextlib.suppress(_Stop):
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
    chain.follow([(n, raw) for n, raw in enumerate(data) if _is_rotation(raw)], report)
    if not auctions_only:
        chain.check_pinned(state, state_path)
    _compare_served(served, chain, checkpoint.size, report)
    checkpoint = _verified(note, chain, checkpoint.size, report)
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
    _Auditor(report, chain, auctions_only).run(data)
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


BALANCE_WAIT_S = 10
# which side of each audited account the log's postings fully explain: receivables are
# debited by deferred usage and credited by payments; earnings are credited by usage (payouts
# are not logged); the pool and caps are debited by voucher use (their funding is policy)
_AUDITED_SIDES = {
    "receivable:": (True, True),
    "earnings:": (False, True),
    "pool:": (True, False),
    "cap:": (True, False),
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
        sides = next(
            (v for prefix, v in _AUDITED_SIDES.items() if str(name).startswith(prefix)), None
        )
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
                    f"the coordinator reports {value} µ¥ of {side} on "
                    f"{name}, but the log's postings add up to "
                    f"{logged[0 if side == 'debits' else 1]} µ¥",
                )
    report.balances_compared = compared


# how every log_key entry begins: an entry has one spelling, so this finds them all without
# decoding the whole log twice (a malformed one is the auditor's discrepancy)
_ROTATION_PREFIX = b"\x94" + canonical.encode([L.ENTRY_VERSION, L.LOG_KEY])[1:]


def _is_rotation(raw: bytes) -> bool:
    return raw.startswith(_ROTATION_PREFIX)


def _verified(
    note: str, chain: KeyChain, size: int, report: AuditReport | ReceiptReport
) -> Checkpoint:
    """The checkpoint of `size` entries, verified with the key in force at that size."""
    key = chain.verifier_at(size)
    try:
        checkpoint = open_checkpoint(note, key, key.name)
    except SuanliError as exc:
        signed = f" (from the trusted key {chain.trusted})" if chain.rotations else ""
        report.problem(
            "checkpoint_signature",
            f"the coordinator's checkpoint of {size} entries "
            f"does not verify with the log key {key}, the key in force at that size"
            f"{signed}: {exc.detail}",
        )
        raise _Stop from None
    if checkpoint.size != size:
        raise AuditError("the coordinator's checkpoint changed between two reads of it")
    return checkpoint


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


class _Auditor:
    """Re-verifies the entries in log order, keeping what later entries are checked against."""

    def __init__(self, report: AuditReport, chain: KeyChain, auctions_only: bool) -> None:
        self.report = report
        self.chain = chain
        self.auctions_only = auctions_only
        self.agents: dict[str, PublicKey] = {}
        self.usccs: dict[str, str] = {}
        self.chains: dict[str, SealedReceipt] = {}
        self.receipts: set[bytes] = set()
        self.posted: dict[str, int] = {}  # lease -> the cumulative amount its postings charged
        self.logged_receipts: dict[
            int, L.AcknowledgedReceipt
        ] = {}  # as an acknowledgement names it
        self.last_receipt_index: dict[str, int] = {}
        self.transfers: dict[bytes, int] = {}
        # (job_id) -> {(agent_id, price, sorted GPU uuids)} of rounds whose replay agreed
        self.awards: dict[str, set[tuple[str, int, tuple[str, ...]]]] = {}
        self.windows = WindowAudit(self.agents, self.problem)

    def run(self, data: list[bytes]) -> None:
        for index, raw in enumerate(data):
            try:
                entry = L.decode_entry(raw)
            except L.LogEntryError as exc:
                self.report.problem("bad_entry", exc.detail, index)
                continue
            self.report.entries_by_kind[entry.kind] += 1
            if isinstance(entry.body, L.AuctionRoundEntry):
                self.auction(index, entry.body)
            elif self.auctions_only:
                continue
            elif isinstance(entry.body, L.AgentKey):
                self.agent_key(index, entry.body)
            elif isinstance(entry.body, L.EnterpriseEntry):
                self.enterprise(index, entry.body)
            elif isinstance(entry.body, L.ReceiptEntry):
                self.receipt(index, entry.body, entry.at_ms)
            elif isinstance(entry.body, L.LeaseAwardEntry):
                self.lease_award(index, entry.body, entry.at_ms)
            elif isinstance(entry.body, L.LeaseEventEntry):
                self.windows.event(index, entry.at_ms, entry.body)
            elif isinstance(entry.body, L.PaymentEntry):
                self.payment(index, entry.body)
            elif isinstance(entry.body, L.PeriodCloseEntry):
                self.period_close(index, entry.body)
            elif isinstance(entry.body, L.AcknowledgementEntry):
                self.acknowledgement(index, entry.body)
        self.finish()
        self.report.agents = len(self.agents)
        self.report.enterprises = len(self.usccs)
        self.report.leases = len(self.chains)

    def problem(self, code: str, detail: str, index: int) -> None:
        self.report.problem(code, detail, index)

    def agent_key(self, index: int, body: L.AgentKey) -> None:
        key = PublicKey(body.public_key)
        known = self.agents.get(body.agent_id)
        if known is not None and known != key:
            self.problem(
                "agent_key_changed",
                f"agent {body.agent_id} is registered again with another key",
                index,
            )
            return
        self.agents[body.agent_id] = key

    def enterprise(self, index: int, body: L.EnterpriseEntry) -> None:
        try:
            validate_uscc(body.uscc)
        except SuanliError as exc:
            self.problem("bad_uscc", f"enterprise {body.enterprise_id}: {exc.detail}", index)
        holder = self.usccs.get(body.uscc)
        if holder is not None and holder != body.enterprise_id:
            self.problem(
                "duplicate_uscc",
                f"enterprise {body.enterprise_id} is registered under "
                f"USCC {body.uscc}, which enterprise {holder} already holds; one voucher "
                "entitlement per USCC",
                index,
            )
            return
        self.usccs[body.uscc] = body.enterprise_id

    def awarded(
        self,
        index: int,
        what: str,
        job_id: str,
        agent_id: str,
        price: int,
        gpu_uuids: tuple[str, ...],
    ) -> None:
        """A lease, or the receipts that bill it, must follow an auction round that replays."""
        if (agent_id, price, tuple(sorted(gpu_uuids))) not in self.awards.get(job_id, set()):
            self.problem(
                "unawarded_lease",
                f"{what} job {job_id} on agent {agent_id[:16]}… at "
                f"{price} µ¥ per GPU-hour, but no earlier auction round of the log (that "
                "replays) awarded the job to that agent, price and GPUs",
                index,
            )

    def lease_award(self, index: int, body: L.LeaseAwardEntry, at_ms: int) -> None:
        self.awarded(
            index,
            f"lease {body.lease_id} gives",
            body.job_id,
            body.agent_id,
            body.price_per_gpu_hour,
            body.gpu_uuids,
        )
        self.windows.award(index, at_ms, body)

    def receipt(self, index: int, body: L.ReceiptEntry, at_ms: int) -> None:
        digest = body.digest
        if digest in self.receipts:
            self.problem("duplicate_receipt", f"receipt {digest.hex()[:16]} is logged twice", index)
            return
        try:
            agent_id = peek_key_id(body.envelope, "receipt").hex()
        except SuanliError as exc:
            self.problem("bad_receipt", f"the receipt envelope is malformed: {exc.detail}", index)
            return
        key = self.agents.get(agent_id)
        if key is None:
            self.problem(
                "unregistered_agent",
                f"the receipt is signed by agent {agent_id}, whose "
                "key no earlier agent_key entry of the log registers",
                index,
            )
            return
        try:
            sealed = open_receipt(body.envelope, key)
        except ReceiptRuleError as exc:
            self.problem("bad_receipt", f"the receipt fails rule {exc.rule}: {exc.detail}", index)
            return
        receipt = sealed.receipt
        self.receipts.add(digest)
        self.report.receipts += 1
        previous = self.chains.get(receipt.lease_id)
        where = f"lease {receipt.lease_id} seq {receipt.seq}"
        try:
            check_pure(previous, receipt)
        except ReceiptRuleError as exc:
            self.problem("receipt_chain", f"{where} breaks rule {exc.rule}: {exc.detail}", index)
        self.chains[receipt.lease_id] = sealed
        self.windows.receipt(index, at_ms, receipt)
        if previous is None:
            self.awarded(
                index,
                f"{where} bills",
                receipt.job_id,
                receipt.agent_id,
                receipt.price_per_gpu_hour,
                receipt.gpu_uuids,
            )
        charge = 0
        for posting in body.postings:
            if not posting.code.startswith(ledger_names.USAGE_PREFIX):
                self.problem(
                    "postings_mismatch",
                    f"{where} has a posting with code {posting.code}, which is not a usage code",
                    index,
                )
            if posting.code in ledger_names.USAGE_CHARGE_CODES:
                charge += posting.amount
            if posting.code == ledger_names.USAGE_VOUCHER:
                self.report.voucher += posting.amount
            elif posting.code == ledger_names.USAGE_DEFERRED:
                self.report.deferred += posting.amount
            self.post(index, posting)
        self.report.charged += charge
        # a lease's receipts of one batch are posted together, on the last of them
        unposted = receipt.amount - self.posted.get(receipt.lease_id, 0)
        if body.postings:
            if charge != unposted:
                self.problem(
                    "postings_mismatch",
                    f"{where}: the postings charge "
                    f"{format_yuan(charge)} yuan but the lease's receipts added "
                    f"{format_yuan(unposted)} yuan since its last posting",
                    index,
                )
            self.posted[receipt.lease_id] = receipt.amount
        self.last_receipt_index[receipt.lease_id] = index
        delta = receipt.amount - (previous.receipt.amount if previous is not None else 0)
        self.logged_receipts[index] = L.AcknowledgedReceipt(
            digest,
            receipt.lease_id,
            receipt.seq,
            receipt.amount,
            delta,
            index,
            tuple(p.transfer_id for p in body.postings),
        )

    def acknowledgement(self, index: int, body: L.AcknowledgementEntry) -> None:
        """The coordinator's word to an agent must match the receipts the log holds."""
        key = self.chain.at(index)
        try:
            acknowledgement = L.open_acknowledgement(body.envelope, key)
        except SuanliError as exc:
            self.problem(
                "bad_acknowledgement",
                f"the acknowledgement does not verify with the "
                f"log key in force at entry {index}, "
                f"{verifier_key(self.chain.origin, key)}: {exc.detail}",
                index,
            )
            return
        self.report.acknowledgements += 1
        for said in acknowledgement.receipts:
            logged = self.logged_receipts.get(said.log_index) if said.log_index < index else None
            if logged is None:
                self.problem(
                    "bad_acknowledgement",
                    f"the acknowledgement names entry "
                    f"{said.log_index} for receipt {said.digest.hex()[:16]}, but no "
                    "verified receipt of the log before it is there",
                    index,
                )
            elif said != logged:
                self.problem(
                    "bad_acknowledgement",
                    f"the acknowledgement says of entry "
                    f"{said.log_index} (lease {said.lease_id} seq {said.seq}) amount "
                    f"{said.amount} delta {said.delta} and {len(said.transfer_ids)} "
                    f"transfers, but the log holds amount {logged.amount} delta "
                    f"{logged.delta} and {len(logged.transfer_ids)} transfers",
                    index,
                )

    def finish(self) -> None:
        """What only the whole log shows: usage accepted but never posted, and receipts that
        bill outside their lease's window (which later entries may close)."""
        self.windows.finish()
        for lease_id, sealed in self.chains.items():
            unposted = sealed.receipt.amount - self.posted.get(lease_id, 0)
            if unposted > 0:
                self.problem(
                    "unposted_usage",
                    f"lease {lease_id}'s receipts add "
                    f"{format_yuan(unposted)} yuan after its last posting, but no "
                    "posting of the log charges it",
                    self.last_receipt_index[lease_id],
                )

    def payment(self, index: int, body: L.PaymentEntry) -> None:
        if not body.postings:
            self.problem("bad_payment", f"payment {body.reference} has no postings", index)
        for posting in body.postings:
            if posting.amount != body.amount:
                self.problem(
                    "bad_payment",
                    f"payment {body.reference} of "
                    f"{format_yuan(body.amount)} yuan has a posting of "
                    f"{format_yuan(posting.amount)} yuan",
                    index,
                )
            self.post(index, posting)

    def period_close(self, index: int, body: L.PeriodCloseEntry) -> None:
        for s in body.statements:
            if s.total != s.voucher + s.deferred:
                self.problem(
                    "bad_statement",
                    f"the {body.period} statement of {s.party_kind} "
                    f"{s.party_id} totals {format_yuan(s.total)} yuan, not its voucher "
                    f"{format_yuan(s.voucher)} plus deferred {format_yuan(s.deferred)}",
                    index,
                )

    def post(self, index: int, posting: L.Posting) -> None:
        first = self.transfers.setdefault(posting.transfer_id, index)
        if first != index:
            self.problem(
                "duplicate_transfer",
                f"transfer {posting.transfer_id.hex()[:16]} was "
                f"already logged in entry {first}; money moved twice",
                index,
            )
            return
        accounts = self.report.accounts
        accounts.setdefault(posting.debit_account, {"debits": 0, "credits": 0})
        accounts.setdefault(posting.credit_account, {"debits": 0, "credits": 0})
        accounts[posting.debit_account]["debits"] += posting.amount
        accounts[posting.credit_account]["credits"] += posting.amount

    def auction(self, index: int, body: L.AuctionRoundEntry) -> None:
        record = body.decoded()
        try:
            agrees = replay(record)
        except AuctionError as exc:
            self.problem(
                "bad_auction", f"the auction round cannot be replayed: {exc.detail}", index
            )
            return
        self.report.auctions_replayed += 1
        _, _, recorded = round_from_record(record)
        if not agrees:
            again = replay_round(record)
            self.problem(
                "auction_mismatch",
                f"the round for job {recorded.job_id} records "
                f"{_outcome_text(recorded)}, but replaying its inputs gives "
                f"{_outcome_text(again)}",
                index,
            )
            return
        if recorded.winner is not None and recorded.price_per_gpu_hour is not None:
            self.awards.setdefault(recorded.job_id, set()).add(
                (recorded.winner, recorded.price_per_gpu_hour, tuple(sorted(recorded.gpu_uuids)))
            )


def _outcome_text(outcome: Any) -> str:
    if outcome.winner is None:
        return f"no winner ({outcome.reason})"
    ranking = ", ".join(agent[:12] for agent in outcome.eligible)
    return (
        f"winner {outcome.winner[:16]}… at {outcome.price_per_gpu_hour} µ¥ per GPU-hour on "
        f"{', '.join(outcome.gpu_uuids)} (ranking {ranking})"
    )


# -- one receipt -------------------------------------------------------------------------------


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
        report.coordinator = client.url
        key, _, served = await trusted_key(client, log_key, state, state_path, report)
        with contextlib.suppress(_Stop):
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
        raise AuditError("the coordinator's /v1/log/find answer has no index")
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
    return chain, _verified(note, chain, checkpoint.size, report)


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
    _compare_served(served, chain, checkpoint.size, report)
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


# -- the command line --------------------------------------------------------------------------


Options = Callable[..., None]


def add_commands(commands: Any, connection_options: Options) -> None:
    """Add `suanli audit verify|replay-auctions|receipt` to the CLI's subcommands.

    `connection_options(parser, top=False)` is the CLI's own (--coordinator, --ca-file, --json).
    Each leaf sets `audit` to its coroutine; `main` runs it.
    """
    audit = commands.add_parser(
        "audit",
        help="verify the coordinator's transparency log without trusting it",
        description="Re-verify the coordinator's transparency log: signed checkpoints, "
        "consistency with the previous run, every receipt and posting, every auction.",
    )
    audit.set_defaults(help_parser=audit)
    connection_options(audit, top=False)
    actions = audit.add_subparsers(dest="audit_action", metavar="ACTION")

    def leaf(
        name: str, run: Callable[..., Awaitable[AuditReport | ReceiptReport]], help_text: str
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=help_text
        )
        connection_options(parser, top=False)
        parser.add_argument(
            "--log-key",
            metavar="VKEY",
            help="the log's verifier key (name+hash+key); default: the key "
            "pinned in --state, else the coordinator's own, trusted on first use",
        )
        parser.set_defaults(run=run, audit=run)
        return parser

    verify = leaf(
        "verify", _cmd_verify, "verify the whole log and every receipt, posting and auction in it"
    )
    verify.add_argument(
        "--state",
        metavar="FILE",
        type=Path,
        help="where the pinned key and the last verified checkpoint are kept; "
        "the log must extend that checkpoint",
    )
    leaf("replay-auctions", _cmd_replay, "replay every auction round of the log")
    receipt = leaf("receipt", _cmd_receipt, "prove that one receipt is in the log")
    receipt.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help="the receipt envelope, as the agent signed it (raw bytes)",
    )
    receipt.add_argument(
        "--state",
        metavar="FILE",
        type=Path,
        help="a state file of `audit verify` whose pinned key to use",
    )
    receipt.add_argument(
        "--acknowledgement",
        metavar="FILE",
        type=Path,
        help="the coordinator's acknowledgement of the receipt's batch (raw "
        "bytes, as the agent's spool keeps it) to check as well",
    )


def _progress(args: argparse.Namespace) -> Progress | None:
    if getattr(args, "json", False) or not sys.stderr.isatty():
        return None
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


async def _cmd_verify(args: argparse.Namespace, url: str, ca_file: str | None) -> AuditReport:
    progress = _progress(args)
    token = getattr(args, "token", None) or os.environ.get("SUANLI_TOKEN")
    if progress is None:
        return await verify_log(url, args.log_key, args.state, None, ca_file=ca_file, token=token)
    with progress:
        return await verify_log(
            url, args.log_key, args.state, progress, ca_file=ca_file, token=token
        )


async def _cmd_replay(args: argparse.Namespace, url: str, ca_file: str | None) -> AuditReport:
    progress = _progress(args)
    if progress is None:
        return await replay_auctions(url, args.log_key, None, ca_file=ca_file)
    with progress:
        return await replay_auctions(url, args.log_key, progress, ca_file=ca_file)


async def _cmd_receipt(args: argparse.Namespace, url: str, ca_file: str | None) -> ReceiptReport:
    try:
        envelope = args.file.read_bytes()
        acknowledgement = args.acknowledgement.read_bytes() if args.acknowledgement else None
    except OSError as exc:
        raise AuditUsageError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
    return await check_receipt(
        url, envelope, args.log_key, args.state, ca_file=ca_file, acknowledgement=acknowledgement
    )


def render_report(report: AuditReport | ReceiptReport, console: Console) -> None:
    """The report for people: a summary table, then each discrepancy and note."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(justify="right")
    if isinstance(report, AuditReport):
        rows: list[tuple[str, str]] = [
            ("log", report.origin),
            ("log key", report.log_key),
            ("key trusted as", report.key_trust),
            ("checkpoint", f"{report.size} entries, root {report.root_hash[:16]}…"),
            ("entries", str(sum(report.entries_by_kind.values()))),
            ("receipts", str(report.receipts)),
            ("acknowledgements checked", str(report.acknowledgements)),
            ("leases", str(report.leases)),
            ("agents", str(report.agents)),
            ("enterprises", str(report.enterprises)),
            ("auctions replayed", str(report.auctions_replayed)),
            (
                "ledger balances compared",
                "no auditor token given"
                if report.balances_compared is None
                else str(report.balances_compared),
            ),
            ("total charged", f"¥{format_yuan(report.charged)}"),
            ("  voucher part", f"¥{format_yuan(report.voucher)}"),
            ("  deferred part", f"¥{format_yuan(report.deferred)}"),
        ]
        if report.previous_size is not None:
            rows.insert(3, ("previous checkpoint", f"{report.previous_size} entries"))
    else:
        rows = [
            ("receipt", report.digest),
            ("log entry", "—" if report.index is None else f"{report.index} of {report.size}"),
            ("lease", f"{report.lease_id} seq {report.seq}"),
            ("agent", report.agent_id),
            ("cumulative amount", f"¥{format_yuan(report.amount)}"),
            ("charged by it", f"¥{format_yuan(report.charged)}"),
        ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    listed = report.discrepancies[:_MAX_LISTED]
    for item in listed:
        console.print(f"[red]✗[/red] {item.code}: {item.line()}", highlight=False)
    if len(report.discrepancies) > len(listed):
        console.print(
            f"… and {len(report.discrepancies) - len(listed)} more discrepancies "
            "(--json lists them all)"
        )
    if report.ok:
        console.print("[green]✓ verified[/green]")
    else:
        console.print(f"[red]{len(report.discrepancies)} discrepancies[/red]")


def main(args: argparse.Namespace, url: str | None, ca_file: str | None = None) -> int:
    """Run the `audit` command in `args.audit`; returns the exit status."""
    if url is None:
        return _fail(
            "no coordinator given; pass --coordinator URL or set SUANLI_COORDINATOR", EXIT_USAGE
        )
    try:
        url = check_coordinator_url(url)
        report = asyncio.run(args.audit(args, url, ca_file))
    except (AuditUsageError, TransportError) as exc:
        return _fail(exc.detail, EXIT_USAGE)
    except AuditError as exc:
        return _fail(exc.detail, EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        return 130
    if getattr(args, "json", False):
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        render_report(report, Console())
    return EXIT_OK if report.ok else EXIT_DISCREPANCY


def _fail(message: str, status: int) -> int:
    print(f"suanli: {message}", file=sys.stderr)
    return status
