"""A model file as chunks under one Merkle root (docs/protocol.md, "Model transfer"), pure.

A file of ``size`` bytes is cut into ``CHUNK_SIZE`` chunks (the last one shorter).  Leaves and
inner nodes are hashed apart, as in RFC 6962 (Certificate Transparency), so a leaf can never
pass for an inner node::

    leaf(chunk)   = sha256(0x00 || chunk)
    node(l, r)    = sha256(0x01 || l || r)

Each level pairs its nodes left to right; an odd last node is carried up unchanged.  A chunk
travels with its proof: the siblings from its leaf up, one per level where it has one.  Whoever
knows the root (a provider signs it in its ``model_info``) checks every chunk as it arrives;
the whole file's sha256, the model's identity, is checked once the last chunk is in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

CHUNK_SIZE = 1 << 20  # bytes: a 250 MB model is 240 chunks, a 40 GB one 38,000
MAX_CHUNKS = 1 << 20  # 1 TiB of model: proofs of at most 20 hashes
MAX_PROOF = 20


def leaf(chunk: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + chunk).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def chunk_count(size: int) -> int:
    """Chunks of a file of ``size`` bytes (> 0)."""
    return -(-size // CHUNK_SIZE)


def chunk_span(size: int, index: int) -> tuple[int, int]:
    """(offset, length) of chunk ``index`` of a file of ``size`` bytes."""
    offset = index * CHUNK_SIZE
    return offset, min(CHUNK_SIZE, size - offset)


class ChunkTree:
    """The Merkle tree over a file's chunk leaves (:func:`leaf` of each chunk, in order)."""

    def __init__(self, leaves: Iterable[bytes]) -> None:
        level = list(leaves)
        if not level:
            raise ValueError("a chunk tree needs at least one chunk")
        self.levels = [level]
        while len(level) > 1:
            level = [_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                     for i in range(0, len(level), 2)]
            self.levels.append(level)

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def proof(self, index: int) -> list[bytes]:
        """The siblings of leaf ``index`` from the bottom up (levels where it has none are skipped)."""
        siblings = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                siblings.append(level[sibling])
            index //= 2
        return siblings


def root_from(node: bytes, index: int, count: int, proof: Sequence[bytes]) -> bytes | None:
    """The root that leaf hash ``node`` at ``index`` of ``count`` leaves hashes up to with
    ``proof``; None when the proof has too few or too many siblings for that place."""
    remaining = list(proof)
    while count > 1:
        if index ^ 1 < count:
            if not remaining:
                return None
            other = remaining.pop(0)
            node = _node(node, other) if index % 2 == 0 else _node(other, node)
        index, count = index // 2, (count + 1) // 2
    return None if remaining else node


def verify_chunk(root: bytes, size: int, index: int, chunk: bytes, proof: Sequence[bytes]) -> bool:
    """Whether ``chunk`` is chunk ``index`` of the file of ``size`` bytes whose tree has ``root``:
    its length is the one the size gives, and its leaf hashes up to the root with ``proof``."""
    count = chunk_count(size)
    if not 0 <= index < count or len(chunk) != chunk_span(size, index)[1]:
        return False
    return root_from(leaf(chunk), index, count, proof) == root
