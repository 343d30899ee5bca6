"""The replayable sampler (docs/protocol.md, "Sampling"), pure: numpy, no I/O.

A sampled job's tokens are a function of the model's logits and public numbers: at output
position ``i`` of choice ``c`` the worker draws ``u = draw(job_id, seed, c, i)``, a uniform number
in [0, 1) from sha256, and emits the token whose interval of the job's distribution contains it.
The distribution, at one position:

1. tokens the job's grammar forbids are out (JSON mode);
2. every logit is divided by the temperature;
3. with ``top_k`` > 0, only the ``top_k`` first tokens in canonical order (probability
   descending, then token id ascending) stay in;
3b. with ``min_p`` > 0, only the tokens whose scaled logit is at least the best one's plus
   ``ln(min_p)`` stay in: the tokens at least ``min_p`` times as likely as the most likely
   (llama.cpp's and vLLM's min-p, here applied after the temperature);
4. probabilities are the softmax of the scaled logits still in; with ``top_p`` < 1, only the
   shortest canonical prefix whose probability reaches ``top_p`` stays in, renormalised;
5. the tokens still in own consecutive intervals of [0, 1), **in token id order**, as wide as
   their probabilities: the token whose interval holds ``u`` is emitted.

The intervals follow token ids, not probabilities, on purpose: a verifier's logits differ from
the worker's in the last bits (llama.cpp evaluates one decoded row and a batch of rows with
different kernels: 0.26 nats apart at worst on gemma-3-270m), and in probability order two
near-equal tokens then swap places, moving a whole interval (boundaries moved by up to 0.46 of
the mass in 512 honest positions; by 0.105 in id order: benchmarks/verify_calibration.py).

A verifier recomputes the claimed token's interval from its own logits (:func:`interval`) and
requires ``u`` in it, widened by a band for that noise; a ``u`` within the band is *ambiguous*,
never a failure.  So a worker that decodes with a cheaper model, even with the same ``u``, emits
a token whose interval under the real model misses ``u`` wherever the two models part by more
than the band.  Probabilities are float64 sums of float32 exponentials (the logits' precision);
one position costs about a millisecond for a 262k vocabulary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

DRAW_DOMAIN = b"inferad/draw/1\0"
DEPTH_BIN, DEPTH_BINS = 0.25, 512  # nats below the best per bin when finding a nucleus; past 128 nats exp is 0
REACH = 0.9999  # of the mass: where a verifier stops looking for the end of a nucleus
LOCATE_BLOCK = 1024  # tokens summed together when locating a draw
TOP_K_MARGIN = 0.5  # nats: a verifier keeps a claimed token this close to the k-th (greedy_margin's noise)


def draw(job_id: str, seed: int, choice: int, position: int) -> float:
    """``u`` at output ``position`` (0-based, continuation prefix included) of ``choice``:
    the first 53 bits of ``sha256(DRAW_DOMAIN || job id (32 bytes) || seed (u32) || choice (u16)
    || position (u32))``, big-endian, divided by 2**53."""
    digest = hashlib.sha256(DRAW_DOMAIN + bytes.fromhex(job_id) + seed.to_bytes(4, "big")
                            + choice.to_bytes(2, "big") + position.to_bytes(4, "big")).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2.0**53


@dataclass(frozen=True)
class Interval:
    """The claimed token's share of [0, 1) at one position (``lo`` ≤ ``hi``), or ``kept`` False
    when the job's sampler could not emit it at all (forbidden, outside top-k or top-p);
    ``stretched``: it lies just outside the nucleus, kept within the verifier's slack."""

    lo: float
    hi: float
    kept: bool = True
    stretched: bool = False


def _temperature(logits, temperature: float, allowed) -> np.ndarray:
    """Steps 1 and 2: float32 logits over the temperature, -inf where the grammar forbids."""
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    return z if allowed is None else np.where(allowed, z, np.float32(-np.inf))


def _cut(z, temperature: float, top_k: int, token: int | None, min_p: float) -> tuple[np.ndarray, bool, np.ndarray]:
    """Steps 3 and 3b on scaled logits ``z``: (what stays in, -inf for the rest; whether ``token``
    (a verifier's claimed one) was kept only because its scaled logit is within ``TOP_K_MARGIN``
    of the k-th or of the min-p cut; with a claimed ``token``, the mask of the tokens that close
    to a cut).  Float noise can put near-equal neighbours on either side of an edge."""
    stretched = False
    edge = np.zeros(z.shape, dtype=bool)
    margin = np.float32(TOP_K_MARGIN / temperature)
    if top_k and top_k < z.size:
        kth = np.partition(z, z.size - top_k)[z.size - top_k]
        ids = _canonical(z, z >= kth)[:top_k]
        if token is not None and np.isfinite(kth):  # -inf: fewer tokens allowed than k, all kept
            edge |= np.abs(z - kth) < margin
        if token is not None and token not in ids and z[token] >= kth - margin:
            ids, stretched = np.append(ids, token), True
        z = _keep(z, ids)
    if min_p > 0.0:
        cut = z.max() + np.float32(np.log(min_p))
        if token is not None and np.isfinite(cut):
            edge |= np.abs(z - cut) < margin
        if token is not None and cut - margin <= z[token] < cut:
            stretched = True
            cut = z[token]
        z = np.where(z >= cut, z, np.float32(-np.inf))
    return z, stretched, edge


def _near_nucleus(z, weights, total, token, temperature, top_p, slack) -> bool:
    """Whether the mass ahead of ``token`` in canonical order is within ``slack`` of ``top_p``."""
    ahead = (z > z[token]) | ((z == z[token]) & (np.arange(z.size) < token))
    return float(weights[ahead].sum(dtype=np.float64)) / total < top_p + slack


def _edge_interval(z, weights, total, token, temperature, top_p, slack) -> Interval:
    """A claimed token just past the nucleus, as the verifier's logits order it: kept (stretched)
    when the tokens *clearly* ahead of it (by more than ``TOP_K_MARGIN`` nats) hold less than
    ``top_p + slack``, since near-equal neighbours may stand in either order under float noise;
    its interval is then taken over the canonical prefix through it."""
    clearly = z > z[token] + np.float32(TOP_K_MARGIN / temperature)
    if float(weights[clearly].sum(dtype=np.float64)) / total >= top_p + slack:
        return Interval(0.0, 0.0, kept=False)
    kept = (z > z[token]) | ((z == z[token]) & (np.arange(z.size) <= token))
    mass = float(weights[kept].sum(dtype=np.float64))
    before = float(weights[:token][kept[:token]].sum(dtype=np.float64))
    return Interval(before / mass, (before + float(weights[token])) / mass, stretched=True)


def _keep(z: np.ndarray, ids: np.ndarray) -> np.ndarray:
    kept = np.full(z.shape, np.float32(-np.inf))
    kept[ids] = z[ids]
    return kept


def _weights(z: np.ndarray) -> tuple[np.ndarray, float]:
    """Float32 exp(z - max z) (0 for tokens out) and their float64 sum."""
    weights = np.exp(z - z.max())
    return weights, float(weights.sum(dtype=np.float64))


def _canonical(z: np.ndarray, mask) -> np.ndarray:
    """The ids of ``mask`` in canonical order (probability descending, then id ascending)."""
    ids = np.flatnonzero(mask)  # ascending, so a stable sort keeps ties in id order
    return ids[np.argsort(-z[ids], kind="stable")]


def _prefix(z: np.ndarray, weights: np.ndarray, total: float, mass: float) -> tuple[np.ndarray, np.ndarray]:
    """The shortest canonical prefix whose probability reaches ``mass`` (every token with a chance
    if none does), and its cumulative probabilities.  The tokens are binned by how far they lie
    below the best (``DEPTH_BIN`` nats a bin, the last bin holding the rest) and the bins' masses
    summed in one pass; only the tokens of the bins up to the one where the mass is reached, a
    canonical prefix with its ties, are sorted.  The vocabulary is never sorted whole."""
    depth = np.minimum((z.max() - z) / np.float32(DEPTH_BIN), np.float32(DEPTH_BINS - 1))  # inf: out
    bins = depth.astype(np.intp)
    by_bin = np.cumsum(np.bincount(bins, weights=weights, minlength=DEPTH_BINS)) / total
    last = min(int(np.searchsorted(by_bin, mass)), DEPTH_BINS - 1)
    while True:  # one bin more when the bins' sums and the sorted sum round apart
        ids = _canonical(z, (bins <= last) & np.isfinite(z))
        cumulative = np.cumsum(weights[ids], dtype=np.float64) / total
        if cumulative[-1] >= mass or last == DEPTH_BINS - 1:
            end = min(int(np.searchsorted(cumulative, mass)), len(ids) - 1) + 1
            return ids[:end], cumulative[:end]
        last += 1


def sample(logits, u: float, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
           allowed=None, min_p: float = 0.0) -> int:
    """The token the sampler emits for ``u`` at a position with these ``logits`` (a vocabulary of
    floats); ``allowed``: a boolean mask of the tokens the grammar allows, or None."""
    z, _, _ = _cut(_temperature(logits, temperature, allowed), temperature, top_k, None, min_p)
    weights, total = _weights(z)
    if top_p < 1.0:
        ids = np.sort(_prefix(z, weights, total, top_p)[0])  # the nucleus, in id order
        cumulative = np.cumsum(weights[ids], dtype=np.float64)
        return int(ids[min(int(np.searchsorted(cumulative, u * cumulative[-1], side="right")), len(ids) - 1)])
    return _locate(weights, u)


def _locate(weights: np.ndarray, u: float) -> int:
    """The token whose interval holds ``u`` when every token owns ``weights`` in id order: found
    by block sums, then a cumulative sum within one block (a float64 cumulative sum of a whole
    262k vocabulary costs milliseconds per token, a tenth of a batched decode step's share)."""
    whole = weights.size - weights.size % LOCATE_BLOCK
    sums = weights[:whole].reshape(-1, LOCATE_BLOCK).sum(axis=1, dtype=np.float64)
    blocks = np.cumsum(np.append(sums, weights[whole:].sum(dtype=np.float64)))
    target = u * blocks[-1]
    block = min(int(np.searchsorted(blocks, target, side="right")), len(blocks) - 1)
    start = block * LOCATE_BLOCK
    within = np.cumsum(weights[start:start + LOCATE_BLOCK], dtype=np.float64) + (blocks[block - 1] if block else 0.0)
    token = start + min(int(np.searchsorted(within, target, side="right")), len(within) - 1)
    while weights[token] == 0:  # u at the very top, past the last token with a chance
        token -= 1
    return token


def interval(logits, token: int, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
             allowed=None, slack: float = 0.0, u: float | None = None, min_p: float = 0.0) -> Interval:
    """The share of [0, 1) that ``token`` owns at a position with these ``logits``: what a
    verifier holds the public ``u`` against (``kept`` False: the sampler could not emit it).

    With ``slack`` (a verifier's tolerance for float noise), the nucleus may end anywhere its
    cumulative probability is within ``slack`` of ``top_p``, and the claimed token's top-k rank
    and min-p cut within ``TOP_K_MARGIN``: of the plausible distributions, the one whose interval lies nearest
    ``u`` is taken, ``stretched`` when it is not the nominal one.  Other tokens that close to the
    k-th or the min-p cut may have stood on either side of it for the worker: where ``u`` misses
    the nominal interval, the intervals with those ahead of ``token`` (in id order) out and those
    after it in, and the other way round, are tried too (the lowest and the highest it can lie).
    Raises nothing; ``kept`` False when no plausible distribution holds ``token``."""
    full = _temperature(logits, temperature, allowed)
    z, stretched, edge = _cut(full, temperature, top_k, token if slack else None, min_p)
    nominal = _interval(z, stretched, token, temperature, top_p, slack, u)
    if not slack or u is None or _miss(nominal, u) == 0.0:
        return nominal
    ids = np.arange(full.size)
    edge &= np.isfinite(full) & (ids != token)
    if not edge.any():
        return nominal
    ahead = edge & (ids < token)
    tried = [nominal]
    for keep in (edge & ~ahead, ahead):  # the interval at its lowest, then at its highest
        moved = np.where(edge, np.where(keep, full, np.float32(-np.inf)), z)
        tried.append(replace(_interval(moved, True, token, temperature, top_p, slack, u), stretched=True))
    return min(tried, key=lambda each: _miss(each, u))


def _miss(interval: Interval, u: float) -> float:
    """How far ``u`` lies outside ``interval`` (inf when the token is out)."""
    return max(interval.lo - u, u - interval.hi, 0.0) if interval.kept else float("inf")


def _interval(z, stretched: bool, token: int, temperature: float, top_p: float, slack: float,
              u: float | None) -> Interval:
    """Step 4 and 5 of :func:`interval` on logits ``z`` already scaled and cut."""
    if not np.isfinite(z[token]):
        return Interval(0.0, 0.0, kept=False)
    weights, total = _weights(z)
    if top_p >= 1.0:
        before = float(weights[:token].sum(dtype=np.float64)) / total
        return Interval(before, before + float(weights[token]) / total, stretched=stretched)
    # Beyond REACH of the mass no nucleus within the slack of top_p can end (top_p <= 1 - slack),
    # and renormalising over the rest changes an interval by less than 1e-4.
    ids, cumulative = _prefix(z, weights, total, max(top_p, min(top_p + slack, REACH)))
    where = np.flatnonzero(ids == token)
    nominal = min(int(np.searchsorted(cumulative, top_p)), len(ids) - 1)
    if not where.size or where[0] > nominal:
        if not slack:
            return Interval(0.0, 0.0, kept=False)
        if where.size == 0 or not _near_nucleus(z, weights, total, token, temperature, top_p, slack):
            return _edge_interval(z, weights, total, token, temperature, top_p, slack)
    ahead = np.cumsum(weights[ids] * (ids < token), dtype=np.float64) / total  # kept mass with a lower id, by end
    before_end = np.concatenate(([0.0], cumulative[:-1]))
    ends = np.arange(len(ids))  # the nucleus keeps ids[: e + 1]
    near = (cumulative >= top_p - slack) & (before_end < top_p + slack)
    plausible = (ends >= where[0]) & ((ends == nominal) | near)
    if not plausible.any():
        return _edge_interval(z, weights, total, token, temperature, top_p, slack)
    lo = ahead / cumulative
    hi = (ahead + weights[token] / total) / cumulative
    miss = np.zeros(len(ids)) if u is None else np.maximum(np.maximum(lo - u, u - hi), 0.0)
    miss = np.where(plausible, miss + 1e-12 * (ends != nominal), np.inf)  # the nominal end on ties
    end = int(np.argmin(miss))
    return Interval(float(lo[end]), float(hi[end]), stretched=stretched or end != nominal)
