"""The scale-test engine (``--engine sim``): a SIMULATED model, no inference.

It exists so that 20+ node processes fit on a 2-core machine for scale tests
and benchmarks of the mesh and the scheduler.  It produces deterministic
tokens (a hash of the prompt and position) at a configured rate, and
advertises engine ``sim`` and model names starting with ``sim`` whose
digests can never collide with a real GGUF's, so no client can mistake it
for a real model.  Never a default.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

from inferad.engine import EngineError, Generation, GenerationCancelled, OnToken, OutputStream, check_vocabulary
from p2p import wire

SIM_PREFIX = "sim"
SIM_N_CTX = 2048
EOG = 0
SIM_VOCAB = 31000  # tokenize() and _token() make ids below this


def is_sim_model(name: str) -> bool:
    return name == SIM_PREFIX or name.startswith(SIM_PREFIX + "-")


def sim_model_ref(name: str = SIM_PREFIX) -> wire.ModelRef:
    if not is_sim_model(name):
        raise ValueError(f"simulated model names start with {SIM_PREFIX!r}, got {name!r}")
    digest = hashlib.sha256(b"inferad simulated model, not a GGUF: " + name.encode()).hexdigest()
    return wire.ModelRef(sha256=digest, name=name)


class SimEngine:
    kind = "sim"
    n_slots = 1  # one job at a time, at the configured speed

    def __init__(self, name: str = SIM_PREFIX, *, tokens_per_s: float = 50.0, n_ctx: int = 0) -> None:
        """``n_ctx`` 0: :data:`SIM_N_CTX`, the simulated model's "trained" context (no memory to size)."""
        if tokens_per_s <= 0:
            raise EngineError("the sim engine needs a positive --sim-tokens-per-s")
        self.ref = sim_model_ref(name)
        self.adapter_ref = None  # no LoRA on a simulated engine
        self.key = self.ref.sha256
        self.tokens_per_s = tokens_per_s
        self.n_ctx = n_ctx or SIM_N_CTX
        self.n_vocab = SIM_VOCAB
        self.load_seconds = 0.0
        self.info = wire.EngineInfo(name="sim", version=f"{tokens_per_s:g} tok/s", backend="simulated")

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        return [1] + [1000 + int.from_bytes(data[i:i + 4].ljust(4, b"\0"), "big") % 30000
                      for i in range(0, len(data), 4)]

    def prompt_tokens(self, job: wire.JobRequest) -> list[int]:
        if job.prompt_tokens is not None:
            return check_vocabulary(job.prompt_tokens, self.n_vocab)
        if job.prompt is not None:
            return self.tokenize(job.prompt)
        return self.tokenize("\n".join(f"{m.role}: {m.content}" for m in job.messages))

    def _token(self, prompt: list[int], position: int) -> int:
        seed = hashlib.sha256(repr((prompt, position)).encode()).digest()
        return 1000 + int.from_bytes(seed[:4], "big") % 30000

    def generate(self, prompt: list[int], params: wire.SamplingParams, on_token: OnToken | None = None,
                 prefix: Sequence[int] = (), *, cancelled: Callable[[], bool] = lambda: False,
                 job_id: str = "") -> Generation:
        """Pseudo-random tokens at ``tokens_per_s``.  Raises EngineError for logprobs (it has no logits)
        and for n > 1 (its one slot; workers refuse such jobs first)."""
        if params.logprobs is not None or params.n > 1:
            raise EngineError("a simulated engine has one slot and no logits: no n > 1, no logprobs")
        out = OutputStream(params, lambda tok: f" w{tok}".encode(), lambda tok: tok == EOG, on_token)
        out.replay(list(prefix))
        interval = 1.0 / self.tokens_per_s
        next_at = time.perf_counter()
        while out.finish_reason is None:
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))
            if cancelled():
                raise GenerationCancelled()
            if out.push(self._token(prompt, len(out.tokens))):
                break
        return out.result(len(prompt))

    def replay(self, output: Sequence[int], params: wire.SamplingParams):
        """Verification starts here, and a simulated model cannot verify (inconclusive)."""
        raise EngineError("a simulated engine has no model to re-score with")

    def close(self) -> None:
        pass
