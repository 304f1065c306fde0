"""Which log key to trust, and the log's key at each position: the trusted key (given, pinned
or trusted on first use), then every log_key entry, each signed by the key in force before
it; checkpoints are verified with the key in force at their size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.client.audit.errors import AuditError, AuditUsageError, Stop
from coordinator.client.audit.log_client import LogClient
from coordinator.client.audit.reports import AuditReport, ReceiptReport
from shared import canonical
from shared import log_entries as L
from shared.checkpoint import Checkpoint, open_checkpoint
from shared.errors import KeyMaterialError, SuanliError
from shared.identity import PublicKey, VerifierKey, parse_verifier_key, verifier_key

# how every log_key entry begins: an entry has one spelling, so this finds them all without
# decoding the whole log twice (a malformed one is the auditor's discrepancy)
_ROTATION_PREFIX = b"\x94" + canonical.encode([L.ENTRY_VERSION, L.LOG_KEY])[1:]


def is_rotation(raw: bytes) -> bool:
    """Whether the entry bytes are a log_key entry (a rotation of the log's key)."""
    return raw.startswith(_ROTATION_PREFIX)


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
        is a discrepancy and changes nothing. Raises Stop when the trusted key is not in the
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
            raise Stop


def compare_served(
    served: VerifierKey, chain: KeyChain, size: int, report: AuditReport | ReceiptReport
) -> None:
    """The key the coordinator presents now must be the one the chain reaches at `size`."""
    expected = chain.verifier_at(size)
    if served != expected:
        report.problem(
            "log_key_changed",
            f"the coordinator now presents the log key {served}, "
            f"not {expected}, the key the log's chain from the trusted key "
            f"{chain.trusted} reaches at its checkpoint",
        )


def verified_checkpoint(
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
        raise Stop from None
    if checkpoint.size != size:
        raise AuditError("the coordinator's checkpoint changed between two reads of it")
    return checkpoint
