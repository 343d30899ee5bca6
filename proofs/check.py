"""The verdict on a re-scored result (DESIGN §7), pure.

A verifier evaluates the job's prompt followed by the claimed output tokens in
one pass of the model (teacher forcing) and describes, for every output
position, where the claimed token stood in the model's distribution: a
:class:`Position`.  This module turns those positions and the job's sampling
parameters into a :class:`Verdict`; it never sees the model, so its rules are
tested on numbers alone and every threshold is a named parameter
(:class:`Thresholds`), calibrated by ``benchmarks/verify_calibration.py``.

Greedy jobs are checked token by token: each claimed token must be the most
likely one, or trail it by at most ``greedy_margin`` nats (a batched
evaluation and an incremental decode round floats differently, so near ties
can flip).  Sampled jobs are replayed: the worker drew each token with a
public uniform number ``u`` (:mod:`proofs.sampler`), so each claimed token's
interval of the job's distribution, recomputed here, must hold ``u``, or be
brought to it by shifting every logit by at most ``draw_margin`` nats (float
noise).  A ``u`` that only such a shift explains is *ambiguous*: counted, never
a failure.  The noise has a rare heavy tail, so one position in every
``excursion_span`` of a choice (``excursions_allowed``) may need a shift of up
to ``excursion_margin``; one more such position, or one beyond it, is a lie.
A token that even the worst shift leaves less likely than ``sampled_floor`` is
a lie wherever the draw fell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

VALID, INVALID, INCONCLUSIVE = "valid", "invalid", "inconclusive"


@dataclass(frozen=True)
class Drawn:
    """A sampled position replayed: the public draw ``u`` and the claimed token's interval
    ``[lo, hi)`` under the verifier's logits (``kept`` False: the sampler could not emit it)."""

    u: float
    lo: float
    hi: float
    kept: bool = True
    stretched: bool = False  # kept only by the nucleus slack: at best ambiguous

    def miss(self) -> float:
        """How far ``u`` lies outside the interval, in probability mass (0 inside)."""
        return max(self.lo - self.u, self.u - self.hi, 0.0) if self.kept else 1.0

    def reach(self, nats: float) -> tuple[float, float]:
        """The interval at its widest when every logit may be off by ``nats`` (already divided by
        the temperature): the mass before it shrunk and the mass after it grown by e**nats each,
        and the other way round."""
        down, up = math.exp(-nats), math.exp(nats)
        lo = self.lo * down / (self.lo * down + (1.0 - self.lo) * up)
        hi = self.hi * up / (self.hi * up + (1.0 - self.hi) * down)
        return lo, hi

    def explained(self, nats: float) -> bool:
        """Whether shifting every logit by at most ``nats`` can bring ``u`` into the interval."""
        lo, hi = self.reach(nats)
        return lo <= self.u < hi


@dataclass(frozen=True)
class Position:
    """How the model saw one claimed output token."""

    token: int
    logprob: float  # of the claimed token, at temperature 1 over the whole vocabulary
    top_logprob: float  # of the most likely token
    rank: int  # tokens more likely than the claimed one
    is_eog: bool = False
    drawn: Drawn | None = None  # a sampled job's replayed draw
    forbidden: bool = False  # the job's grammar does not allow it here
    index: int | None = None  # its output position, when the positions are a sample (else its place)


def _at(i: int, p: Position) -> int:
    return i if p.index is None else p.index


@dataclass(frozen=True)
class Thresholds:
    # A batched evaluation and the worker's incremental decode round logits
    # differently (calibrated: honest greedy tokens trailed the top one by at
    # most 0.324 nats in 500 jobs decoded 16 at a time).  A greedy token may
    # trail it by greedy_margin.
    greedy_margin: float = 0.5
    # A log-probability the result reports may differ from the re-scored one by float noise only:
    # the same rounding as greedy_margin (both are differences of the same logits).
    logprob_margin: float = 0.5
    # The same rounding moves the boundaries of a sampled token's interval: a public draw outside
    # the claimed token's interval is ambiguous, not a lie, while some shift of every logit by at
    # most draw_margin nats (over the temperature) would bring it in (Drawn.reach).  A band of
    # fixed mass did not hold: a draw missed by 0.126 and another by 0.158 in 500 honest jobs,
    # where a large token ahead in id order moved (benchmarks/verify_calibration.py).
    draw_margin: float = 0.4
    # That rounding is heavy-tailed: a worker's one-row decode and a verifier's prefill of the same
    # tokens gave log-probabilities of the top tokens up to 1.2 nats apart, and one honest position
    # in 96 jobs (temperature 1.5, top-p 0.95, 128 tokens, 16 at a time) needed a shift of 0.93 nats
    # (2026-12-02, docs/verification.md).  So excursions_allowed positions in every excursion_span
    # positions judged (rounded up) may lie beyond draw_margin, if within excursion_margin; one more,
    # or one beyond that, is a lie.  The span keeps long honest outputs safe: at the observed rate
    # (one in about 49 000 positions) or its 95 % upper bound (one in 10 000), two excursions in 256
    # positions happen to an honest worker about once in 70 000 or 3 000 choices (Poisson).
    excursion_margin: float = 1.5
    excursions_allowed: int = 1
    excursion_span: int = 256
    # Where the nucleus ends moves with the same noise: a verifier considers every end whose
    # cumulative probability is within nucleus_slack of top_p (boundary shifts up to 0.052 seen).
    nucleus_slack: float = 0.06
    # A sampled token the worker's own logits (within draw_margin of ours) made less likely than
    # this is a lie whatever the draw: its probability is at most exp(-(gap - 2 draw_margin) / T),
    # with gap its distance below the best token in nats (softmax ratios survive top-k, top-p and
    # renormalisation).  Noise tolerance near a boundary could otherwise pass a doctored token of
    # next to no probability whose interval happens to lie beside the draw.
    sampled_floor: float = 1e-12

    @classmethod
    def exact(cls) -> Thresholds:
        """The thresholds of a verifier whose logits are the worker's bit for bit: both engines
        batch-invariant on the same build (``inferad.engine.Engine(batch_invariant=True)``), so
        the only noise left is the order of float64 sums over the vocabulary (about 1e-12 of the
        mass).  The margins shrink to 1e-6 nats, the nucleus and top-k edges to where they are, and
        no excursion is allowed."""
        return cls(greedy_margin=1e-6, logprob_margin=1e-3, draw_margin=1e-6, excursion_margin=1e-6,
                   excursions_allowed=0, nucleus_slack=0.0)

    def unlikely_gap(self, temperature: float) -> float:
        """The gap (nats, at temperature 1) beyond which a sampled token is under ``sampled_floor``."""
        return 2.0 * self.draw_margin + temperature * math.log(1.0 / self.sampled_floor)

    def excursions_tolerated(self, positions: int) -> int:
        """How many excursions a choice judged at ``positions`` positions may have."""
        return self.excursions_allowed * max(1, math.ceil(positions / self.excursion_span))


@dataclass(frozen=True)
class Claim:
    """What the result says, next to what the verifier recomputed from the tokens."""

    model_sha256: str
    expected_model_sha256: str
    prompt_tokens: int
    expected_prompt_tokens: int
    completion_tokens: int
    output_tokens: int
    text: str
    replayed_text: str
    finish_reason: str
    replayed_finish_reason: str | None  # None: the tokens end before the generation would have
    tokens_after_end: int  # claimed tokens after the point where generation ends
    max_tokens: int


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    metrics: dict = field(default_factory=dict)


def check_claim(c: Claim) -> Verdict | None:
    """Structural lies: wrong model, miscounted usage, text or ending that the tokens do not produce."""
    if c.model_sha256 != c.expected_model_sha256:
        return Verdict(INVALID, f"result names model {c.model_sha256[:12]}, the job asked for "
                                f"{c.expected_model_sha256[:12]}")
    if c.prompt_tokens != c.expected_prompt_tokens:
        return Verdict(INVALID, f"usage claims {c.prompt_tokens} prompt tokens, the prompt has "
                                f"{c.expected_prompt_tokens}")
    if c.completion_tokens != c.output_tokens:
        return Verdict(INVALID, f"usage claims {c.completion_tokens} completion tokens, the result has "
                                f"{c.output_tokens}")
    if c.output_tokens > c.max_tokens:
        return Verdict(INVALID, f"{c.output_tokens} tokens, the job allowed {c.max_tokens}")
    if c.tokens_after_end:
        return Verdict(INVALID, f"{c.tokens_after_end} token(s) after the generation had ended")
    if c.replayed_finish_reason is None:
        return Verdict(INVALID, f"output ends after {c.output_tokens} tokens with no end of sequence, stop "
                                f"string or max_tokens ({c.max_tokens}): truncated")
    if c.replayed_finish_reason != c.finish_reason:
        return Verdict(INVALID, f"finish_reason {c.finish_reason!r}, the tokens give {c.replayed_finish_reason!r}")
    if c.replayed_text != c.text:
        return Verdict(INVALID, "the text is not what the tokens decode to")
    return None


def check_logprobs(claimed: Sequence[float], positions: Sequence[Position],
                   thresholds: Thresholds = Thresholds()) -> Verdict | None:
    """Log-probabilities a result reports, one per re-scored position, against the re-scored ones:
    INVALID at the first that differs by more than ``logprob_margin`` nats, else None."""
    for i, (reported, p) in enumerate(zip(claimed, positions, strict=True)):
        if abs(reported - p.logprob) > thresholds.logprob_margin:
            return Verdict(INVALID, f"token {_at(i, p)}'s reported log-probability {reported:.3f} is not the "
                                    f"model's {p.logprob:.3f}", {"positions": len(positions), "position": _at(i, p)})
    return None


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict on a result of several choices (one verdict each, in order): the first invalid
    one, naming its choice; else the first inconclusive one; else valid, with the positions
    summed and the worst greedy gap and draw miss."""
    if len(verdicts) == 1:
        return verdicts[0]
    for wanted in (INVALID, INCONCLUSIVE):
        for i, v in enumerate(verdicts):
            if v.verdict == wanted:
                return Verdict(wanted, f"choice {i}: {v.reason}", v.metrics)
    summed = ("positions", "ambiguous", "excursions")
    metrics: dict = {key: sum(v.metrics.get(key, 0) for v in verdicts) for key in summed}
    for key in ("max_gap", "max_miss"):
        values = [v.metrics[key] for v in verdicts if key in v.metrics]
        if values:
            metrics[key] = max(values)
    return Verdict(VALID, f"every one of {len(verdicts)} choices: {verdicts[0].reason}", metrics)


def judge(positions: Sequence[Position], *, temperature: float, thresholds: Thresholds = Thresholds()) -> Verdict:
    """The verdict on claimed tokens from their re-scored positions."""
    for i, p in enumerate(positions):
        if p.forbidden:
            return Verdict(INVALID, f"token {_at(i, p)} is one the job's grammar forbids there",
                           {"positions": len(positions), "position": _at(i, p)})
    if temperature == 0.0:
        return _judge_greedy(positions, thresholds)
    return _judge_sampled(positions, thresholds, temperature)


def _judge_greedy(positions: Sequence[Position], t: Thresholds) -> Verdict:
    gaps = [p.top_logprob - p.logprob for p in positions]
    metrics = {"positions": len(positions), "max_gap": round(max(gaps, default=0.0), 4),
               "not_top1": sum(1 for p in positions if p.rank > 0)}
    for i, (gap, p) in enumerate(zip(gaps, positions, strict=True)):
        if gap > t.greedy_margin:
            return Verdict(INVALID, f"greedy token {_at(i, p)} trails the model's choice by {gap:.2f} nats "
                                    f"(margin {t.greedy_margin})", dict(metrics, position=_at(i, p)))
    return Verdict(VALID, "every token is the model's greedy choice", metrics)


def _judge_sampled(positions: Sequence[Position], t: Thresholds, temperature: float) -> Verdict:
    misses = [p.drawn.miss() for p in positions]
    beyond: set[int] = set()  # positions whose draw float noise does not explain
    excursions: list[int] = []  # those whose draw only its rare tail explains
    for i, p in enumerate(positions):
        if p.drawn.kept and not p.drawn.explained(t.draw_margin / temperature):
            if p.drawn.explained(t.excursion_margin / temperature):
                excursions.append(i)
            else:
                beyond.add(i)
    allowed = t.excursions_tolerated(len(positions))
    if len(excursions) > allowed:
        beyond.update(excursions)
    metrics = {"positions": len(positions),
               "ambiguous": sum(1 for i, (p, m) in enumerate(zip(positions, misses, strict=True))
                                if (m > 0 or p.drawn.stretched) and p.drawn.kept and i not in beyond),
               "excursions": len(excursions), "max_miss": round(max(misses, default=0.0), 6)}
    for i, p in enumerate(positions):
        if p.top_logprob - p.logprob > t.unlikely_gap(temperature):
            return Verdict(INVALID, f"token {_at(i, p)} trails the best by {p.top_logprob - p.logprob:.1f} nats: at "
                                    f"temperature {temperature} a sampler emits it less than once in "
                                    f"{1 / t.sampled_floor:.0e} draws", dict(metrics, position=_at(i, p)))
        if not p.drawn.kept:
            return Verdict(INVALID, f"token {_at(i, p)} is outside the job's top-k, min-p or top-p set (or "
                                    f"grammar): its sampler could not emit it", dict(metrics, position=_at(i, p)))
        if i in beyond:
            return Verdict(INVALID, f"token {_at(i, p)} owns [{p.drawn.lo:.4f}, {p.drawn.hi:.4f}) of the job's "
                                    f"distribution, but the public draw was {p.drawn.u:.4f}"
                                    + (f" ({len(excursions)} draws outside what ordinary float noise explains, "
                                       f"{allowed} allowed in {len(positions)} positions)" if i in excursions else ""),
                           dict(metrics, position=_at(i, p)))
    return Verdict(VALID, "every token is the one the public draws select under this model", metrics)
