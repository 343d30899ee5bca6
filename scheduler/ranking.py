"""Who should run a job: rank candidate workers (DESIGN §6).

A pure function of the job's shape, what the candidates advertise, the
gateway's own view (RTTs, jobs it has in flight to each, failures) and a
random source.  The score is the estimated completion time divided by a
reputation factor; the first pick is the better of two drawn at random
(power of two choices), so many gateways with the same slightly stale view
do not all pile onto the same worker; the rest follow in score order and
serve as failover.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

PREFILL_SPEEDUP = 8.0  # prompt tokens evaluate this many times faster than decoding
MIN_TOKENS_PER_S = 0.1


@dataclass(frozen=True)
class JobShape:
    prompt_tokens: int  # exact if known, else an estimate
    max_tokens: int  # per choice
    choices: int = 1  # decoded side by side, a slot each


@dataclass(frozen=True)
class Candidate:
    peer_id: str
    tokens_per_s: float
    n_ctx: int
    queued: int = 0
    running: int = 0
    slots: int = 1  # jobs it runs in parallel
    capacity: int = 1  # jobs it accepts at once (slots + queue)
    inflight: int = 0  # jobs this gateway sent it that the advert may not show yet
    rtt_s: float = 0.0
    reputation: float = 0.5  # 0..1; 0.5 for a peer we know nothing about
    staked: bool = True  # with a chain configured: its key is bound on chain with enough stake


@dataclass(frozen=True)
class Plan:
    order: tuple[str, ...]  # attempt order: first choice, then failover
    excluded: dict[str, tuple[str, str]] = field(default_factory=dict)  # peer id -> (code, why not)

    def explain(self) -> str:
        return "; ".join(f"{peer[-8:]}: {why}" for peer, (_, why) in sorted(self.excluded.items())) or "none"

    def common_code(self) -> str | None:
        """The exclusion code shared by every candidate, if there is one."""
        codes = {code for code, _ in self.excluded.values()}
        return codes.pop() if len(codes) == 1 else None


def estimate_seconds(c: Candidate, job: JobShape) -> float:
    """Queue wait + prefill + decode + one round trip.

    Jobs sharing a worker's slots share its compute (processor sharing): beside ``k`` running
    jobs a new one decodes at the advertised single-stream speed / (k + 1), a pessimistic bound
    (batching gains some) that keeps a half-full worker ranked behind an idle one, so load
    spreads and a newcomer gets jobs.  Beyond the slots, jobs wait their turn.
    """
    ahead = c.queued + c.running + c.inflight
    sharing = min(ahead + job.choices - 1, max(c.slots - 1, 0))  # its own further choices share too
    speed = max(c.tokens_per_s, MIN_TOKENS_PER_S) / (1 + sharing)
    one_job = job.prompt_tokens / (speed * PREFILL_SPEEDUP) + job.max_tokens / speed
    wait = max(0, ahead - c.slots + 1) * one_job / max(c.slots, 1)
    return wait + one_job + c.rtt_s


def score(c: Candidate, job: JobShape) -> float:
    """Lower is better: completion time divided by a reputation factor of 0.5 to 1.

    Only a record worse than a newcomer's (reputation below 0.5) costs rank; a long good record
    earns no edge over an unknown worker, which must get jobs to be verified and build one (with
    an edge, the better of two random candidates never was the newcomer while the established
    workers had free slots)."""
    return estimate_seconds(c, job) / (0.5 + min(max(c.reputation, 0.0), 0.5))


def exclusion(c: Candidate, job: JobShape, *, backed_off: frozenset[str] | set[str],
              reputation_floor: float) -> tuple[str, str] | None:
    """(code, reason) if ``c`` must not get the job, else None."""
    if not c.staked:
        return "unstaked", "not staked on chain with its own key"
    if c.peer_id in backed_off:
        return "backoff", "backing off after a failure"
    if c.reputation < reputation_floor:
        return "reputation", f"reputation {c.reputation:.2f} below the floor {reputation_floor:.2f}"
    if job.prompt_tokens + job.max_tokens > c.n_ctx:
        return "context_overflow", f"context {c.n_ctx} too small for ~{job.prompt_tokens}+{job.max_tokens} tokens"
    if job.choices > c.slots:
        return "too_many_choices", f"{c.slots} slot(s), fewer than the job's {job.choices} choices"
    if c.queued + c.running + c.inflight >= c.capacity:
        return "busy", f"at capacity ({c.queued + c.running + c.inflight}/{c.capacity})"
    return None


def rank_candidates(job: JobShape, candidates: list[Candidate], *, rng: random.Random,
                    backed_off: frozenset[str] | set[str] = frozenset(),
                    reputation_floor: float = 0.0, sample: int = 16) -> Plan:
    """An attempt order for ``job``: the better of two random eligible candidates
    first, then the rest by score.

    Up to ``2 * sample`` candidates are all examined.  Beyond that, a random
    sample of ``sample`` eligible ones is ranked instead (as in Sparrow's
    batch sampling): the decision costs the same for 50 or 10,000 adverts,
    and sampling spreads load as well as a full scan does.  An excluded peer
    is never chosen while an eligible one exists: if random draws keep
    hitting excluded peers, the rest are scanned in full.
    """
    excluded: dict[str, tuple[str, str]] = {}
    eligible: list[Candidate] = []

    def examine(c: Candidate) -> None:
        why = exclusion(c, job, backed_off=backed_off, reputation_floor=reputation_floor)
        if why:
            excluded[c.peer_id] = why
        else:
            eligible.append(c)

    if len(candidates) <= 2 * sample:
        for c in candidates:
            examine(c)
    else:
        seen: set[int] = set()
        for _ in range(4 * sample):
            i = rng.randrange(len(candidates))
            if i not in seen:
                seen.add(i)
                examine(candidates[i])
                if len(eligible) >= sample:
                    break
        if not eligible:
            for i, c in enumerate(candidates):
                if i not in seen:
                    examine(c)
    if not eligible:
        return Plan(order=(), excluded=excluded)
    ranked = sorted((score(c, job), c.peer_id, c) for c in eligible)
    by_score = [c for _, _, c in ranked]
    if len(by_score) >= 2:
        a, b = rng.sample(range(len(by_score)), 2)
        by_score.insert(0, by_score.pop(min(a, b)))  # the lower index has the better score
    return Plan(order=tuple(c.peer_id for c in by_score), excluded=excluded)


def estimate_prompt_tokens(prompt_chars: int) -> int:
    """A gateway without the model's tokenizer guesses ~4 characters per token;
    the worker checks the exact count and refuses what does not fit."""
    return prompt_chars // 4 + 1
