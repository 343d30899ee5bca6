"""Merkle tree of cumulative rewards, as the contract checks it (pure).

Leaves are ``keccak256(abi.encodePacked(address, uint256 cumulative))``;
inner nodes hash their two children in sorted order, so a proof is just the
list of siblings (no left/right flags).  An odd node out is carried up a
level unchanged.  One root commits to every account's total so far: a claim
with the latest proof pays everything not yet claimed, whatever the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_hash.auto import keccak


def leaf(account: str, cumulative: int) -> bytes:
    return keccak(bytes.fromhex(account[2:].lower()) + cumulative.to_bytes(32, "big"))


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


@dataclass(frozen=True)
class RewardsTree:
    root: bytes
    proofs: dict[str, list[bytes]]  # checksummed account -> siblings, leaf to root
    amounts: dict[str, int]  # account -> cumulative rewards


def build_tree(cumulative: dict[str, int]) -> RewardsTree:
    """The tree over ``{account: cumulative amount}`` (accounts with a positive total)."""
    accounts = sorted(a for a, amount in cumulative.items() if amount > 0)
    if not accounts:
        return RewardsTree(root=b"\0" * 32, proofs={}, amounts={})
    layer = [leaf(a, cumulative[a]) for a in accounts]
    positions = list(range(len(accounts)))  # index of each account's node in the current layer
    proofs: dict[str, list[bytes]] = {a: [] for a in accounts}
    while len(layer) > 1:
        for account, pos in zip(accounts, positions, strict=True):
            sibling = pos ^ 1
            if sibling < len(layer):
                proofs[account].append(layer[sibling])
        layer = [_pair(layer[i], layer[i + 1]) if i + 1 < len(layer) else layer[i]
                 for i in range(0, len(layer), 2)]
        positions = [pos // 2 for pos in positions]
    return RewardsTree(root=layer[0], proofs=proofs, amounts={a: cumulative[a] for a in accounts})


def verify(root: bytes, account: str, cumulative: int, proof: list[bytes]) -> bool:
    node = leaf(account, cumulative)
    for sibling in proof:
        node = _pair(node, sibling)
    return node == root
