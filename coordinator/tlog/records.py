"""Entries the coordinator logs once: registrations the log does not hold yet, the voucher
policy when it changes, and the entries of idempotent admin commands."""

from __future__ import annotations

from typing import Any

from coordinator.storage import Session
from coordinator.tlog.store import append_entries, find, lookup_key
from shared import log_entries


def append_unless_logged(db: Session, entry: bytes) -> int | None:
    """Append an entry unless one of its kind with the same key (agent, enterprise, receipt
    digest, payment reference, period) is logged already, so that an idempotent command
    retried logs once; returns the new entry's index, or None when it was logged before."""
    decoded = log_entries.decode_entry(entry)
    key = lookup_key(decoded)
    if key is not None and find(db, decoded.kind, key) is not None:
        return None
    return append_entries(db, [entry])


def log_registrations(db: Session) -> int:
    """Append agent_key and enterprise entries for the agents and enterprises the log does not
    hold yet (those registered before the log existed, or by a path that did not log them), in
    the order they registered; returns how many were appended. Run at start-up."""
    conn = db.conn
    logged = {
        (kind, bytes(key))
        for kind, key in conn.execute(
            "SELECT kind, key FROM log_lookup WHERE kind IN (?, ?)",
            [log_entries.AGENT_KEY, log_entries.ENTERPRISE],
        )
    }
    found: list[tuple[int, bytes]] = []
    for agent_id, public_key, provider_id, uscc, at_ms in conn.execute(
        "SELECT a.agent_id, a.public_key, a.provider_id, p.uscc, a.enrolled_at_ms "
        "FROM agents a JOIN providers p ON p.id = a.provider_id"
    ):
        if (log_entries.AGENT_KEY, bytes.fromhex(agent_id)) not in logged:
            body = log_entries.AgentKey(agent_id, bytes(public_key), provider_id, uscc)
            found.append((at_ms, log_entries.encode_entry(log_entries.AGENT_KEY, at_ms, body)))
    for enterprise_id, uscc, at_ms in conn.execute(
        "SELECT id, uscc, created_at_ms FROM enterprises"
    ):
        if (log_entries.ENTERPRISE, enterprise_id.encode()) not in logged:
            enterprise = log_entries.EnterpriseEntry(enterprise_id, uscc)
            found.append(
                (at_ms, log_entries.encode_entry(log_entries.ENTERPRISE, at_ms, enterprise))
            )
    found.sort(key=lambda item: item[0])
    if found:
        append_entries(db, [data for _, data in found])
    return len(found)


def log_voucher_policy(db: Session, policy: dict[str, Any], now_ms: int) -> bool:
    """Append the voucher policy (its settings by name) unless the last one logged is the same;
    returns whether it was appended. Run at start-up, after the policy is loaded."""
    row = db.conn.execute(
        "SELECT data FROM log_entries WHERE kind = ? ORDER BY idx DESC LIMIT 1",
        [log_entries.VOUCHER_POLICY],
    ).fetchone()
    if row is not None and log_entries.decode_entry(bytes(row[0])).body == policy:
        return False
    append_entries(db, [log_entries.encode_entry(log_entries.VOUCHER_POLICY, now_ms, policy)])
    return True
