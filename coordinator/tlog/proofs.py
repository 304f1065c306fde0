"""What auditors read from the log: pages of entries and the tree's inclusion and consistency
proofs, refusing ranges the log does not hold in the API's error shape."""

from __future__ import annotations

from coordinator.errors import NotFound, Unprocessable
from coordinator.storage import Session
from coordinator.tlog.store import size, tree

MAX_PAGE = 1000
# base64 makes a page a third larger again; an entry larger than this still comes alone
MAX_PAGE_BYTES = 8 << 20


def entries(db: Session, start: int, end: int) -> list[bytes]:
    """The entries [start, end), at most MAX_PAGE of them and about MAX_PAGE_BYTES (at least one).

    Raises Unprocessable for an empty or inverted range and NotFound past the end of the log.
    """
    current = size(db)
    _need_range(0 <= start < end, f"start must be below end, not {start} and {end}")
    _need_within(end, current, "end")
    end = min(end, start + MAX_PAGE)
    page: list[bytes] = []
    total = 0
    rows = db.conn.execute(
        "SELECT idx, data FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx", [start, end]
    )
    for idx, data in rows:
        if idx != start + len(page):
            break
        if page and total + len(data) > MAX_PAGE_BYTES:
            return page
        page.append(bytes(data))
        total += len(data)
    if len(page) < end - start:
        raise RuntimeError(f"log entry {start + len(page)} is missing from the database")
    return page


def inclusion(db: Session, index: int, tree_size: int) -> list[bytes]:
    """Audit path of entry `index` in the tree of the first `tree_size` entries."""
    log_tree = tree(db)
    _need_within(tree_size, log_tree.size, "size")
    _need_range(
        0 <= index < tree_size, f"index {index} is not an entry of a tree of {tree_size} entries"
    )
    return log_tree.inclusion_proof(index, tree_size)


def consistency(db: Session, old: int, new: int) -> list[bytes]:
    """Proof that the tree of `old` entries is a prefix of the tree of `new` entries."""
    log_tree = tree(db)
    _need_within(new, log_tree.size, "new")
    _need_range(0 < old <= new, f"a consistency proof needs 0 < old <= new, not {old} and {new}")
    return log_tree.consistency_proof(old, new)


def _need_range(ok: bool, detail: str) -> None:
    if not ok:
        raise Unprocessable(detail)


def _need_within(value: int, current: int, name: str) -> None:
    if value > current:
        raise NotFound(f"{name} {value} is beyond the log, which has {current} entries")
