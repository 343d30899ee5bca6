"""Running a job on a real model with llama.cpp (llama-cpp-python).

An :class:`Engine` owns one loaded model.  :meth:`Engine.generate` is
blocking and not re-entrant (a llama.cpp context is single-threaded); the
node runs it in a worker thread behind a limiter of one and streams tokens
out through a callback.

Every job is evaluated from an empty KV cache, so the same prompt and
parameters give the same tokens on the same build: greedy output is
reproducible, which is what verifiers and tests rely on.
"""

from __future__ import annotations

import codecs
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inferad.models import LocalModel
from p2p import wire
from proofs.check import Position

log = logging.getLogger("inferad.engine")

OnToken = Callable[[int, str], bool]  # (token id, text delta) -> keep going?


def _route_llama_logs() -> None:
    """Send llama.cpp's own log lines to Python logging ("llama.cpp" logger,
    errors at ERROR, the rest at DEBUG) instead of bare stderr."""
    import ctypes

    import llama_cpp

    global _llama_log_callback
    if _llama_log_callback is not None:
        return
    llama_log = logging.getLogger("llama.cpp")

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        message = text.decode("utf-8", "replace").rstrip()
        if message:
            llama_log.log(logging.ERROR if level == 4 else logging.DEBUG, "%s", message)

    _llama_log_callback = callback  # ctypes callbacks must outlive their registration
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


_llama_log_callback = None


class EngineError(Exception):
    """The model cannot be loaded or run."""


class GenerationCancelled(Exception):
    """The consumer went away; the generation was stopped early."""


@dataclass(frozen=True)
class Generation:
    tokens: list[int]
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string) | "length"
    prompt_tokens: int
    prompt_ms: int
    decode_ms: int

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / max(self.decode_ms + self.prompt_ms, 1) * 1000


class StopScanner:
    """Finds stop strings in streamed text, holding back what may start one.

    Text is released only once no stop string can begin inside it, so a
    client never sees part of a stop sequence that is then cut.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop string was hit)."""
        self.pending += piece
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), hold, -1):
                if stop.startswith(self.pending[-k:]):
                    hold = k
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class OutputStream:
    """Turns generated token ids into streamed text and an outcome.

    Shared by every engine: assembles UTF-8 across tokens, cuts at stop
    strings, ends at end-of-generation or ``max_tokens``.  A continuation
    replays the ``prefix`` tokens first without emitting them, which leaves
    exactly the state (held-back text, partial UTF-8) the failed worker had.
    """

    def __init__(self, params: wire.SamplingParams, piece: Callable[[int], bytes],
                 is_eog: Callable[[int], bool], on_token: OnToken) -> None:
        self.params, self._piece, self._is_eog, self._on_token = params, piece, is_eog, on_token
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopScanner(params.stop)
        self.tokens: list[int] = []
        self._text: list[str] = []
        self.finish_reason: str | None = None
        self.started = time.perf_counter()
        self.first_token_at: float | None = None

    def replay(self, prefix: list[int]) -> None:
        for tok in prefix:
            if self.finish_reason is None:
                self._take(tok)

    def push(self, tok: int) -> bool:
        """Take one generated token; True when generation should end."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        delta = self._take(tok)
        if not self._on_token(tok, delta):
            raise GenerationCancelled()
        return self.finish_reason is not None

    def _take(self, tok: int) -> str:
        self.tokens.append(tok)
        eog = self._is_eog(tok)
        delta, hit_stop = self._stops.push("" if eog else self._decoder.decode(self._piece(tok)))
        if eog or hit_stop:
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.params.max_tokens:
            self.finish_reason = "length"
        if self.finish_reason and not hit_stop:
            delta += self._stops.flush() + self._decoder.decode(b"", final=True)
        self._text.append(delta)
        return delta

    @property
    def text(self) -> str:
        return "".join(self._text)

    def result(self, prompt_tokens: int) -> Generation:
        ended = time.perf_counter()
        first = self.first_token_at or ended
        return Generation(tokens=self.tokens, text=self.text, finish_reason=self.finish_reason or "length",
                          prompt_tokens=prompt_tokens, prompt_ms=int((first - self.started) * 1000),
                          decode_ms=int((ended - first) * 1000))


def check_vocabulary(tokens: Sequence[int], n_vocab: int) -> list[int]:
    """``tokens`` as a list, or EngineError naming the first id outside ``[0, n_vocab)``."""
    for i, tok in enumerate(tokens):
        if not 0 <= tok < n_vocab:
            raise EngineError(f"prompt token {i} is {tok}, outside this model's vocabulary of {n_vocab} ids")
    return list(tokens)


class Engine:
    kind = "llama.cpp"

    def __init__(self, model: LocalModel, *, n_ctx: int = 0, n_threads: int = 0,
                 n_gpu_layers: int = -1) -> None:
        """Load ``model`` with a context of ``n_ctx`` tokens; 0 sizes it from the model's trained
        context and free memory (:func:`inferad.context.plan`).  Raises EngineError when the file
        cannot be loaded or ``n_ctx`` exceeds the trained context."""
        import llama_cpp

        from inferad.context import ContextError, plan

        _route_llama_logs()
        self.model = model
        gpu = llama_cpp.llama_supports_gpu_offload() and n_gpu_layers != 0
        try:
            self.context = plan(model.path, requested=n_ctx, offload=gpu)
        except ContextError as exc:
            raise EngineError(f"{model.name}: {exc}") from None
        log.info("context for %s: %s", model.name, self.context.describe())
        started = time.perf_counter()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(model.path), n_ctx=self.context.n_ctx, n_threads=n_threads or os.cpu_count(),
                n_gpu_layers=n_gpu_layers, verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"llama.cpp cannot load {model.path}: {exc}") from None
        self.load_seconds = time.perf_counter() - started
        self._is_eog = lambda tok: llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, tok)
        self.info = wire.EngineInfo(name="llama.cpp", version=f"llama-cpp-python {llama_cpp.__version__}",
                                    backend="gpu" if gpu else "cpu")
        self.ref = wire.ModelRef(sha256=model.sha256, name=model.name)
        log.info("loaded %s (%s) in %.2f s, n_ctx=%d, backend=%s", model.name, model.sha256[:12],
                 self.load_seconds, self.n_ctx, self.info.backend)

    @property
    def n_ctx(self) -> int:
        return self._llm.n_ctx()

    @property
    def n_vocab(self) -> int:
        return self._llm.n_vocab()

    def tokenize(self, text: str) -> list[int]:
        """BOS + the text's tokens; special-token syntax in user text stays plain text."""
        return self._llm.tokenize(text.encode(), add_bos=True, special=False)

    def prompt_tokens(self, job: wire.JobRequest) -> list[int]:
        """The token ids the model sees for a job: its prompt, its token ids, or its messages through the
        chat template.  Raises EngineError for ids outside the vocabulary or a chat no template can render."""
        if job.prompt_tokens is not None:
            return check_vocabulary(job.prompt_tokens, self.n_vocab)
        if job.prompt is not None:
            return self.tokenize(job.prompt)
        from inferad.chat import ChatTemplateError, chat_tokens

        llm = self._llm
        try:
            return chat_tokens(llm.metadata, lambda text, special: llm.tokenize(text.encode(), add_bos=False,
                                                                                special=special),
                               lambda tok: llm.detokenize([tok], special=True).decode(), llm.token_bos(),
                               llm.token_eos(), job.messages)
        except ChatTemplateError as exc:
            raise EngineError(str(exc)) from None

    def generate(self, prompt: list[int], params: wire.SamplingParams, on_token: OnToken,
                 prefix: Sequence[int] = ()) -> Generation:
        """Decode until the job's end; blocking, call from a worker thread.

        ``prefix`` continues a generation another worker began: those output
        tokens are evaluated with the prompt and not streamed again.
        """
        llm = self._llm
        llm.reset()  # a fresh KV cache: output depends on the job alone
        llm.set_seed(params.seed)
        out = OutputStream(params, lambda tok: llm.detokenize([tok], special=False), self._is_eog, on_token)
        out.replay(list(prefix))
        if out.finish_reason is None:
            for tok in llm.generate(prompt + list(prefix), temp=params.temperature, top_p=params.top_p,
                                    top_k=params.top_k, min_p=0.0, typical_p=1.0, repeat_penalty=1.0, reset=True):
                if out.push(tok):
                    break
        return out.result(len(prompt))

    def replay(self, output: Sequence[int], params: wire.SamplingParams) -> Replay:
        """What claimed output tokens decode to under the job's stop rules (for verifiers)."""
        return replay_output(output, params, lambda tok: self._llm.detokenize([tok], special=False), self._is_eog)

    def score(self, prompt: list[int], output: Sequence[int], params: wire.SamplingParams,
              margin: float) -> list[Position]:
        """Teacher-forced re-scoring: one evaluation of prompt + output, with logits
        only where an output token is predicted; blocking, call from a worker thread."""
        import numpy as np

        llm = self._llm
        llm.reset()
        llm._ctx.kv_cache_clear()
        tokens = list(prompt) + list(output)
        if len(tokens) > self.n_ctx:
            raise EngineError(f"{len(tokens)} tokens do not fit this context of {self.n_ctx}")
        n_vocab = llm.n_vocab()
        first_scored = len(prompt) - 1  # the logits at position i predict token i + 1
        positions: list[Position] = []
        start = 0
        while start < len(tokens) - 1:
            step = llm.n_batch if start < first_scored else SCORE_CHUNK
            end = min(start + step, first_scored if start < first_scored else len(tokens) - 1)
            batch = llm._batch.batch
            batch.n_tokens = end - start
            for j, pos in enumerate(range(start, end)):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = tokens[pos], pos, 1
                batch.seq_id[j][0] = 0
                batch.logits[j] = pos >= first_scored
            llm._ctx.decode(llm._batch)
            for j, pos in enumerate(range(start, end)):
                if pos >= first_scored:
                    row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(j), shape=(n_vocab,))
                    tok = tokens[pos + 1]
                    positions.append(position_of(row, tok, params, bool(self._is_eog(tok)), margin))
            start = end
        return positions

    def close(self) -> None:
        self._llm.close()


SCORE_CHUNK = 64  # output positions per evaluation: bounds the logits buffer (64 x vocabulary floats)
NUCLEUS_CUTOFF = math.log(1e-9)  # tokens below this probability never decide a top-p boundary below 0.9997


@dataclass(frozen=True)
class Replay:
    text: str
    finish_reason: str | None  # None: the tokens stop before the generation would have
    tokens_after_end: int


def replay_output(output: Sequence[int], params: wire.SamplingParams, piece: Callable[[int], bytes],
                  is_eog: Callable[[int], bool]) -> Replay:
    out = OutputStream(params, piece, is_eog, lambda tok, delta: True)
    for i, tok in enumerate(output):
        if out.push(tok):
            return Replay(out.text, out.finish_reason, len(output) - i - 1)
    return Replay(out.text, out.finish_reason, 0)


def position_of(row, token: int, params: wire.SamplingParams, is_eog: bool, margin: float) -> Position:
    """Where ``token`` stood among one position's logits, and under the job's sampler.

    Mirrors llama.cpp's sampler chain as the engine runs it: top-k on the raw
    logits, top-p on their (top-k renormalised) softmax, then temperature.
    Only tokens more than ``margin`` above the claimed one count as more
    likely: a batched evaluation and an incremental decode round differently.
    """
    import numpy as np

    best = float(row.max())
    shifted = row - best
    lse = best + math.log(float(np.exp(shifted).sum(dtype=np.float64)))
    claimed = float(row[token])
    above = row > claimed + margin
    rank = int(above.sum())
    logprob, top = claimed - lse, best - lse
    if params.temperature == 0.0:
        return Position(token=token, logprob=logprob, top_logprob=top, rank=rank, mass_above=0.0,
                        sampled_logprob=logprob, expected=0.0, variance=0.0, is_eog=is_eog)
    logits = row.astype(np.float64)
    k = params.top_k if 0 < params.top_k < len(logits) else len(logits)
    kept_logits = logits[np.argpartition(-logits, k - 1)[:k]] if k < len(logits) else logits
    k_lse = best + math.log(np.exp(kept_logits - best).sum())
    mass_above = float(np.exp(logits[above] - k_lse).sum()) if rank < k else 1.0
    if params.top_p < 1.0:  # the nucleus: the most likely tokens until their mass reaches top_p
        ordered = np.sort(kept_logits[kept_logits - k_lse > NUCLEUS_CUTOFF])[::-1]
        mass = np.cumsum(np.exp(ordered - k_lse))
        kept_logits = ordered[: min(int(np.searchsorted(mass, params.top_p)) + 1, len(ordered))]
    scaled = kept_logits / params.temperature
    s_lse = scaled.max() + math.log(np.exp(scaled - scaled.max()).sum())
    logp = scaled - s_lse
    probs = np.exp(logp)
    expected = float((probs * logp).sum())
    variance = max(float((probs * logp * logp).sum()) - expected * expected, 0.0)
    return Position(token=token, logprob=logprob, top_logprob=top, rank=rank, mass_above=mass_above,
                    sampled_logprob=claimed / params.temperature - s_lse, expected=expected, variance=variance,
                    is_eog=is_eog)
