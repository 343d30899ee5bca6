"""A model file's chunk tree (proofs.chunks): numbers and bytes only."""

import hashlib
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from proofs.chunks import (
    CHUNK_SIZE,
    MAX_CHUNKS,
    MAX_PROOF,
    ChunkTree,
    chunk_count,
    chunk_span,
    leaf,
    root_from,
    verify_chunk,
)


def chunks_of(data: bytes) -> list[bytes]:
    return [data[i:i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]


def test_leaves_and_nodes_are_hashed_apart_as_rfc_6962_says():
    a, b = b"a" * 10, b"b" * 10
    tree = ChunkTree([leaf(a), leaf(b)])
    assert leaf(a) == hashlib.sha256(b"\x00" + a).digest()
    assert tree.root == hashlib.sha256(b"\x01" + leaf(a) + leaf(b)).digest()
    assert ChunkTree([leaf(a)]).root == leaf(a)  # one chunk: its leaf is the root


@settings(max_examples=40, deadline=None)
@given(leaves=st.integers(1, 70), index=st.data())
def test_every_leaf_proves_its_place_and_no_other(leaves, index):
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(leaves)]
    tree = ChunkTree(hashes)
    i = index.draw(st.integers(0, leaves - 1))
    proof = tree.proof(i)
    assert len(proof) <= (leaves - 1).bit_length()
    size = leaves * CHUNK_SIZE
    assert root_from(hashes[i], i, leaves, proof) == tree.root
    if leaves > 1:
        assert root_from(hashes[i], (i + 1) % leaves, leaves, proof) != tree.root
    assert chunk_count(size) == leaves and chunk_span(size, leaves - 1) == ((leaves - 1) * CHUNK_SIZE, CHUNK_SIZE)


def test_a_real_chunk_verifies_and_a_changed_byte_short_chunk_or_wrong_index_does_not():
    data = os.urandom(3 * CHUNK_SIZE + 12345)
    chunks = chunks_of(data)
    tree = ChunkTree(leaf(c) for c in chunks)
    for i, chunk in enumerate(chunks):
        assert verify_chunk(tree.root, len(data), i, chunk, tree.proof(i))
    bad = bytearray(chunks[1])
    bad[100] ^= 1
    assert not verify_chunk(tree.root, len(data), 1, bytes(bad), tree.proof(1))
    assert not verify_chunk(tree.root, len(data), 2, chunks[1], tree.proof(1))
    assert not verify_chunk(tree.root, len(data), 3, chunks[3][:-1], tree.proof(3))
    assert not verify_chunk(tree.root, len(data), 4, b"", [])  # past the end
    assert not verify_chunk(tree.root, len(data), 0, chunks[0], tree.proof(0) + [b"\0" * 32])  # a proof too long


def test_the_largest_file_needs_no_more_proof_than_the_bound():
    assert (MAX_CHUNKS - 1).bit_length() <= MAX_PROOF
