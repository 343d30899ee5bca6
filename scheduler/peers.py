"""What a node knows of its peers: fresh adverts, and who is backing off.

Pure state with explicit clocks (``now`` in seconds, monotonic), so tests
drive time by hand.  An advert lives for three of its sender's advert
periods (``advert.interval``) after it was received; a newer ``seq`` from the
same peer replaces it, an older one is ignored (a replayed advert cannot roll
a peer's state back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BACKOFF_BASE_S = 15.0
BACKOFF_MAX_S = 300.0


@dataclass(frozen=True)
class PeerEntry:
    advert: Any  # p2p.wire.Advert (kept duck-typed: this package imports nothing of the network)
    received_at: float

    @property
    def peer_id(self) -> str:
        return self.advert.peer_id


class PeerTable:
    def __init__(self, missed_periods: int = 3) -> None:
        self.missed_periods = missed_periods
        self._entries: dict[str, PeerEntry] = {}

    def _alive(self, entry: PeerEntry, now: float) -> bool:
        return now - entry.received_at <= self.missed_periods * entry.advert.interval

    def update(self, advert: Any, now: float) -> bool:
        """Take a verified advert; False if it is not newer than what we hold."""
        current = self._entries.get(advert.peer_id)
        if current is not None and advert.seq <= current.advert.seq:
            return False
        self._entries[advert.peer_id] = PeerEntry(advert, now)
        return True

    def expire(self, now: float) -> list[str]:
        """Drop peers whose last advert is older than the TTL; return their ids."""
        gone = [p for p, e in self._entries.items() if not self._alive(e, now)]
        for peer_id in gone:
            del self._entries[peer_id]
        return gone

    def remove(self, peer_id: str) -> None:
        self._entries.pop(peer_id, None)

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._entries.get(peer_id)

    def fresh(self, now: float) -> list[PeerEntry]:
        return [e for e in self._entries.values() if self._alive(e, now)]

    def sharing(self, sha256: str, now: float) -> list[PeerEntry]:
        """Fresh peers that serve the file ``sha256``: as a model, or as an adapter of one."""
        return [e for e in self.fresh(now) if any(sha256 in (m.sha256, m.adapter) for m in e.advert.models)]

    def providers(self, key: str, now: float) -> list[PeerEntry]:
        """Fresh peers offering a model or (model, adapter) pair (``wire.served_key``)."""
        return [e for e in self.fresh(now) if e.advert.offers(key)]

    def __len__(self) -> int:
        return len(self._entries)


class Backoff:
    """Failed peers are skipped for 15 s, doubling on each further failure (capped)."""

    def __init__(self, base_s: float = BACKOFF_BASE_S, max_s: float = BACKOFF_MAX_S) -> None:
        self.base_s, self.max_s = base_s, max_s
        self._state: dict[str, tuple[int, float]] = {}  # peer -> (failures, until)

    def failed(self, peer_id: str, now: float) -> float:
        failures = self._state.get(peer_id, (0, 0.0))[0] + 1
        delay = min(self.base_s * 2 ** (failures - 1), self.max_s)
        self._state[peer_id] = (failures, now + delay)
        return delay

    def succeeded(self, peer_id: str) -> None:
        self._state.pop(peer_id, None)

    def active(self, now: float) -> set[str]:
        return {p for p, (_, until) in self._state.items() if until > now}
