"""What a gateway measured of each worker's decode speed, against what its adverts claim (pure).

An advert's speeds are the worker's word: the single-stream tokens/s of its probe
(``ModelOffer.tokens_per_s``) and the tokens/s its slots delivered lately (``Load.tokens_per_s``).
A gateway also sees each job it routes stream in, so it keeps its own figure: after each remote
attempt of at least :data:`MIN_TOKENS` tokens, the ratio of the per-stream speed the advert
claimed when the job left (:func:`claimed_stream_speed`) to the speed measured (tokens after the
first batch over the time to the last), smoothed per worker.  While that ratio is above
:data:`OVERCLAIM` the gateway ranks the worker at its advertised speed divided by the ratio (its
own measurement), and counts each such job as an overclaim against the worker.
Source: issue 13 part 5 (the Inferix idea of measuring the work a node actually does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

OVERCLAIM = 1.5  # claims up to this multiple of the measured speed are noise (batching, network, load)
MIN_TOKENS = 12  # shorter streams say little: tokens arrive in batches of ~50 ms
SMOOTHING = 0.3  # weight of the newest ratio


def claimed_stream_speed(offer_tokens_per_s: float, running: int, delivered_tokens_per_s: float) -> float:
    """The per-stream tokens/s an advert claims for one more job: what its slots delivered lately,
    shared by the jobs running, or its single-stream probe when idle or not measured."""
    if running and delivered_tokens_per_s > 0:
        return delivered_tokens_per_s / running
    return offer_tokens_per_s


@dataclass
class SpeedChecks:
    """Per worker: the smoothed claim / measurement ratio and the overclaims counted."""

    ratio: dict[str, float] = field(default_factory=dict)
    overclaims: dict[str, int] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)  # tokens/s per stream, smoothed

    def observe(self, peer_id: str, *, claimed: float, tokens: int, seconds: float) -> bool:
        """One attempt's stream: ``tokens`` arrived over ``seconds`` while ``claimed`` tokens/s were
        advertised for it.  True when it counts as an overclaim (nothing is counted for streams
        shorter than MIN_TOKENS)."""
        if tokens < MIN_TOKENS or seconds <= 0 or claimed <= 0:
            return False
        speed = tokens / seconds
        ratio = claimed / speed
        old = self.ratio.get(peer_id)
        self.ratio[peer_id] = ratio if old is None else (1 - SMOOTHING) * old + SMOOTHING * ratio
        old_speed = self.measured.get(peer_id)
        self.measured[peer_id] = speed if old_speed is None else (1 - SMOOTHING) * old_speed + SMOOTHING * speed
        if ratio > OVERCLAIM:
            self.overclaims[peer_id] = self.overclaims.get(peer_id, 0) + 1
            return True
        return False

    def speed(self, peer_id: str, advertised: float) -> float:
        """The speed to rank ``peer_id`` at: ``advertised``, or this gateway's own figure while the
        worker's claims run above OVERCLAIM times what was measured."""
        ratio = self.ratio.get(peer_id, 1.0)
        return advertised / ratio if ratio > OVERCLAIM else advertised

    def view(self, peer_id: str) -> dict:
        """For ``inferad peers``: the measured tokens/s per stream, how many times that its adverts
        claim (smoothed), whether it is ranked by the measurement, and the overclaims counted."""
        measured, ratio = self.measured.get(peer_id), self.ratio.get(peer_id)
        return {"measured_tokens_per_s": None if measured is None else round(measured, 1),
                "claim_ratio": None if ratio is None else round(ratio, 2),
                "ranked_by_measurement": ratio is not None and ratio > OVERCLAIM,
                "overclaims": self.overclaims.get(peer_id, 0)}
