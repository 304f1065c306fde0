"""The incremental Merkle tree over a hash store: appended in batches, reopened, interrupted,
and reading only the few stored hashes it needs; checked against shared.merkle's batch functions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import merkle
from shared.errors import ProofError
from shared.merkle import MemoryHashStore, MerkleTree

MAX = 64
LEAVES = [b"entry %d" % i * (i % 3 + 1) for i in range(MAX)]
NOT_BYTES: Any = "x"  # typed Any so that appending it type-checks


def test_incremental_tree_serves_every_earlier_size_like_the_batch_functions() -> None:
    tree = MerkleTree()
    for index, data in enumerate(LEAVES):
        assert tree.append(data) == index
        assert tree.root() == merkle.root(LEAVES[: index + 1])
    for size in range(1, MAX + 1):
        leaves = LEAVES[:size]
        assert tree.root(size) == merkle.root(leaves)
        for index in range(size):
            assert tree.inclusion_proof(index, size) == merkle.inclusion_proof(leaves, index)
        for old in range(1, size + 1):
            assert tree.consistency_proof(old, size) == merkle.consistency_proof(leaves, old)


def test_tree_defaults_to_its_current_size() -> None:
    tree = MerkleTree()
    tree.append_many(LEAVES[:13])
    assert tree.size == 13
    assert tree.inclusion_proof(4) == merkle.inclusion_proof(LEAVES[:13], 4)
    assert tree.consistency_proof(5) == merkle.consistency_proof(LEAVES[:13], 5)
    assert tree.leaf_hash_at(12) == merkle.leaf_hash(LEAVES[12])


def test_append_many_returns_the_first_index() -> None:
    tree = MerkleTree()
    assert tree.append_many(LEAVES[:3]) == 0
    assert tree.append_many([]) == 3
    assert tree.append_many(LEAVES[3:7]) == 3
    assert tree.size == 7
    assert tree.root() == merkle.root(LEAVES[:7])


# Hypothesis: arbitrary entries, batching and reopening.

entries = st.lists(st.binary(max_size=12), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(leaves=entries, chunk=st.integers(1, 9), data=st.data())
def test_tree_built_in_chunks_matches_batch(
    leaves: list[bytes], chunk: int, data: st.DataObject
) -> None:
    tree = MerkleTree()
    for start in range(0, len(leaves), chunk):
        tree.append_many(leaves[start : start + chunk])
    size = data.draw(st.integers(1, len(leaves)))
    index = data.draw(st.integers(0, size - 1))
    old = data.draw(st.integers(1, size))
    prefix = leaves[:size]
    assert tree.root(size) == merkle.root(prefix)
    assert tree.inclusion_proof(index, size) == merkle.inclusion_proof(prefix, index)
    assert tree.consistency_proof(old, size) == merkle.consistency_proof(prefix, old)


@settings(max_examples=60, deadline=None)
@given(leaves=entries, data=st.data())
def test_reopened_tree_continues_where_it_left_off(
    leaves: list[bytes], data: st.DataObject
) -> None:
    split = data.draw(st.integers(0, len(leaves)))
    store = MemoryHashStore()
    MerkleTree(store).append_many(leaves[:split])
    reopened = MerkleTree(store)
    assert reopened.size == split
    assert reopened.root() == merkle.root(leaves[:split])
    assert reopened.append_many(leaves[split:]) == split
    for size in range(1, len(leaves) + 1):
        assert reopened.root(size) == merkle.root(leaves[:size])
    assert MerkleTree(store).root() == merkle.root(leaves)


def test_append_after_an_interrupted_one_overwrites_its_leftovers() -> None:
    store = MemoryHashStore()
    MerkleTree(store).append_many(LEAVES[:5])
    # As if a crash hit between put_many and set_size while appending other entries.
    store.put_many([(0, 5, merkle.leaf_hash(b"lost")), (1, 2, bytes(32))])
    tree = MerkleTree(store)
    tree.append_many(LEAVES[5:9])
    assert tree.root() == merkle.root(LEAVES[:9])
    assert tree.root(6) == merkle.root(LEAVES[:6])


def test_failed_append_leaves_the_tree_unchanged() -> None:
    tree = MerkleTree()
    tree.append_many(LEAVES[:3])
    with pytest.raises(ProofError):
        tree.append_many([LEAVES[3], NOT_BYTES])
    assert tree.size == 3
    assert tree.append(LEAVES[3]) == 3
    assert tree.root() == merkle.root(LEAVES[:4])


# The tree reads O(log n) stored hashes, never the whole log.


class CountingStore(MemoryHashStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def get(self, level: int, index: int) -> bytes:
        self.gets += 1
        return super().get(level, index)


def test_tree_reads_few_stored_hashes() -> None:
    store = CountingStore()
    tree = MerkleTree(store)
    tree.append_many(b"%d" % i for i in range(1000))
    tree.root()
    assert store.gets == 0
    MerkleTree(store)
    assert store.gets == (1000).bit_count()
    store.gets = 0
    tree.inclusion_proof(611, 999)
    tree.consistency_proof(333, 999)
    tree.root(777)
    assert store.gets <= 3 * 10 * 10
