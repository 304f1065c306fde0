"""`suanli-coordinator admin migrate --from sqlite:PATH --to postgresql://...`: move a market
from its SQLite file into an empty PostgreSQL database, so that the log's root, its signed
checkpoints and an auditor's saved state carry across.

The move runs while no coordinator serves the file (it takes the serving process's lock), copies
in one PostgreSQL transaction (`coordinator.storage.copy`), and before committing recomputes
the log's root from the copied entries and checks the ledger on the copy; a difference rolls
the whole copy back. The SQLite file is only read. Keys are files, not rows: the log's key
stays where it is, and the PostgreSQL coordinator's `log_key_file` names it.
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from coordinator import billing
from coordinator.cli.output import print_result
from coordinator.config import load_settings, log_key_location
from coordinator.storage import Session, describe, is_postgres_url, sqlite, sqlite_path
from coordinator.storage.copy import (
    Copied,
    CopyFailed,
    CopyRefused,
    copy_database,
    source_database,
    target_database,
)
from coordinator.tlog import tree
from shared.merkle import MerkleTree

HELP = (
    "copy a stopped market from its SQLite file into an empty PostgreSQL database, in one "
    "transaction (takes --from and --to, not admin's --db)"
)
ENTRIES_PER_READ = 10_000


def add_migrate_task(
    tasks: argparse._SubParsersAction[argparse.ArgumentParser], json_flag: argparse.ArgumentParser
) -> None:
    task = tasks.add_parser(
        "migrate",
        parents=[json_flag],
        help=HELP,
        description=HELP + ". Stop the coordinator first; the SQLite file is only read. "
        "Afterwards serve --db with the PostgreSQL URL, with log_key_file in coordinator.toml "
        "naming the log key the SQLite coordinator used (PATH.key unless it set log_key_file).",
    )
    task.add_argument(
        "--from",
        dest="source",
        required=True,
        type=_source_flag,
        metavar="sqlite:PATH",
        help="the SQLite database file (sqlite:PATH or a plain path)",
    )
    task.add_argument(
        "--to",
        dest="target",
        required=True,
        type=_target_flag,
        metavar="postgresql://USER@HOST/DBNAME",
        help="an empty PostgreSQL database (its schema is created if it has none)",
    )
    task.set_defaults(run=cmd_migrate, needs_db=False)


def _source_flag(text: str) -> Path:
    if is_postgres_url(text) or "://" in text:
        raise argparse.ArgumentTypeError(
            f"{describe(text)} is not a SQLite file; --from names the SQLite database to move "
            "(sqlite:PATH or a path)"
        )
    return sqlite_path(text)


def _target_flag(text: str) -> str:
    if not is_postgres_url(text):
        shown = f"{text.split('://', 1)[0]}://..." if "://" in text else text
        raise argparse.ArgumentTypeError(
            f"{shown}: the move goes into PostgreSQL; give --to as postgresql://USER@HOST/DBNAME"
        )
    return text


@dataclass(frozen=True)
class LogState:
    """The log as its rows say: its size, the root its stored hashes give, and the root
    recomputed from its entries alone."""

    size: int
    stored_root: bytes
    entries_root: bytes


@dataclass(frozen=True)
class Checked:
    before: LogState  # the SQLite file's log
    after: LogState  # the copy's, read back inside the copy's transaction
    ledger_problems: list[str]


def cmd_migrate(args: argparse.Namespace) -> int:
    source_path: Path = args.source
    if args.db is not None:
        raise CopyRefused("migrate takes --from and --to, not admin's --db")
    if not source_path.is_file():  # before the lock beside it is made
        raise CopyRefused(f"--from {source_path}: no SQLite database there")
    with _unserved(source_path), source_database(source_path) as source:
        with target_database(args.target) as target:
            copied = copy_database(source, target, _check)
    _report(args, source_path, copied)
    return 0


@contextmanager
def _unserved(path: Path) -> Iterator[None]:
    """Hold the lock a coordinator serving `path` holds (coordinator.serving), or refuse."""
    try:
        with sqlite.sole_user(path):
            yield
    except sqlite.InUse:
        raise CopyRefused(
            f"a suanli-coordinator is serving {path}: stop it, then migrate (the move "
            "copies a market at rest; nothing was copied)"
        ) from None
    except OSError as exc:
        raise CopyRefused(f"cannot take the lock beside {path}: {exc.strerror}") from None


def log_state(db: Session) -> LogState:
    stored = tree(db)
    recomputed = MerkleTree(_FrontierOnly())
    while batch := db.conn.execute(
        "SELECT idx, data FROM log_entries WHERE idx >= ? ORDER BY idx LIMIT ?",
        [recomputed.size, ENTRIES_PER_READ],
    ).fetchall():
        if batch[0][0] != recomputed.size or batch[-1][0] != recomputed.size + len(batch) - 1:
            raise CopyFailed(f"the log's entries are not numbered 0..n (near {batch[0][0]})")
        recomputed.append_many(bytes(data) for _, data in batch)
    if recomputed.size != stored.size:
        raise CopyFailed(f"the log has {recomputed.size} entries but says {stored.size}")
    return LogState(stored.size, stored.root(), recomputed.root())


class _FrontierOnly:
    """A merkle HashStore keeping nothing: a tree over it knows only its current root, which is
    all a recomputation needs (in memory for any size of log)."""

    def __init__(self) -> None:
        self._size = 0

    def get(self, level: int, index: int) -> bytes:
        raise KeyError((level, index))

    def put_many(self, items: list[tuple[int, int, bytes]]) -> None:
        pass

    def size(self) -> int:
        return self._size

    def set_size(self, size: int) -> None:
        self._size = size


def _check(source: Session, target: Session) -> Checked:
    """The log recomputed on both sides and the ledger checked on the copy; raising rolls the
    copy back."""
    before = log_state(source)
    if before.stored_root != before.entries_root:
        raise CopyRefused(
            "the log's stored hashes in the SQLite file do not match its entries; run "
            "`suanli audit verify` against its coordinator before moving it"
        )
    after = log_state(target)
    if after != before:
        raise CopyFailed(
            f"the copied log ({after.size} entries, root {_b64(after.entries_root)}) differs "
            f"from the SQLite file's ({before.size}, {_b64(before.entries_root)}); nothing "
            "was written"
        )
    problems = billing.check_invariants(target)
    if problems:
        raise CopyFailed(
            f"the ledger check fails on the copy ({'; '.join(problems[:3])}); `admin --db "
            "PATH check-ledger` shows whether the SQLite file fails it too; nothing was written"
        )
    return Checked(before, after, problems)


def _b64(root: bytes) -> str:
    return base64.b64encode(root).decode()


def _report(args: argparse.Namespace, source_path: Path, copied: Copied[Checked]) -> None:
    before, after = copied.checked.before, copied.checked.after
    key = log_key_location(load_settings(args.config), str(source_path)).resolve()
    data: dict[str, object] = {
        "from": str(source_path),
        "to": describe(args.target),
        "rows": copied.rows,
        "tables": copied.tables,
        "sequences": copied.sequences,
        "log": {
            "size_before": before.size,
            "size_after": after.size,
            "root_before": _b64(before.entries_root),
            "root_after": _b64(after.entries_root),
        },
        "ledger": {
            "ok": not copied.checked.ledger_problems,
            "problems": copied.checked.ledger_problems,
        },
        "log_key_file": str(key),
        "log_key_found": key.is_file(),
    }
    lines = [
        f"copied {copied.rows} rows in {len(copied.tables)} tables from {source_path} into "
        f"{describe(args.target)}, in one transaction",
        *(f"  {name:<28} {count:>10}" for name, count in copied.tables.items()),
        f"log before: {before.size} entries, root {_b64(before.entries_root)}",
        f"log after:  {after.size} entries, root {_b64(after.entries_root)} (recomputed from "
        "the copied entries, and the same from their stored hashes)",
        "ledger ok: every balance, limit and usage transfer checks out on the copy",
        f"next: set log_key_file = {str(key)!r} in coordinator.toml ([coordinator] table), then "
        f"serve --db {describe(args.target)}",
    ]
    if not key.is_file():
        lines.append(
            f"WARNING: no log key at {key}: serve refuses the moved log without the key that "
            "signed its checkpoints; find it (and any *.retired keys beside it) first"
        )
    print_result(args, data, "\n".join(lines))
