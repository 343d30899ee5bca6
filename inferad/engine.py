"""Running a job on a real model with llama.cpp (llama-cpp-python).

An :class:`Engine` owns one loaded model and one llama.cpp context with a
slot (a KV-cache sequence) per job it decodes at once; one thread owns the
context and runs the continuous-batching loop (see the class docstring).
:meth:`Engine.generate` and :meth:`Engine.score` are blocking and
thread-safe: the node calls them from worker threads, one per slot, and
tokens come out through a callback.

Every job starts in an empty slot, so the same prompt and parameters give
the same tokens on the same build when the job is alone: greedy output is
reproducible, which is what verifiers and tests rely on; batched with
others, a greedy token can change only at a near-tie (docs/benchmarks.md).
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from inferad.models import LocalModel
from inferad.slots import Row, Scheduler, Task
from p2p import wire
from proofs.check import Drawn, Position
from proofs.sampler import draw, interval, sample

log = logging.getLogger("inferad.engine")

OnToken = Callable[[wire.Token], bool]  # a streamed token -> keep going?
NO_JOB = "00" * 32  # the job id whose draws a generation outside any job (a probe, a test) samples with


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
    """A job's output: choice 0 in the first fields (as :class:`p2p.wire.JobResult` has it), choices
    1 to n-1 in ``choices``; ``logprobs`` one entry per output token when the job asked for them."""

    tokens: list[int]
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string) | "length"
    prompt_tokens: int
    prompt_ms: int
    decode_ms: int
    logprobs: tuple[wire.TokenLogprob, ...] | None = None
    choices: tuple[wire.Choice, ...] = ()

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) + sum(len(c.output_tokens) for c in self.choices)

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / max(self.decode_ms + self.prompt_ms, 1) * 1000


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
                 is_eog: Callable[[int], bool], on_token: OnToken | None = None, choice: int = 0) -> None:
        self.params, self._piece, self._is_eog, self._on_token = params, piece, is_eog, on_token
        self.choice = choice
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopScanner(params.stop)
        self.tokens: list[int] = []
        self._text: list[str] = []
        self.logprobs: list[wire.TokenLogprob] | None = [] if params.logprobs is not None else None
        self.finish_reason: str | None = None
        self.started = time.perf_counter()
        self.first_token_at: float | None = None

    def replay(self, prefix: list[int], logprobs: Sequence[wire.TokenLogprob] = ()) -> None:
        """Take a continuation's ``prefix`` (with its ``logprobs`` when the job wants them) unstreamed."""
        for tok in prefix:
            if self.finish_reason is None:
                self._take(tok)
        if self.logprobs is not None:
            self.logprobs.extend(logprobs)

    def push(self, tok: int, logprob: wire.TokenLogprob | None = None) -> bool:
        """Take one generated token (and its log-probability entry); True when generation should end.
        Raises GenerationCancelled when the consumer says stop."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        delta = self._take(tok)
        if self.logprobs is not None:
            self.logprobs.append(logprob)
        token = wire.Token(index=len(self.tokens) - 1, id=tok, text=delta, choice=self.choice, logprob=logprob)
        if self._on_token is not None and not self._on_token(token):
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

    def choice_result(self) -> wire.Choice:
        return wire.Choice(output_tokens=tuple(self.tokens), text=self.text,
                           finish_reason=self.finish_reason or "length",
                           logprobs=tuple(self.logprobs) if self.logprobs is not None else None)

    def result(self, prompt_tokens: int, others: Sequence[OutputStream] = ()) -> Generation:
        """The generation: this stream is choice 0, ``others`` choices 1 to n-1."""
        ended = time.perf_counter()
        first = self.first_token_at or ended
        return Generation(tokens=self.tokens, text=self.text, finish_reason=self.finish_reason or "length",
                          prompt_tokens=prompt_tokens, prompt_ms=int((first - self.started) * 1000),
                          decode_ms=int((ended - first) * 1000),
                          logprobs=tuple(self.logprobs) if self.logprobs is not None else None,
                          choices=tuple(out.choice_result() for out in others))


def logprob_entry(row, token: int, top: int, piece: Callable[[int], bytes]) -> wire.TokenLogprob:
    """``token``'s log-probability under one position's logits (log-softmax of the raw logits,
    float64), its bytes, and the ``top`` most likely tokens (probability descending, id ascending)."""
    import numpy as np

    logits = np.asarray(row, dtype=np.float64)
    best = float(logits.max())
    lse = best + math.log(float(np.exp(logits - best).sum()))

    def logprob(tok: int) -> float:
        return min(max(float(logits[tok]) - lse, -1e9), 0.0) + 0.0

    alternatives = []
    if top:
        ids = np.argpartition(-logits, top - 1)[:top]
        ids = sorted(ids.tolist(), key=lambda t: (-logits[t], t))
        alternatives = [wire.TopLogprob(id=t, piece=piece(t), logprob=logprob(t)) for t in ids]
    return wire.TokenLogprob(logprob=logprob(token), piece=piece(token), top=tuple(alternatives))


def check_vocabulary(tokens: Sequence[int], n_vocab: int) -> list[int]:
    """``tokens`` as a list, or EngineError naming the first id outside ``[0, n_vocab)``."""
    for i, tok in enumerate(tokens):
        if not 0 <= tok < n_vocab:
            raise EngineError(f"prompt token {i} is {tok}, outside this model's vocabulary of {n_vocab} ids")
    return list(tokens)


# A probe of 40 tokens or so: past every row count at which llama.cpp's CPU kernels change (4 and 8)
PROBE = b"Batch invariance probe: the logits of every row must not depend on the rows beside it, 1 2 3 4 5 6 7 8 9."


def _prepare_batch_invariance(gpu: bool) -> None:
    """Refuse what cannot be batch-invariant, and turn llama.cpp's tiled K-quant product off."""
    import llama_cpp

    if gpu:
        raise EngineError("batch-invariant decoding is built for llama.cpp's CPU backend only: "
                          "set n_gpu_layers = 0, or leave batch_invariant off")
    if b"LLAMAFILE = 1" in llama_cpp.llama_print_system_info():
        raise EngineError("this llama.cpp build has llamafile's sgemm, whose kernels change with a batch's rows: "
                          "run with the build of `make llama-invariant` (PYTHONPATH=build/llama-invariant: "
                          "llama-cpp-python with CMAKE_ARGS=-DGGML_LLAMAFILE=OFF), or leave batch_invariant off")
    os.environ["GGML_CPU_TILED_MM"] = "0"  # read once per process, at the first matrix product of 8 rows or more


def _probe_batch_invariance(ctx, memory, tokens: list[int]) -> str:
    """Evaluate ``tokens`` in sequence 0 of ``ctx`` in one batch, then one row at a time, and
    compare every logits row bit for bit.  Returns the engine's *numerics fingerprint*: the first
    16 hex digits of the sha256 of those logits (float32), which engines whose kernels compute
    the same numbers share; a rebuild of the same sources may differ in its binary (llama.cpp
    embeds its build paths) and still share it.  Raises EngineError naming the first row that
    depends on its batch.  Leaves sequence 0 empty."""
    import llama_cpp
    import numpy as np

    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llama_cpp.llama_get_model(ctx)))
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    rows = []
    try:
        for width in (len(tokens), 1):
            llama_cpp.llama_memory_seq_rm(memory, 0, -1, -1)
            logits = []
            for start in range(0, len(tokens), width):
                batch.n_tokens = min(width, len(tokens) - start)
                for j in range(batch.n_tokens):
                    at = start + j
                    batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = tokens[at], at, 1, 1
                    batch.seq_id[j][0] = 0
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise EngineError("llama_decode failed on the batch-invariance probe")
                logits += [np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, j), shape=(n_vocab,)).copy()
                           for j in range(batch.n_tokens)]
            rows.append(logits)
    finally:
        llama_cpp.llama_memory_seq_rm(memory, 0, -1, -1)
        llama_cpp.llama_batch_free(batch)
    for i, (together, alone) in enumerate(zip(*rows, strict=True)):
        if not np.array_equal(together, alone):
            raise EngineError(
                f"this llama.cpp build is not batch-invariant: row {i} of a {len(tokens)}-row batch differs from "
                f"the same row decoded alone by up to {float(np.abs(together - alone).max()):.3g} in its logits.  "
                f"Build it without llamafile (`make llama-invariant`), and start no other engine before this one "
                f"in the process (GGML_CPU_TILED_MM=0 is read once)")
    return hashlib.sha256(b"".join(row.astype("<f4").tobytes() for row in rows[1])).hexdigest()[:16]


class Engine:
    """One model on llama.cpp, decoding up to ``n_slots`` jobs side by side (continuous batching).

    One thread, started here, owns the llama.cpp context and runs the loop of llama.cpp's server
    (``update_slots``): take new and cancelled work, plan a batch (:class:`inferad.slots.Scheduler`:
    a token from every generating slot, then prompt chunks), decode it, then pick each generating
    slot's token from its own logits row (:func:`pick`: greedy, or the replayable sampler with the
    job's public draws, under its grammar) and hand it to its :class:`OutputStream` (stop
    strings, end of sequence, ``max_tokens``).  A job joins between two
    steps and leaves at the step after it ends or its consumer goes away; re-scoring for
    verification (:meth:`score`) is a task of the same loop.

    :meth:`generate` and :meth:`score` are blocking and thread-safe: each call waits for its own
    task, so N threads calling them keep N slots busy.  Each slot is one sequence of a KV cache
    with a stream per sequence, of ``n_ctx`` positions (llama.cpp's ``n_ctx_seq``).

    Reproducibility: a job alone in the batch is decoded exactly as llama-cpp-python's
    ``Llama(flash_attn=True).generate`` decodes it (same chunks of :data:`N_BATCH`;
    :data:`FLASH_ATTENTION` says why it is on), so a greedy job gives the same tokens, and a
    sampled one the same tokens for the same job id, seed and build; batched with others, its
    logits can differ in the last bits, which changes a greedy token only at near-ties
    (docs/benchmarks.md measures how often; verifiers allow ``greedy_margin`` for it).

    Batch invariance: with ``batch_invariant``, every logits row is computed by the same kernels
    whatever else shares its batch, so a token's logits do not depend on load: a verifier's one
    batched evaluation of prompt + output gives the worker's logits bit for bit, and the same job
    gives the same tokens on the same build alone or among 16 (docs/verification.md, "Batch-invariant
    engines").  llama.cpp's CPU backend switches kernels by the rows of a batch: repacked weights
    at 4 rows and more, its tiled K-quant matrix product at 8, llamafile's sgemm and tiled flash
    attention beyond; so this engine loads the weights unrepacked, turns the tiled product off
    (``GGML_CPU_TILED_MM=0``, process-wide), computes attention without flash attention, and needs
    a build without llamafile (``make llama-invariant``).  A probe checks it at load.

    LoRA: with ``adapter``, a GGUF LoRA adapter (``llama_adapter_lora_init``) is set on the
    context at scale 1 for every slot.  llama.cpp applies adapters per context, not per sequence,
    so a (model, adapter) pair is an engine of its own (the weights' pages are shared through
    mmap; the KV cache is not).
    """

    kind = "llama.cpp"

    def __init__(self, model: LocalModel, *, n_ctx: int = 0, n_threads: int = 0, n_gpu_layers: int = -1,
                 n_slots: int = 0, adapter: LocalModel | None = None, batch_invariant: bool = False) -> None:
        """Load ``model`` (with the LoRA ``adapter``) with ``n_slots`` slots of ``n_ctx`` tokens each;
        0 chooses from the model's trained context and free memory (:func:`inferad.context.plan`).
        Raises EngineError when a file cannot be loaded, ``n_ctx`` exceeds the trained context, the
        slots do not fit, or ``batch_invariant`` is asked of a build or backend that cannot give it."""
        import llama_cpp

        from inferad.context import ContextError, plan

        _route_llama_logs()
        self.model = model
        gpu = llama_cpp.llama_supports_gpu_offload() and n_gpu_layers != 0
        if batch_invariant:
            _prepare_batch_invariance(gpu)
        try:
            self.context = plan(model.path, requested=n_ctx, slots=n_slots, offload=gpu)
        except ContextError as exc:
            raise EngineError(f"{model.name}: {exc}") from None
        log.info("context for %s: %s", model.name, self.context.describe())
        started = time.perf_counter()
        threads = n_threads or os.cpu_count() or 1
        try:  # the weights, the tokenizer and the chat template; its own context is not used
            self._llm = llama_cpp.Llama(model_path=str(model.path), n_ctx=MODEL_ONLY_CTX, n_threads=threads,
                                        n_gpu_layers=n_gpu_layers, flash_attn=FLASH_ATTENTION, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"llama.cpp cannot load {model.path}: {exc}") from None
        # llama-cpp-python's own settings (its RoPE values…, flash attention as FLASH_ATTENTION says),
        # so that a job alone is computed as Llama(flash_attn=FLASH_ATTENTION).generate computes it
        params = llama_cpp.llama_context_params()
        ctypes.memmove(ctypes.byref(params), ctypes.byref(self._llm.context_params), ctypes.sizeof(params))
        params.n_ctx = self.context.n_slots * self.context.n_ctx
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = self.context.n_slots
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False  # a stream per slot: attention spans a slot's own positions only
        self._weights = None  # the batch-invariant engine's own copy of the model (unrepacked)
        if batch_invariant:
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            unrepacked = llama_cpp.llama_model_default_params()
            unrepacked.n_gpu_layers, unrepacked.use_extra_bufts = 0, False
            self._weights = llama_cpp.llama_model_load_from_file(str(model.path).encode(), unrepacked)
            if not self._weights:
                self._llm.close()
                raise EngineError(f"llama.cpp cannot load {model.path} a second time, unrepacked")
        weights = self._weights or self._llm._model.model
        self._ctx = llama_cpp.llama_init_from_model(weights, params)
        if not self._ctx:
            self._free_model()
            raise EngineError(f"llama.cpp cannot make a context of {self.context.describe()}")
        self.adapter, self._adapter = adapter, None
        if adapter is not None:
            self._adapter = llama_cpp.llama_adapter_lora_init(weights, str(adapter.path).encode())
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapter)
            if not self._adapter or llama_cpp.llama_set_adapters_lora(self._ctx, adapters, 1,
                                                                      (ctypes.c_float * 1)(1.0)):
                llama_cpp.llama_free(self._ctx)
                self._free_model()
                raise EngineError(f"llama.cpp cannot apply the LoRA adapter {adapter.path} to {model.name} (is it "
                                  f"a GGUF LoRA made for this model's architecture and tensor shapes?)")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self.batch_invariant, numerics = batch_invariant, ""
        if batch_invariant:
            try:
                numerics = _probe_batch_invariance(self._ctx, self._memory, self._llm.tokenize(PROBE))
            except EngineError:
                self._close_weights()
                raise
        self._batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        self.load_seconds = time.perf_counter() - started
        self._is_eog = lambda tok: llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, tok)
        self.info = wire.EngineInfo(name="llama.cpp", version=f"llama-cpp-python {llama_cpp.__version__}",
                                    backend=f"cpu batch-invariant {numerics}" if batch_invariant
                                    else "gpu" if gpu else "cpu")
        self.ref = wire.ModelRef(sha256=model.sha256, name=model.name)
        self.adapter_ref = wire.ModelRef(sha256=adapter.sha256, name=adapter.name) if adapter else None
        self.key = wire.served_key(model.sha256, adapter.sha256 if adapter else None)
        self._slots = Scheduler(n_slots=self.context.n_slots, n_batch=N_BATCH, n_ctx_slot=self.context.n_ctx,
                                max_outputs=max(SCORE_CHUNK, self.context.n_slots))
        self._running: dict[int, _Task] = {}  # by slot
        self._queued: dict[object, _Task] = {}  # by task id: waiting for a slot
        self._inbox: list[_Task] = []
        self._wake = threading.Condition()
        self._closing = False
        self._loop_thread = threading.Thread(target=self._loop, name=f"engine {model.name}", daemon=True)
        self._loop_thread.start()
        log.info("loaded %s (%s)%s in %.2f s, %d slot(s) of n_ctx=%d, backend=%s", model.name, model.sha256[:12],
                 f" with LoRA adapter {adapter.name} ({adapter.sha256[:12]})" if adapter else "", self.load_seconds,
                 self.n_slots, self.n_ctx, self.info.backend)

    @property
    def n_ctx(self) -> int:
        """Positions of one slot: the most prompt + output one job may use."""
        return self.context.n_ctx

    @property
    def n_slots(self) -> int:
        return self.context.n_slots

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

    def _piece(self, tok: int) -> bytes:
        return self._llm.detokenize([tok], special=False)

    def generate(self, prompt: list[int], params: wire.SamplingParams, on_token: OnToken | None = None,
                 prefix: Sequence[int] = (), *, cancelled: Callable[[], bool] = lambda: False,
                 job_id: str = NO_JOB) -> Generation:
        """Decode until the job's end, its ``params.n`` choices side by side; blocking, from any thread.

        Tokens are picked by :func:`pick`: greedy, or the replayable sampler with the public draws of
        job ``job_id`` (:func:`proofs.sampler.draw`).  The prompt is evaluated once in one slot; with
        n > 1 its KV cache is then copied to n - 1 more slots (:mod:`inferad.slots`).  ``prefix``
        continues a generation another worker began (n = 1 only): those output tokens are evaluated
        with the prompt and not streamed again (with ``params.logprobs``, their logits are
        re-evaluated for their entries).  ``on_token`` runs in the engine's thread and must not
        block; returning False (or ``cancelled()`` turning true) stops every choice at the next
        step.  Raises GenerationCancelled then, EngineError when llama.cpp fails or a prefix
        comes with n > 1.
        """
        if prefix and params.n > 1:
            raise EngineError("a job with several choices cannot be continued after a prefix")
        outs = [OutputStream(params, self._piece, self._is_eog, on_token, choice=i) for i in range(params.n)]
        prefix = list(prefix)
        known = self._logprobs_of(prompt, prefix, params.logprobs) if prefix and params.logprobs is not None else ()
        outs[0].replay(prefix, known)
        if outs[0].finish_reason is not None:
            return outs[0].result(len(prompt))
        grammars = [self._grammar(params.grammar, prefix) for _ in range(params.n)] if params.grammar else []
        task = _Task(Task(id=object(), tokens=tuple(prompt) + tuple(prefix), n=params.n), cancelled, outs=outs,
                     params=params, job_id=job_id, grammars=grammars)
        self._run(task)
        return outs[0].result(len(prompt), outs[1:])

    def _grammar(self, gbnf: str, prefix: Sequence[int] = ()):
        """A grammar mask past ``prefix`` (tokens it must allow). Raises EngineError for a grammar
        llama.cpp cannot parse, or a prefix it forbids."""
        from inferad.grammar import GrammarError, GrammarMask

        try:
            mask = GrammarMask(self._llm._model.vocab, self.n_vocab, gbnf)
        except GrammarError as exc:
            raise EngineError(str(exc)) from None
        for tok in prefix:
            if not mask.allowed()[tok]:
                mask.close()
                raise EngineError(f"the grammar forbids token {tok} of the prefix")
            mask.accept(tok)
        return mask

    def _logprobs_of(self, prompt: list[int], output: list[int], top: int) -> list[wire.TokenLogprob]:
        """Log-probability entries of known ``output`` tokens after ``prompt`` (one scoring pass)."""
        tokens = prompt + output
        entries: list[wire.TokenLogprob] = []

        def on_logits(pos: int, row) -> None:
            entries.append(logprob_entry(row, tokens[pos + 1], top, self._piece))

        self._score_rows(tokens, len(prompt), on_logits)
        return entries

    def replay(self, output: Sequence[int], params: wire.SamplingParams) -> Replay:
        """What claimed output tokens decode to under the job's stop rules (for verifiers)."""
        return replay_output(output, params, self._piece, self._is_eog)

    def score(self, prompt: list[int], output: Sequence[int], params: wire.SamplingParams, *,
              job_id: str = NO_JOB, choice: int = 0, slack: float = 0.0,
              only: Sequence[int] | None = None) -> list[Position]:
        """Teacher-forced re-scoring: one evaluation of prompt + output in a slot, with logits only
        where a re-scored output token is predicted: every one, or the output positions ``only``
        (one :class:`Position` each, in order); blocking.  A sampled job's positions hold the
        claimed tokens' intervals against the public draws of ``job_id``'s ``choice``, the nucleus
        reaching ``slack`` past top_p for float noise.  With a grammar every output token is
        checked against it, re-scored or not (a forbidden one is a position of its own).
        Raises EngineError when prompt + output do not fit a slot."""
        tokens = list(prompt) + list(output)
        if len(tokens) > self.n_ctx:
            raise EngineError(f"{len(tokens)} tokens do not fit this context of {self.n_ctx}")
        if not output:
            return []
        wanted = set(range(len(output)) if only is None else only)
        positions: list[Position] = []
        walk = _GrammarWalk(self._grammar(params.grammar), list(output)) if params.grammar else None

        def on_logits(pos: int, row) -> None:
            index = pos + 1 - len(prompt)  # in the output
            if index not in wanted:
                return
            tok = tokens[pos + 1]
            u = draw(job_id, params.seed, choice, index) if params.temperature > 0 else None
            allowed = walk.mask_at(index) if walk is not None else None
            positions.append(position_of(row, tok, params, bool(self._is_eog(tok)), u, slack, allowed, index))

        try:
            self._score_rows(tokens, len(prompt), on_logits, wanted)
            forbidden = walk.first_forbidden() if walk is not None else None
        finally:
            if walk is not None:
                walk.mask.close()
        if forbidden is not None and forbidden not in wanted:  # a grammar needs no logits to refuse a token
            positions.append(Position(token=output[forbidden], logprob=0.0, top_logprob=0.0, rank=0, forbidden=True,
                                      index=forbidden))
        return positions

    def _score_rows(self, tokens: list[int], n_prompt: int, on_logits: Callable[[int, Any], None],
                    wanted: set[int] | None = None) -> None:
        """Evaluate ``tokens`` in a slot, handing ``on_logits(pos, row)`` the logits row (a numpy view,
        valid during the call) of every position that predicts a token after the first ``n_prompt``
        (of the output positions ``wanted`` only, when given; the last row always comes)."""
        # logits at position i predict token i + 1: the last prompt position predicts the first output
        evaluated = tuple(tokens[:-1])
        rows = None if wanted is None else frozenset({n_prompt - 1 + i for i in wanted} | {len(evaluated) - 1})
        self._run(_Task(Task(id=object(), tokens=evaluated, logits_from=n_prompt - 1, logits_at=rows),
                        lambda: False, on_logits=on_logits))

    def close(self) -> None:
        """Stop the loop (running tasks fail with EngineError) and free the context and model."""
        import llama_cpp

        with self._wake:
            self._closing = True
            self._wake.notify()
        self._loop_thread.join()
        llama_cpp.llama_batch_free(self._batch)
        self._close_weights()

    def _close_weights(self) -> None:
        """Free the context, the adapter and the model (the loop not started or stopped)."""
        import llama_cpp

        llama_cpp.llama_free(self._ctx)
        if self._adapter:
            llama_cpp.llama_adapter_lora_free(self._adapter)
        self._free_model()

    def _free_model(self) -> None:
        import llama_cpp

        if self._weights:
            llama_cpp.llama_model_free(self._weights)
        self._llm.close()

    # ------------------------------------------------------------------ the loop (engine thread)

    def _run(self, task: _Task) -> None:
        """Hand ``task`` to the loop and wait for it; re-raise its failure."""
        with self._wake:
            if self._closing:
                raise EngineError("the engine is closed")
            self._inbox.append(task)
            self._wake.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error

    def _loop(self) -> None:
        """The engine thread: one decode step per turn while any slot is busy; see the class docstring.
        Nothing escapes it: a task's failure goes back to its caller."""

        while True:
            with self._wake:
                while not self._inbox and not self._slots.busy() and not self._closing:
                    self._wake.wait()
                if self._closing:
                    break
                arrived, self._inbox = self._inbox, []
            for task in arrived:
                self._admit(task)
            self._drop_cancelled()
            for seated, slots in self._slots.seat():
                task = self._queued.pop(seated.id)
                task.slots = slots
                for slot in slots:
                    self._running[slot] = task
            rows = self._slots.next_batch()
            if rows:
                try:
                    self._step(rows)
                except Exception as exc:  # a bug: fail this batch's tasks, keep serving the others
                    log.exception("engine step failed")
                    for task in {self._running[row.slot] for row in rows if row.slot in self._running}:
                        self._end(task, EngineError(f"engine step failed: {type(exc).__name__}: {exc}"))
        closed = EngineError("the engine was closed")
        for task in set(self._running.values()):
            self._end(task, closed)
        for task in [*self._queued.values(), *self._inbox]:
            task.fail(closed)

    def _step(self, rows: list[Row]) -> None:
        """Decode one batch, then use its logits rows."""
        import llama_cpp

        batch = self._batch
        batch.n_tokens = len(rows)
        for j, row in enumerate(rows):
            batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = row.token, row.pos, 1, row.logits
            batch.seq_id[j][0] = row.slot
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            log.error("llama_decode failed (%d) on a batch of %d rows: failing its slots", status, len(rows))
            for task in {self._running[row.slot] for row in rows if row.slot in self._running}:
                self._end(task, EngineError(f"llama.cpp could not decode (status {status})"))
            return
        for j, row in enumerate(rows):
            if row.logits and row.slot in self._running:
                self._after_decode(row, j)

    def _admit(self, task: _Task) -> None:
        try:
            self._slots.submit(task.task)
        except ValueError as exc:
            task.fail(EngineError(str(exc)))
            return
        self._queued[task.task.id] = task

    def _drop_cancelled(self) -> None:
        """Tasks whose consumer left: out of the queue, or out of their slots (before the next step)."""
        for task in set(self._running.values()):
            if task.cancelled():
                self._end(task, GenerationCancelled())
        for key, task in list(self._queued.items()):
            if task.cancelled():
                self._slots.cancel(key)
                del self._queued[key]
                task.fail(GenerationCancelled())

    def _after_decode(self, row: Row, j: int) -> None:
        """Use the logits of batch row ``j``: sample the next token of its slot (of every choice, at the
        lead's last prompt row, after copying the prompt's KV cache to the other choices' slots), or
        hand them to a scorer."""
        import llama_cpp
        import numpy as np

        task = self._running[row.slot]
        if task.on_logits is not None:
            task.on_logits(row.pos, np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, j),
                                                          shape=(self.n_vocab,)))
            if row.pos == len(task.task.tokens) - 1:
                self._end(task)
            return
        choices = [row.slot]
        if row.pos == len(task.task.tokens) - 1 and len(task.slots) > 1:  # the prompt is in: fork
            for slot in task.slots[1:]:  # whole streams: llama.cpp copies no part of one across streams
                llama_cpp.llama_memory_seq_cp(self._memory, row.slot, slot, -1, -1)
            choices = task.slots
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, j), shape=(self.n_vocab,))
        params = task.params
        for slot in choices:
            i = task.slots.index(slot)
            u = draw(task.job_id, params.seed, i, len(task.outs[i].tokens)) if params.temperature > 0 else 0.0
            mask = task.grammars[i] if task.grammars else None
            token = pick(logits, params, u, mask.allowed() if mask else None)
            if mask:
                mask.accept(token)
            entry = None
            if params.logprobs is not None:
                entry = logprob_entry(logits, token, params.logprobs, self._piece)
            try:
                finished = task.outs[i].push(token, entry)
            except GenerationCancelled as exc:
                self._end(task, exc)
                return
            if finished:
                self._free(slot)
                if not any(self._running.get(s) is task for s in task.slots):
                    task.finish()
            else:
                self._slots.sampled(slot, token)

    def _free(self, slot: int) -> None:
        """Clear ``slot``'s sequence from the KV cache and give the slot back."""
        import llama_cpp

        del self._running[slot]
        llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
        self._slots.release(slot)

    def _end(self, task: _Task, error: BaseException | None = None) -> None:
        """``task`` is over: free every slot it still holds, wake its caller."""
        for slot in task.slots:
            if self._running.get(slot) is task:
                self._free(slot)
        if error is None:
            task.finish()
        else:
            task.fail(error)


def pick(logits, params: wire.SamplingParams, u: float, allowed=None) -> int:
    """The token for one position: the most likely (lowest id among equals, as llama.cpp's greedy
    sampler picks) at temperature 0, else the replayable sampler's for the public draw ``u``;
    ``allowed``: the grammar's mask, or None."""
    import numpy as np

    if params.temperature == 0.0:
        return int(np.argmax(logits if allowed is None else np.where(allowed, logits, -np.inf)))
    return sample(logits, u, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                  min_p=params.min_p, allowed=allowed)


@dataclass(eq=False)
class _Task:
    """A generation or a scoring as the engine thread tracks it."""

    task: Task
    cancelled: Callable[[], bool]
    outs: list[OutputStream] = field(default_factory=list)  # a generation's output, by choice
    params: wire.SamplingParams | None = None  # a generation's sampler
    job_id: str = ""  # whose public draws it samples with
    grammars: list[Any] = field(default_factory=list)  # each choice's GrammarMask (JSON mode), freed at the end
    on_logits: Callable[[int, Any], None] | None = None  # a scoring's consumer of logits rows
    slots: list[int] = field(default_factory=list)  # seated: its slots, the lead first
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self) -> None:
        for mask in self.grammars:
            mask.close()
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.finish()


# Flash attention on: with it, greedy tokens decoded 16 slots at a time stayed within 0.324 nats of
# the re-scored top token in 500 honest jobs (0 false positives); without it, 4 of the same 500
# jobs trailed by up to 0.85 nats, beyond the verifiers' greedy margin of 0.5 (docs/benchmarks.md,
# benchmarks/verify_calibration.py --batched 16).  A lone job equals Llama(flash_attn=True)'s output.
FLASH_ATTENTION = True
N_BATCH = 512  # rows per decode step: llama-cpp-python's default n_batch, so a lone job is decoded as it decodes
MODEL_ONLY_CTX = 64  # the context of the Llama object that holds weights and vocabulary (unused for decoding)
SCORE_CHUNK = 64  # rows with logits per step: bounds the logits buffer (64 x vocabulary floats)


class _GrammarWalk:
    """A grammar advanced along known output tokens (a verifier's replay): the full mask where a
    position is re-scored, a one-token check everywhere else; it stops at the first token the
    grammar forbids (llama.cpp cannot advance past one)."""

    def __init__(self, mask, output: list[int]) -> None:
        self.mask, self.output = mask, output
        self.walked = 0  # output tokens accepted so far
        self.forbidden: int | None = None

    def mask_at(self, index: int):
        """The grammar's mask before output token ``index`` (all False past a forbidden token)."""
        import numpy as np

        self._advance(index)
        if self.forbidden is not None:
            return np.zeros(self.mask.n_vocab, dtype=bool)
        allowed = self.mask.allowed()
        if allowed[self.output[index]]:
            self.mask.accept(self.output[index])
            self.walked = index + 1
        else:
            self.forbidden = index
        return allowed

    def first_forbidden(self) -> int | None:
        self._advance(len(self.output))
        return self.forbidden

    def _advance(self, upto: int) -> None:
        while self.forbidden is None and self.walked < upto:
            tok = self.output[self.walked]
            if not self.mask.allows(tok):
                self.forbidden = self.walked
                return
            self.mask.accept(tok)
            self.walked += 1


@dataclass(frozen=True)
class Replay:
    text: str
    finish_reason: str | None  # None: the tokens stop before the generation would have
    tokens_after_end: int


def replay_output(output: Sequence[int], params: wire.SamplingParams, piece: Callable[[int], bytes],
                  is_eog: Callable[[int], bool]) -> Replay:
    out = OutputStream(params, piece, is_eog)
    for i, tok in enumerate(output):
        if out.push(tok):
            return Replay(out.text, out.finish_reason, len(output) - i - 1)
    return Replay(out.text, out.finish_reason, 0)


def position_of(row, token: int, params: wire.SamplingParams, is_eog: bool, u: float | None = None,
                slack: float = 0.0, allowed=None, index: int | None = None) -> Position:
    """Where ``token`` stood among one position's logits: its log-probability, the best one's,
    how many tokens were more likely; and for a sampled job (``u``: the position's public draw)
    the interval of the job's distribution it owns (:func:`proofs.sampler.interval`)."""
    import numpy as np

    top = float(row.max())
    lse = top + math.log(float(np.exp(row - np.float32(top)).sum(dtype=np.float64)))
    if allowed is not None:  # the best token the grammar allows
        top = float(np.where(allowed, row, -np.inf).max()) if allowed.any() else top
    claimed = float(row[token])
    drawn = None
    if u is not None:
        share = interval(row, token, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                         min_p=params.min_p, slack=slack, u=u, allowed=allowed)
        drawn = Drawn(u=u, lo=share.lo, hi=share.hi, kept=share.kept, stretched=share.stretched)
    return Position(token=token, logprob=claimed - lse, top_logprob=top - lse, rank=int((row > claimed).sum()),
                    is_eog=is_eog, drawn=drawn, forbidden=allowed is not None and not allowed[token], index=index)
