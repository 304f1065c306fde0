"""Who is who: providers, enterprises and auditors, and the tokens that stand for them.

Tokens are random, shown once, and stored only as SHA-256 hashes. These functions take a
`Session`, so the admin command runs them directly on the file and the server
runs them on its writer thread.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from coordinator import billing
from coordinator.errors import Conflict, NotFound, Unauthenticated
from coordinator.storage import Session
from shared.uscc import validate_uscc

TOKEN_PREFIX = {"enterprise": "sk_ent_", "auditor": "sk_aud_", "enrolment": "sk_enr_"}
MAX_NAME = 200


@dataclass(frozen=True)
class Principal:
    role: str
    subject_id: str
    token_hash: str = ""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise ValueError(f"a name must be 1 to {MAX_NAME} printable characters")
    return name


def _issue(
    db: Session,
    role: str,
    subject_id: str,
    now_ms: int,
    uses: int | None = None,
    expires_at_ms: int | None = None,
) -> str:
    token = TOKEN_PREFIX[role] + secrets.token_urlsafe(32)
    db.table("tokens").insert(
        {
            "token_hash": hash_token(token),
            "role": role,
            "subject_id": subject_id,
            "uses_left": uses,
            "expires_at_ms": expires_at_ms,
            "revoked": 0,
            "created_at_ms": now_ms,
        }
    )
    return token


def add_provider(
    db: Session, name: str, uscc: str, now_ms: int, max_hosts: int = 1
) -> tuple[str, str]:
    """Register a provider; returns (provider_id, enrolment token for max_hosts hosts).

    Its company's own agents may now win its company's open jobs, which no voucher pays for:
    their voucher holds move to credit first (`billing.cover_self_dealing`, which refuses the
    registration, with a sentence, when the credit cannot take them).
    """
    name, code = _check_name(name), validate_uscc(uscc)
    billing.cover_self_dealing(db, code, now_ms)
    provider_id = new_id("prov")
    db.table("providers").insert(
        {"id": provider_id, "name": name, "uscc": code, "created_at_ms": now_ms}
    )
    return provider_id, _issue(db, "enrolment", provider_id, now_ms, uses=max_hosts)


def issue_enrolment_token(
    db: Session,
    provider_id: str,
    now_ms: int,
    max_hosts: int = 1,
    expires_at_ms: int | None = None,
) -> str:
    if not db["providers"].count_where("id = ?", [provider_id]):
        raise NotFound(f"no provider {provider_id}")
    return _issue(db, "enrolment", provider_id, now_ms, uses=max_hosts, expires_at_ms=expires_at_ms)


def add_enterprise(db: Session, name: str, uscc: str, now_ms: int) -> tuple[str, str]:
    """Register an enterprise (one per USCC); returns (enterprise_id, API token)."""
    code = validate_uscc(uscc)
    existing = list(db.query("SELECT id FROM enterprises WHERE uscc = ?", [code]))
    if existing:
        raise Conflict(f"USCC {code} already has an enterprise account ({existing[0]['id']})")
    enterprise_id = new_id("ent")
    db.table("enterprises").insert(
        {"id": enterprise_id, "name": _check_name(name), "uscc": code, "created_at_ms": now_ms}
    )
    return enterprise_id, _issue(db, "enterprise", enterprise_id, now_ms)


def add_auditor(db: Session, name: str, now_ms: int) -> tuple[str, str]:
    auditor_id = new_id("aud")
    db.table("auditors").insert(
        {"id": auditor_id, "name": _check_name(name), "created_at_ms": now_ms}
    )
    return auditor_id, _issue(db, "auditor", auditor_id, now_ms)


def lookup_token(db: Session, token: str, now_ms: int) -> Principal | None:
    """The principal an API token stands for, or None if unknown, revoked or expired."""
    rows = list(
        db.query(
            "SELECT role, subject_id, revoked, expires_at_ms FROM tokens WHERE token_hash = ?",
            [hash_token(token)],
        )
    )
    if not rows:
        return None
    row = rows[0]
    if row["revoked"] or row["role"] == "enrolment":
        return None
    if row["expires_at_ms"] is not None and row["expires_at_ms"] <= now_ms:
        return None
    return Principal(row["role"], row["subject_id"], hash_token(token))


def _admin_change(db: Session, kind: str, subject: str, now_ms: int) -> None:
    """Tell the running coordinator, which polls this table, what an operator changed."""
    db.table("admin_changes").insert({"kind": kind, "subject": subject, "at_ms": now_ms})


def revoke_tokens(
    db: Session, now_ms: int, token: str | None = None, subject_id: str | None = None
) -> list[str]:
    """Revoke one token, or every token of a subject; returns the hashes revoked."""
    if (token is None) == (subject_id is None):
        raise ValueError("name either the token or the subject whose tokens to revoke")
    if token is not None:
        rows = list(
            db.query("SELECT token_hash FROM tokens WHERE token_hash = ?", [hash_token(token)])
        )
        if not rows:
            raise NotFound("no such token")
    else:
        rows = list(
            db.query(
                "SELECT token_hash FROM tokens WHERE subject_id = ? AND revoked = 0", [subject_id]
            )
        )
        if not rows:
            raise NotFound(f"{subject_id} has no unrevoked tokens")
    hashes = [str(row["token_hash"]) for row in rows]
    for token_hash in hashes:
        db.execute("UPDATE tokens SET revoked = 1 WHERE token_hash = ?", [token_hash])
        _admin_change(db, "revoke_token", token_hash, now_ms)
    return hashes


def revoke_agent(db: Session, agent_id: str, now_ms: int) -> dict[str, Any]:
    """Revoke an agent's key for good: its requests are refused and its leases are lost."""
    rows = list(
        db.query(
            "SELECT agent_id, provider_id, revoked_at_ms FROM agents WHERE agent_id = ?", [agent_id]
        )
    )
    if not rows:
        raise NotFound(f"no agent {agent_id}")
    if rows[0]["revoked_at_ms"] is None:
        db.execute("UPDATE agents SET revoked_at_ms = ? WHERE agent_id = ?", [now_ms, agent_id])
        _admin_change(db, "revoke_agent", agent_id, now_ms)
    return {
        "agent_id": agent_id,
        "provider_id": rows[0]["provider_id"],
        "revoked_at_ms": rows[0]["revoked_at_ms"] or now_ms,
    }


def list_flags(
    db: Session, include_cleared: bool = False, agent_id: str | None = None
) -> list[dict[str, Any]]:
    where = ["1 = 1" if include_cleared else "cleared_at_ms IS NULL"]
    params: list[Any] = []
    if agent_id is not None:
        where.append("agent_id = ?")
        params.append(agent_id)
    return list(
        db.query(
            "SELECT id, agent_id, gpu_uuid, kind, detail, at_ms, cleared_at_ms FROM capacity_flags "
            f"WHERE {' AND '.join(where)} ORDER BY id",
            params,
        )
    )


def clear_flag(db: Session, flag_id: int, now_ms: int) -> dict[str, Any]:
    """Clear an open capacity flag: the running coordinator then believes the GPU as reported.

    A cleared uuid_conflict hands the GPU to the agent that claimed it; a cleared
    gpu_missing forgets the GPU; a cleared memory_changed takes the new size."""
    rows = list(db.query("SELECT * FROM capacity_flags WHERE id = ?", [flag_id]))
    if not rows:
        raise NotFound(f"no flag {flag_id}")
    flag = rows[0]
    if flag["cleared_at_ms"] is not None:
        raise Conflict(f"flag {flag_id} was already cleared")
    db.execute("UPDATE capacity_flags SET cleared_at_ms = ? WHERE id = ?", [now_ms, flag_id])
    if flag["kind"] == "uuid_conflict":
        db.execute(
            "UPDATE gpus SET agent_id = ? WHERE uuid = ?", [flag["agent_id"], flag["gpu_uuid"]]
        )
    elif flag["kind"] == "gpu_missing":
        db.execute(
            "DELETE FROM gpus WHERE uuid = ? AND agent_id = ?", [flag["gpu_uuid"], flag["agent_id"]]
        )
    _admin_change(db, "clear_flag", f"{flag['agent_id']}|{flag['gpu_uuid']}|{flag['kind']}", now_ms)
    return {**flag, "cleared_at_ms": now_ms}


def redeem_enrolment_token(db: Session, token: str, now_ms: int) -> str:
    """Use one host's worth of an enrolment token; returns the provider id."""
    rows = list(
        db.query(
            "SELECT subject_id, uses_left, revoked, expires_at_ms FROM tokens "
            "WHERE token_hash = ? AND role = 'enrolment'",
            [hash_token(token)],
        )
    )
    if not rows:
        raise Unauthenticated("the enrolment token is not known")
    row = rows[0]
    if row["revoked"] or (row["uses_left"] is not None and row["uses_left"] <= 0):
        raise Unauthenticated("the enrolment token has been used up or revoked")
    if row["expires_at_ms"] is not None and row["expires_at_ms"] <= now_ms:
        raise Unauthenticated("the enrolment token has expired")
    if row["uses_left"] is not None:
        db.execute(
            "UPDATE tokens SET uses_left = uses_left - 1 WHERE token_hash = ?", [hash_token(token)]
        )
    return str(row["subject_id"])


def list_accounts(db: Session) -> dict[str, list[dict[str, Any]]]:
    return {
        "providers": list(
            db.query(
                "SELECT p.id, p.name, p.uscc, p.created_at_ms, "
                "(SELECT COUNT(*) FROM agents a WHERE a.provider_id = p.id) AS agents "
                "FROM providers p ORDER BY p.created_at_ms"
            )
        ),
        "enterprises": list(
            db.query("SELECT id, name, uscc, created_at_ms FROM enterprises ORDER BY created_at_ms")
        ),
        "auditors": list(
            db.query("SELECT id, name, created_at_ms FROM auditors ORDER BY created_at_ms")
        ),
    }
