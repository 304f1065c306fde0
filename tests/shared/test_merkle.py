"""The RFC 9162 Merkle tree functions against published vectors, an independent reference, and
themselves: proofs built, verified, tampered with, and malformed arguments refused."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import merkle
from shared.errors import ProofError
from shared.merkle import MerkleTree


def h(hex_digest: str) -> bytes:
    return bytes.fromhex(hex_digest)


# The certificate-transparency test leaves and roots, as used by transparency-dev/merkle.
CT_LEAVES = [
    h(x)
    for x in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
H0 = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
H1 = "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"
H23 = "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"
H45 = "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"
H4567 = "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"
H0123 = CT_ROOTS[3]

# (index, size, path) from the CT suite; the CT tables count leaves from 1, these from 0.
CT_INCLUSION = [
    (0, 8, [H1, H23, H4567]),
    (5, 8, [H45, "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", H0123]),
    (2, 3, [CT_ROOTS[1]]),
    (1, 5, [H0, H23, H45]),
]
# (old size, new size, proof) from the CT suite.
CT_CONSISTENCY = [
    (1, 8, [H1, H23, H4567]),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            H0123,
        ],
    ),
    (2, 5, [H23, H45]),
]

MAX = 64
LEAVES = [b"entry %d" % i * (i % 3 + 1) for i in range(MAX)]


# A reference written straight from RFC 9162 §2.1, recursion and all, sharing nothing with
# the module under test.
def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def ref_mth(d: tuple[bytes, ...]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: tuple[bytes, ...], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def flip(value: bytes) -> bytes:
    return bytes([value[0] ^ 1]) + value[1:]


def full_tree(leaves: list[bytes]) -> MerkleTree:
    tree = MerkleTree()
    tree.append_many(leaves)
    return tree


# Known vectors.


def test_empty_root_is_sha256_of_nothing() -> None:
    empty = h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert merkle.root([]) == empty
    assert MerkleTree().root() == empty
    assert full_tree(LEAVES[:5]).root(0) == empty


def test_hash_primitives_use_rfc_prefixes() -> None:
    assert merkle.leaf_hash(b"") == h(H0)
    assert merkle.node_hash(h(H0), h(H1)) == h(CT_ROOTS[1])


@pytest.mark.parametrize("size", range(1, 9))
def test_ct_roots(size: int) -> None:
    assert merkle.root(CT_LEAVES[:size]) == h(CT_ROOTS[size - 1])
    assert full_tree(CT_LEAVES).root(size) == h(CT_ROOTS[size - 1])


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_ct_inclusion_vectors(index: int, size: int, path: list[str]) -> None:
    proof = [h(x) for x in path]
    assert merkle.inclusion_proof(CT_LEAVES[:size], index) == proof
    assert full_tree(CT_LEAVES).inclusion_proof(index, size) == proof
    root = h(CT_ROOTS[size - 1])
    assert merkle.verify_inclusion(CT_LEAVES[index], index, size, proof, root)


@pytest.mark.parametrize(("old", "new", "path"), CT_CONSISTENCY)
def test_ct_consistency_vectors(old: int, new: int, path: list[str]) -> None:
    proof = [h(x) for x in path]
    assert merkle.consistency_proof(CT_LEAVES[:new], old) == proof
    assert full_tree(CT_LEAVES).consistency_proof(old, new) == proof
    old_root, new_root = h(CT_ROOTS[old - 1]), h(CT_ROOTS[new - 1])
    assert merkle.verify_consistency(old, new, old_root, new_root, proof)


# Exhaustive agreement with the reference on every size up to 64.


@pytest.mark.parametrize("size", range(1, MAX + 1))
def test_inclusion_matches_reference_and_verifies(size: int) -> None:
    leaves = LEAVES[:size]
    root = merkle.root(leaves)
    assert root == ref_mth(tuple(leaves))
    for index in range(size):
        proof = merkle.inclusion_proof(leaves, index)
        assert proof == ref_path(index, tuple(leaves))
        assert merkle.verify_inclusion(leaves[index], index, size, proof, root)
        assert merkle.verify_inclusion_hash(
            merkle.leaf_hash(leaves[index]), index, size, proof, root
        )


@pytest.mark.parametrize("new", range(1, MAX + 1))
def test_consistency_matches_reference_and_verifies(new: int) -> None:
    leaves = LEAVES[:new]
    new_root = merkle.root(leaves)
    for old in range(1, new + 1):
        proof = merkle.consistency_proof(leaves, old)
        assert proof == ref_subproof(old, tuple(leaves), True)
        assert merkle.verify_consistency(old, new, ref_mth(tuple(leaves[:old])), new_root, proof)


hashes = st.binary(min_size=32, max_size=32)


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(1, 2**40),
    data=st.data(),
    proof=st.lists(hashes, max_size=45),
    leaf=st.binary(max_size=8),
    root=hashes,
)
def test_random_inclusion_proofs_are_refused_not_raised(
    size: int, data: st.DataObject, proof: list[bytes], leaf: bytes, root: bytes
) -> None:
    index = data.draw(st.integers(0, size - 1))
    assert merkle.verify_inclusion(leaf, index, size, proof, root) is False


@settings(max_examples=100, deadline=None)
@given(
    new=st.integers(2, 2**40),
    data=st.data(),
    proof=st.lists(hashes, max_size=45),
    roots=st.tuples(hashes, hashes),
)
def test_random_consistency_proofs_are_refused_not_raised(
    new: int, data: st.DataObject, proof: list[bytes], roots: tuple[bytes, bytes]
) -> None:
    old = data.draw(st.integers(1, new - 1))
    assert merkle.verify_consistency(old, new, roots[0], roots[1], proof) is False


# Rejections of well-formed proofs that do not verify.

SMALL = 17


def tampered(proof: list[bytes]) -> list[list[bytes]]:
    """Each hash changed, a hash appended, and each hash removed."""
    variants = [proof[:i] + [flip(p)] + proof[i + 1 :] for i, p in enumerate(proof)]
    variants.append(proof + [merkle.leaf_hash(b"extra")])
    variants.append(proof + [proof[-1]] if proof else [merkle.root(LEAVES[:1])])
    variants += [proof[:i] + proof[i + 1 :] for i in range(len(proof))]
    return variants


@pytest.mark.parametrize("size", range(1, SMALL))
def test_tampered_inclusion_proofs_fail(size: int) -> None:
    leaves = LEAVES[:size]
    root = merkle.root(leaves)
    for index in range(size):
        proof = merkle.inclusion_proof(leaves, index)
        for bad in tampered(proof):
            assert not merkle.verify_inclusion(leaves[index], index, size, bad, root)
        assert not merkle.verify_inclusion(leaves[index], index, size, proof, flip(root))
        assert not merkle.verify_inclusion(b"other", index, size, proof, root)
        for other in range(size):
            if other != index:
                assert not merkle.verify_inclusion(leaves[index], other, size, proof, root)
        for other_size in range(index + 1, SMALL):
            if other_size != size:
                other_root = merkle.root(LEAVES[:other_size])
                assert not merkle.verify_inclusion(
                    leaves[index], index, other_size, proof, other_root
                )


def test_inclusion_binds_the_root_not_the_size() -> None:
    # RFC 9162 verification takes the size on trust from whoever signed it with the root:
    # leaf 0's path in 4 leaves has the same shape as in 3, so it checks against size 3 too.
    proof = merkle.inclusion_proof(LEAVES[:4], 0)
    assert merkle.verify_inclusion(LEAVES[0], 0, 3, proof, merkle.root(LEAVES[:4]))
    assert not merkle.verify_inclusion(LEAVES[0], 0, 3, proof, merkle.root(LEAVES[:3]))


@pytest.mark.parametrize("new", range(2, SMALL))
def test_tampered_consistency_proofs_fail(new: int) -> None:
    new_root = merkle.root(LEAVES[:new])
    for old in range(1, new):
        old_root = merkle.root(LEAVES[:old])
        proof = merkle.consistency_proof(LEAVES[:new], old)
        for bad in tampered(proof):
            assert not merkle.verify_consistency(old, new, old_root, new_root, bad)
        assert not merkle.verify_consistency(old, new, flip(old_root), new_root, proof)
        assert not merkle.verify_consistency(old, new, old_root, flip(new_root), proof)
        assert not merkle.verify_consistency(old, new, old_root, new_root, [])
        for other in range(1, new):
            if other != old:
                other_root = merkle.root(LEAVES[:other])
                assert not merkle.verify_consistency(other, new, other_root, new_root, proof)


def test_equal_sizes_need_an_empty_proof_and_equal_roots() -> None:
    root = merkle.root(LEAVES[:5])
    assert merkle.consistency_proof(LEAVES[:5], 5) == []
    assert merkle.verify_consistency(5, 5, root, root, [])
    assert not merkle.verify_consistency(5, 5, root, root, [root])
    assert not merkle.verify_consistency(5, 5, root, flip(root), [])


# Malformed arguments raise ProofError.

GOOD = merkle.leaf_hash(b"x")
SHORT, LONG = bytes(31), bytes(33)
# Wrong types on purpose, typed Any so the table type-checks.
TEXT: Any = "x"
FLOAT: Any = 1.0
TREE = full_tree(LEAVES[:5])

MALFORMED: list[tuple[str, Callable[[], object], str]] = [
    ("verify index == size", lambda: merkle.verify_inclusion(b"", 3, 3, [], GOOD), "outside"),
    ("verify index > size", lambda: merkle.verify_inclusion(b"", 9, 3, [], GOOD), "outside"),
    ("verify negative index", lambda: merkle.verify_inclusion(b"", -1, 3, [], GOOD), "outside"),
    ("verify size 0", lambda: merkle.verify_inclusion(b"", 0, 0, [], GOOD), "outside"),
    ("verify str index", lambda: merkle.verify_inclusion(b"", TEXT, 1, [], GOOD), "int"),
    ("verify bool index", lambda: merkle.verify_inclusion(b"", False, 1, [], GOOD), "int"),
    ("verify float size", lambda: merkle.verify_inclusion(b"", 0, FLOAT, [], GOOD), "int"),
    ("verify str leaf", lambda: merkle.verify_inclusion(TEXT, 0, 1, [], GOOD), "bytes"),
    ("verify root 31", lambda: merkle.verify_inclusion(b"", 0, 2, [GOOD], SHORT), "32 bytes"),
    ("verify root 33", lambda: merkle.verify_inclusion(b"", 0, 2, [GOOD], LONG), "32 bytes"),
    ("verify proof 31", lambda: merkle.verify_inclusion(b"", 0, 2, [SHORT], GOOD), "32 bytes"),
    ("verify proof 33", lambda: merkle.verify_inclusion(b"", 0, 2, [LONG], GOOD), "32 bytes"),
    ("verify proof str", lambda: merkle.verify_inclusion(b"", 0, 2, TEXT, GOOD), "list"),
    (
        "verify leaf hash 33",
        lambda: merkle.verify_inclusion_hash(LONG, 0, 2, [GOOD], GOOD),
        "32 bytes",
    ),
    ("consistency old 0", lambda: merkle.verify_consistency(0, 3, GOOD, GOOD, []), "0 < old"),
    ("consistency old > new", lambda: merkle.verify_consistency(4, 3, GOOD, GOOD, []), "0 < old"),
    ("consistency old root 31", lambda: merkle.verify_consistency(1, 2, SHORT, GOOD, [GOOD]), "32"),
    ("consistency new root 33", lambda: merkle.verify_consistency(1, 2, GOOD, LONG, [GOOD]), "32"),
    ("consistency proof 33", lambda: merkle.verify_consistency(1, 2, GOOD, GOOD, [LONG]), "32"),
    ("consistency str size", lambda: merkle.verify_consistency(1, TEXT, GOOD, GOOD, []), "int"),
    ("node hash 31", lambda: merkle.node_hash(SHORT, GOOD), "32 bytes"),
    ("leaf not bytes", lambda: merkle.leaf_hash(TEXT), "bytes"),
    ("path index == size", lambda: merkle.inclusion_proof(LEAVES[:3], 3), "outside"),
    ("path negative index", lambda: merkle.inclusion_proof(LEAVES[:3], -1), "outside"),
    ("path empty tree", lambda: merkle.inclusion_proof([], 0), "outside"),
    ("proof old 0", lambda: merkle.consistency_proof(LEAVES[:3], 0), "0 < old"),
    ("proof old > new", lambda: merkle.consistency_proof(LEAVES[:3], 4), "0 < old"),
    ("tree root past size", lambda: TREE.root(6), "outside"),
    ("tree root negative", lambda: TREE.root(-1), "outside"),
    ("tree path index == size", lambda: TREE.inclusion_proof(3, 3), "outside"),
    ("tree path size past end", lambda: TREE.inclusion_proof(0, 6), "outside"),
    ("tree proof old 0", lambda: TREE.consistency_proof(0), "0 < old"),
    ("tree proof old > new", lambda: TREE.consistency_proof(4, 3), "0 < old"),
    ("tree leaf past end", lambda: TREE.leaf_hash_at(5), "outside"),
    ("tree append str", lambda: MerkleTree().append(TEXT), "bytes"),
]


@pytest.mark.parametrize(("call", "message"), [pytest.param(c, m, id=i) for i, c, m in MALFORMED])
def test_malformed_arguments_raise_proof_error(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ProofError, match=message):
        call()
