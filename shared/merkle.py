"""The RFC 9162 §2.1 Merkle tree of the log: hashes, inclusion and consistency proofs, their
verifiers, and an incremental tree that serves roots and proofs for any earlier size.

Proof generators raise ProofError for requests that make no sense (an index outside the tree,
a consistency proof from the empty tree). Verifiers raise ProofError only for malformed
arguments (a hash that is not 32 bytes, a size or index that is not an int or is out of range)
and return False for every well-formed proof that does not verify, including one that is too
long or too short.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from shared.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

# Hash of the leaves [start, end) of some tree, as RFC 9162 defines MTH over that range.
_RangeHash = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """Hash of one entry: SHA-256(0x00 || data)."""
    if not isinstance(data, bytes):
        raise ProofError("a Merkle leaf must be bytes")
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: SHA-256(0x01 || left || right)."""
    _check_hash(left, "left child hash")
    _check_hash(right, "right child hash")
    return _node(left, right)


def root(leaves: list[bytes]) -> bytes:
    """Root of the tree over these entries; SHA-256(b"") for no entries."""
    return _mth([leaf_hash(data) for data in leaves])


def inclusion_proof(leaves: list[bytes], index: int) -> list[bytes]:
    """Audit path (RFC 9162 §2.1.3.1 PATH) for the entry at `index`, deepest sibling first."""
    _check_int(index, "leaf index")
    if not 0 <= index < len(leaves):
        raise ProofError(f"leaf index {index} is outside a tree of {len(leaves)} leaves")
    hashes = [leaf_hash(data) for data in leaves]
    return _path(index, len(hashes), lambda start, end: _mth(hashes[start:end]))


def consistency_proof(leaves: list[bytes], old_size: int) -> list[bytes]:
    """Proof (RFC 9162 §2.1.4.1 PROOF) that the first `old_size` entries are a prefix of these."""
    _check_int(old_size, "old tree size")
    if not 0 < old_size <= len(leaves):
        raise ProofError(f"a consistency proof needs 0 < old size <= {len(leaves)}, not {old_size}")
    hashes = [leaf_hash(data) for data in leaves]
    return _subproof(old_size, len(hashes), lambda start, end: _mth(hashes[start:end]))


def verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """Whether `proof` shows entry `leaf` at `index` in the tree of `size` leaves with `root`.

    Raises ProofError for malformed arguments: a hash that is not 32 bytes, a non-int index or
    size, or an index outside 0 <= index < size (so size 0 always raises).
    """
    return verify_inclusion_hash(leaf_hash(leaf), index, size, proof, root)


def verify_inclusion_hash(
    leaf_hash: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> bool:
    """verify_inclusion for a leaf hash already computed; same errors, same answers."""
    _check_int(index, "leaf index")
    _check_int(size, "tree size")
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of {size} leaves")
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root")
    _check_proof(proof)
    # RFC 9162 §2.1.3.2, step for step.
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> bool:
    """Whether `proof` shows the tree of `old_size` with `old_root` is a prefix of the tree of
    `new_size` with `new_root`. Equal sizes verify only with an empty proof and equal roots.

    Raises ProofError for malformed arguments: a hash that is not 32 bytes, a non-int size,
    old_size 0 (RFC 9162 defines no proof from the empty tree) or old_size > new_size.
    """
    _check_int(old_size, "old tree size")
    _check_int(new_size, "new tree size")
    if not 0 < old_size <= new_size:
        raise ProofError(
            f"a consistency proof needs 0 < old size <= new size, not {old_size} and {new_size}"
        )
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    _check_proof(proof)
    if old_size == new_size:
        return not proof and old_root == new_root
    # RFC 9162 §2.1.4.2, step for step.
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _node(c, fr)
            sr = _node(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class HashStore(Protocol):
    """Where a MerkleTree keeps its hashes: the hash of each complete perfect subtree, keyed by
    (level, index) for the leaves [index * 2**level, (index + 1) * 2**level), and the leaf count.

    A tree writes hashes before the size, so a store that can be interrupted between the two
    must let put_many overwrite the leftovers beyond the stored size; a store that writes both
    in one transaction has none, and may refuse a key it already holds.
    """

    def get(self, level: int, index: int) -> bytes:
        """The stored hash; raises KeyError if there is none."""
        ...

    def put_many(self, items: list[tuple[int, int, bytes]]) -> None:
        """Store (level, index, hash) triples."""
        ...

    def size(self) -> int:
        """The number of leaves appended so far."""
        ...

    def set_size(self, size: int) -> None:
        """Record the number of leaves once their hashes are stored."""
        ...


class MemoryHashStore:
    """A HashStore in a dict, for tests and short-lived trees."""

    def __init__(self) -> None:
        self._hashes: dict[tuple[int, int], bytes] = {}
        self._size = 0

    def get(self, level: int, index: int) -> bytes:
        return self._hashes[level, index]

    def put_many(self, items: list[tuple[int, int, bytes]]) -> None:
        for level, index, value in items:
            self._hashes[level, index] = value

    def size(self) -> int:
        return self._size

    def set_size(self, size: int) -> None:
        self._size = size


class MerkleTree:
    """An append-only RFC 9162 tree over a HashStore: O(log n) hashes per append, and roots and
    proofs for any earlier size from stored subtree hashes. Not safe for concurrent writers.
    """

    def __init__(self, store: HashStore | None = None) -> None:
        self._store: HashStore = store if store is not None else MemoryHashStore()
        self._size = self._store.size()
        # The perfect subtrees that tile [0, size), largest first: one per set bit of size.
        # Keeping them in memory lets append and the current root skip the store.
        self._frontier = [self._subtree(level, start) for level, start in _tiles(0, self._size)]

    @property
    def size(self) -> int:
        return self._size

    def append(self, data: bytes) -> int:
        """Add one entry; returns its index."""
        return self.append_many([data])

    def append_many(self, datas: Iterable[bytes]) -> int:
        """Add entries in order with one store write; returns the index of the first."""
        first = self._size
        size = first
        frontier = list(self._frontier)
        items: list[tuple[int, int, bytes]] = []
        for data in datas:
            value = leaf_hash(data)
            level, index = 0, size
            items.append((level, index, value))
            while index & 1:
                value = _node(frontier.pop(), value)
                level, index = level + 1, index >> 1
                items.append((level, index, value))
            frontier.append(value)
            size += 1
        if size == first:
            return first
        self._store.put_many(items)
        self._store.set_size(size)
        self._size, self._frontier = size, frontier
        return first

    def leaf_hash_at(self, index: int) -> bytes:
        """The leaf hash of the entry at `index`."""
        _check_int(index, "leaf index")
        if not 0 <= index < self._size:
            raise ProofError(f"leaf index {index} is outside a tree of {self._size} leaves")
        return self._store.get(0, index)

    def root(self, size: int | None = None) -> bytes:
        """Root of the tree of the first `size` entries (default: all)."""
        size = self._checked_size(size)
        if size == 0:
            return EMPTY_ROOT
        if size == self._size:
            return _fold(self._frontier)
        return self._range_hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path for the entry at `index` in the tree of the first `size` entries."""
        size = self._checked_size(size)
        _check_int(index, "leaf index")
        if not 0 <= index < size:
            raise ProofError(f"leaf index {index} is outside a tree of {size} leaves")
        return _path(index, size, self._range_hash)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Proof that the tree of `old_size` entries is a prefix of the tree of `new_size`."""
        new_size = self._checked_size(new_size)
        _check_int(old_size, "old tree size")
        if not 0 < old_size <= new_size:
            raise ProofError(
                f"a consistency proof needs 0 < old size <= {new_size}, not {old_size}"
            )
        return _subproof(old_size, new_size, self._range_hash)

    def _checked_size(self, size: int | None) -> int:
        if size is None:
            return self._size
        _check_int(size, "tree size")
        if not 0 <= size <= self._size:
            raise ProofError(f"tree size {size} is outside 0..{self._size}")
        return size

    def _range_hash(self, start: int, end: int) -> bytes:
        # Every range a proof asks for starts at a multiple of a power of two at least as large
        # as the range, so it tiles into stored perfect subtrees whose right fold is its MTH.
        return _fold([self._subtree(level, first) for level, first in _tiles(start, end)])

    def _subtree(self, level: int, first: int) -> bytes:
        return self._store.get(level, first >> level)


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n, for n >= 2."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes; pairing level by level and lifting a lone last node is the same
    tree as RFC 9162's split at the largest power of two."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        parents = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            parents.append(level[-1])
        level = parents
    return level[0]


def _tiles(start: int, end: int) -> list[tuple[int, int]]:
    """(level, first leaf) of the perfect subtrees tiling [start, end), largest first; start
    must be a multiple of the largest."""
    tiles = []
    while start < end:
        level = (end - start).bit_length() - 1
        tiles.append((level, start))
        start += 1 << level
    return tiles


def _fold(hashes: list[bytes]) -> bytes:
    value = hashes[-1]
    for left in reversed(hashes[:-1]):
        value = _node(left, value)
    return value


def _path(index: int, size: int, range_hash: _RangeHash) -> list[bytes]:
    """RFC 9162 PATH(index, D[0:size]), unrolled: siblings are found top-down, listed bottom-up."""
    proof = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            proof.append(range_hash(start + k, end))
            end = start + k
        else:
            proof.append(range_hash(start, start + k))
            start += k
    proof.reverse()
    return proof


def _subproof(old_size: int, size: int, range_hash: _RangeHash) -> list[bytes]:
    """RFC 9162 SUBPROOF(old_size, D[0:size], true), unrolled like _path."""
    proof = []
    start, end = 0, size
    old_is_whole_subtree = True  # the RFC's b
    while old_size < end:
        k = _split(end - start)
        if old_size - start <= k:
            proof.append(range_hash(start + k, end))
            end = start + k
        else:
            proof.append(range_hash(start, start + k))
            start += k
            old_is_whole_subtree = False
    if not old_is_whole_subtree:
        proof.append(range_hash(start, end))
    proof.reverse()
    return proof


def _check_int(value: object, what: str) -> None:
    # bool is an int subclass, but True as an index is a caller's bug, not a position.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProofError(f"the {what} must be an int")


def _check_hash(value: object, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"the {what} must be {HASH_SIZE} bytes")


def _check_proof(proof: object) -> None:
    if not isinstance(proof, (list, tuple)):
        raise ProofError("a Merkle proof must be a list of hashes")
    for value in proof:
        _check_hash(value, "proof hash")
