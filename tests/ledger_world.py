"""The coordinator rows the ledger and voucher tests lean on, built straight into a database."""

from __future__ import annotations

import hashlib

from coordinator import billing
from coordinator.storage import Session
from shared.uscc import check_character

NOW = 1_790_000_000_000  # 2026-09-21, inside fiscal year 2026
DAY = billing.DAY_MS


def uscc(n: int) -> str:
    prefix = f"9133000010{n:07d}"
    return prefix + check_character(prefix)


class World:
    """The coordinator rows the ledger leans on: companies, agents, jobs, leases, receipts."""

    def __init__(self, db: Session) -> None:
        self.db = db
        self.counter = 0

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def enterprise(self, code: str, policy: billing.VoucherPolicy, now: int = NOW) -> str:
        enterprise_id = f"ent-{self._next()}"
        self.db.conn.execute(
            "INSERT INTO enterprises (id, name, uscc, created_at_ms) VALUES (?,?,?,?)",
            [enterprise_id, "E", code, now],
        )
        billing.open_enterprise_accounts(self.db, enterprise_id, code, policy, now)
        return enterprise_id

    def provider(self, code: str, now: int = NOW) -> str:
        provider_id = f"prov-{self._next()}"
        self.db.conn.execute(
            "INSERT INTO providers (id, name, uscc, created_at_ms) VALUES (?,?,?,?)",
            [provider_id, "P", code, now],
        )
        self.db.conn.execute(
            "INSERT INTO agents (agent_id, provider_id, public_key, hostname, enrolled_at_ms) "
            "VALUES (?,?,?,?,?)",
            [f"agent-{provider_id}", provider_id, b"k" * 32, "host", now],
        )
        return provider_id

    def job(self, enterprise_id: str, provider_id: str, now: int = NOW) -> tuple[str, str]:
        n = self._next()
        job_id, lease_id = f"job-{n}", f"lease-{n}"
        self.db.conn.execute(
            "INSERT INTO jobs (id, enterprise_id, idempotency_key, spec, state, created_at_ms) "
            "VALUES (?,?,?,?,?,?)",
            [job_id, enterprise_id, job_id, "{}", "running", now],
        )
        self.db.conn.execute(
            "INSERT INTO leases (id, job_id, agent_id, gpu_uuids, price_per_gpu_hour, "
            "created_at_ms, start_deadline_ms, ends_at_ms, state) VALUES (?,?,?,?,?,?,?,?,?)",
            [lease_id, job_id, f"agent-{provider_id}", "[]", 1, now, now, now, "running"],
        )
        return job_id, lease_id

    def receipt(self, lease_id: str, now: int = NOW) -> bytes:
        n = self._next()
        digest = hashlib.sha256(f"receipt {n}".encode()).digest()
        seq = (
            self.db.conn.execute(
                "SELECT COUNT(*) FROM receipts WHERE lease_id = ?", [lease_id]
            ).fetchone()[0]
            + 1
        )
        acknowledgement = self.db.conn.execute(
            "INSERT INTO receipt_acknowledgements (agent_id, accepted_at_ms, envelope) "
            "VALUES ('agent', ?, ?) RETURNING id",
            [now, b"\x00"],
        ).fetchone()[0]
        self.db.conn.execute(
            "INSERT INTO receipts (lease_id, seq, agent_id, envelope, digest, issued_at_ms, "
            "accepted_at_ms, gpu_ms, amount, delta, final, acknowledgement_id) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [lease_id, seq, "agent", b"envelope", digest, now, now, 0, 0, 0, 0, acknowledgement],
        )
        return digest
