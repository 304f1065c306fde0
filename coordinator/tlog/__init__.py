"""The transparency log: an append-only RFC 9162 Merkle tree of `shared.log_entries` entries
kept in the coordinator's database, its C2SP checkpoints signed with the coordinator's log key,
and the public HTTP API auditors read.

`store` appends entries and the tree's hashes in the caller's transaction (so a receipt, its
postings and its leaf commit together) and finds entries by key; `proofs` reads pages and
proofs; `records` logs registrations and the voucher policy once; `keys` follows the log key
through its rotations, which `rotation` makes; `checkpoints` signs; `routes` serves. The log's
tables are migration 4 of `coordinator.storage.migrations`.
"""

from coordinator.tlog.checkpoints import checkpoint_loop, latest_checkpoint, sign_checkpoint
from coordinator.tlog.keys import (
    LogKey,
    LogKeyMissing,
    archived_key_path,
    default_origin,
    log_key_changes,
    pending_key_path,
    verifier_key_text,
)
from coordinator.tlog.proofs import consistency, entries, inclusion
from coordinator.tlog.records import append_unless_logged, log_registrations, log_voucher_policy
from coordinator.tlog.rotation import rotate_log_key
from coordinator.tlog.routes import (
    ROUTES,
    TLOG,
    TransparencyLog,
    add_routes,
    checkpoint_ctx,
)
from coordinator.tlog.store import append_entries, find_agent_key, find_receipt, size, tree

__all__ = [
    "ROUTES",
    "TLOG",
    "LogKey",
    "LogKeyMissing",
    "TransparencyLog",
    "add_routes",
    "append_entries",
    "append_unless_logged",
    "archived_key_path",
    "checkpoint_ctx",
    "checkpoint_loop",
    "consistency",
    "default_origin",
    "entries",
    "find_agent_key",
    "find_receipt",
    "inclusion",
    "latest_checkpoint",
    "log_key_changes",
    "log_registrations",
    "log_voucher_policy",
    "pending_key_path",
    "rotate_log_key",
    "sign_checkpoint",
    "size",
    "tree",
    "verifier_key_text",
]
