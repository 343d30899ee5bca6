"""How many tokens of context a node gives a model: trained length, capped by memory.

A context window costs memory in proportion to its length: llama.cpp
allocates the whole KV cache (a key and a value vector per layer, per KV
head, per position) when the model loads.  A fixed default is wrong both
ways: 2048 tokens refuse a modest multi-turn chat on a model trained for
32k, and a model's full trained context can exceed a small machine's RAM.
So, unless the operator sets ``n_ctx``, a node takes the model's trained
context (``<arch>.context_length`` in its GGUF) and caps it at what a share
of the free memory holds of the KV cache::

    n_ctx = min(trained, budget // kv_bytes_per_token)   rounded down to 256
    budget = (free memory - weights) * BUDGET_SHARE      (RAM, or VRAM when offloading)

with a floor of :data:`MIN_N_CTX`.  An explicit ``n_ctx`` wins, but never
beyond the trained context (the model was not trained for those positions).

Slots.  The engine decodes ``n_slots`` sequences side by side, each with a
context of its own (llama.cpp's KV cache, one stream per sequence), so
``n_ctx`` is the context of one slot: what one job may use.  On a CPU the
default is :data:`MIN_SLOTS` slots sharing the window above, as llama.cpp's
server shares ``n_ctx`` among its parallel slots (so the KV cache costs what
one window costs); with a GPU, as many slots of :data:`GPU_SLOT_CTX` tokens
as the budget holds, from :data:`MIN_SLOTS` to :data:`MAX_SLOTS_GPU`.  A
node refuses to start when ``n_slots x n_ctx`` of KV cache and the weights do
not fit in the free memory (:func:`check_fits`).

Everything but :func:`free_memory` and :func:`plan` is pure, and the GGUF
reader needs only the file, not llama.cpp.
"""

from __future__ import annotations

import dataclasses
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

BUDGET_SHARE = 0.25  # of the free memory after the weights: the rest is for compute buffers, the OS, other jobs
MIN_N_CTX = 512  # below this a node serves almost nothing; it takes the memory risk instead
ROUND_TO = 256  # llama.cpp pads its KV cache to 256 cells anyway (llama_kv_cache::get_padding)
KV_ELEMENT_BYTES = 2  # f16, llama.cpp's default type_k and type_v
MIN_SLOTS = 4  # a CPU decodes 4 sequences at ~2x the tokens/s of one (docs/benchmarks.md, throughput)
GPU_SLOT_CTX = 4096  # the context of each default slot on a GPU
MAX_SLOTS_GPU = 64


class ContextError(Exception):
    """The context window cannot be chosen: a bad GGUF, or a requested size the model does not support."""


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache of a GGUF model is made of, from its metadata.

    ``head_count_kv`` has one entry per layer (most models repeat one value;
    some vary it by layer, and llama.cpp reads an array then).  Head sizes
    are in elements: ``key_length`` defaults to ``embedding_length /
    head_count`` as in llama.cpp's ``llama_model::load_hparams``.
    """

    arch: str
    context_length: int  # tokens the model was trained for
    block_count: int  # layers
    head_count_kv: tuple[int, ...]
    key_length: int
    value_length: int


@dataclass(frozen=True)
class ContextChoice:
    """The chosen window and the figures behind it (bytes and tokens)."""

    n_ctx: int
    trained: int
    budget_bytes: int | None  # None: an explicit n_ctx, no budget was needed
    kv_bytes_per_token: int
    why: str  # "requested" | "trained" | "memory" | "floor" | "slots"
    n_slots: int = 1

    @property
    def kv_bytes(self) -> int:
        """The KV cache of every slot (an upper bound: see :func:`kv_bytes_per_token`)."""
        return self.n_slots * self.n_ctx * self.kv_bytes_per_token

    def describe(self) -> str:
        """One line for the start-up log."""
        kv = f"KV cache {self.kv_bytes_per_token / 1024:.1f} KiB/token"
        slots = f"{self.n_slots} slot(s) x {self.n_ctx} tokens = {self.kv_bytes / 2**30:.2f} GiB of KV cache"
        if self.budget_bytes is None:
            return f"n_ctx {self.n_ctx} as configured (trained {self.trained}; {kv}); {slots}"
        fits = self.budget_bytes // max(self.kv_bytes_per_token, 1)
        told = {"trained": "the trained context", "memory": "what the memory budget holds",
                "floor": f"the floor of {MIN_N_CTX}: memory is short, set --n-ctx to choose",
                "slots": "the budget shared by the slots"}[self.why]
        return (f"n_ctx {self.n_ctx} = {told} (trained {self.trained}, budget {self.budget_bytes / 2**30:.2f} GiB "
                f"holds {fits} tokens at {kv}); {slots}")


def kv_bytes_per_token(shape: ModelShape, element_bytes: int = KV_ELEMENT_BYTES) -> int:
    """Bytes of KV cache one token of context costs across all layers.

        sum over layers l of  head_count_kv[l] * (key_length + value_length) * element_bytes

    Source: llama.cpp ``llama_kv_cache`` (src/llama-kv-cache.cpp) allocates per
    layer a K tensor of ``n_embd_k_gqa(l) x kv_size`` and a V tensor of
    ``n_embd_v_gqa(l) x kv_size``, where ``n_embd_k_gqa(l) = n_embd_head_k *
    n_head_kv(l)`` (src/llama-hparams.cpp), in ``type_k``/``type_v`` = f16
    by default.  An upper bound: models with sliding-window layers (gemma 3)
    may keep less for those layers.  gemma-3-270m: 18 layers x 1 KV head x
    (256 + 256) x 2 bytes = 18 KiB per token.
    """
    return sum(heads * (shape.key_length + shape.value_length) * element_bytes for heads in shape.head_count_kv)


def memory_budget(free_bytes: int, weights_bytes: int, share: float = BUDGET_SHARE) -> int:
    """Bytes the KV cache may take: ``share`` of the memory left free after the weights (0 if none)."""
    return int(max(free_bytes - weights_bytes, 0) * share)


def choose_n_ctx(*, trained: int, budget_bytes: int, per_token_bytes: int, requested: int = 0) -> ContextChoice:
    """The context window in tokens: ``requested`` if set, else the trained context capped by memory.

    ``min(trained, budget_bytes // per_token_bytes)`` rounded down to a
    multiple of :data:`ROUND_TO`, never below :data:`MIN_N_CTX` (nor above
    ``trained``).  Raises ContextError if ``requested`` exceeds ``trained``.
    """
    if trained <= 0 or per_token_bytes <= 0:
        raise ContextError(f"cannot size the context: trained length {trained}, {per_token_bytes} bytes/token")
    if requested:
        if requested > trained:
            raise ContextError(f"n_ctx {requested} (--n-ctx or engine.n_ctx) is over the model's trained context "
                               f"of {trained} tokens: set at most {trained}, or 0 to let the node choose")
        return ContextChoice(requested, trained, None, per_token_bytes, "requested")
    fits = budget_bytes // per_token_bytes // ROUND_TO * ROUND_TO
    if fits >= trained:
        return ContextChoice(trained, trained, budget_bytes, per_token_bytes, "trained")
    if fits >= MIN_N_CTX:
        return ContextChoice(fits, trained, budget_bytes, per_token_bytes, "memory")
    return ContextChoice(min(MIN_N_CTX, trained), trained, budget_bytes, per_token_bytes, "floor")


def choose_slots(whole: ContextChoice, *, budget_bytes: int, requested_slots: int = 0, gpu: bool = False) \
        -> ContextChoice:
    """Slots and the context of each, from ``whole`` (:func:`choose_n_ctx`'s window).

    An explicit ``n_ctx`` (``whole.why == "requested"``) is each slot's.  Otherwise on a CPU
    the slots share ``whole.n_ctx`` (each gets ``whole.n_ctx // n_slots``, rounded down to
    :data:`ROUND_TO`, at least :data:`MIN_N_CTX`); on a GPU each gets what the budget holds
    for ``n_slots`` (at most the trained context).  ``n_slots``: ``requested_slots``, else
    :data:`MIN_SLOTS` on a CPU and ``budget // (GPU_SLOT_CTX x per token)`` clamped to
    [:data:`MIN_SLOTS`, :data:`MAX_SLOTS_GPU`] on a GPU.
    """
    per_token = whole.kv_bytes_per_token
    n_slots = requested_slots or (
        min(max(budget_bytes // (min(whole.trained, GPU_SLOT_CTX) * per_token), MIN_SLOTS), MAX_SLOTS_GPU)
        if gpu else MIN_SLOTS)
    if whole.why == "requested":
        return dataclasses.replace(whole, n_slots=n_slots)
    share = budget_bytes // (n_slots * per_token) if gpu else whole.n_ctx // n_slots
    n_ctx = min(max(share // ROUND_TO * ROUND_TO, MIN_N_CTX), whole.trained)
    return dataclasses.replace(whole, n_ctx=n_ctx, n_slots=n_slots, why="slots" if n_slots > 1 else whole.why)


def check_fits(choice: ContextChoice, *, free_bytes: int, weights_bytes: int, where: str = "RAM") -> None:
    """Raise ContextError when the KV cache of every slot and the weights exceed ``free_bytes``."""
    need = choice.kv_bytes + weights_bytes
    if need > free_bytes:
        raise ContextError(
            f"{choice.n_slots} slot(s) x {choice.n_ctx} tokens of context need {choice.kv_bytes / 2**30:.2f} GiB of "
            f"KV cache and {weights_bytes / 2**30:.2f} GiB of weights, but {free_bytes / 2**30:.2f} GiB of {where} "
            f"is free: lower --parallel or --n-ctx")


# ---------------------------------------------------------------------------- GGUF metadata

GGUF_MAGIC = b"GGUF"
# Value types of the GGUF key-value section -> struct format (8: string, 9: array).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_shape(path: Path) -> ModelShape:
    """The KV-cache shape of the GGUF file at ``path`` (reads its header only).  Raises
    ContextError for a file that is not a GGUF or lacks the keys llama.cpp needs."""
    return shape_from_metadata(read_metadata(path), str(path))


def read_metadata(path: Path) -> dict:
    """The key-values of the GGUF file at ``path`` (its header only; arrays of numbers as lists,
    other arrays None).  Format: github.com/ggml-org/ggml docs/gguf.md, versions 2 and 3
    (little-endian).  Raises ContextError for a file that is not such a GGUF."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _read_metadata(data)
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ContextError(f"cannot read the GGUF header of {path}: {exc}") from None


def shape_from_metadata(meta: dict, where: str = "the model") -> ModelShape:
    """A :class:`ModelShape` from GGUF key-values (defaults as llama.cpp applies them)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ContextError(f"{where} has no general.architecture key: not a llama.cpp model")

    def number(key: str, default: int | None = None) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if not isinstance(value, int) or value < 0:
            raise ContextError(f"{where} lacks a valid {arch}.{key} (got {value!r})")
        return value

    layers, heads = number("block_count"), number("attention.head_count")
    kv = meta.get(f"{arch}.attention.head_count_kv", heads)
    kv_heads = tuple(kv) if isinstance(kv, list) else (kv,) * layers
    if len(kv_heads) != layers or not all(isinstance(h, int) and h >= 0 for h in kv_heads):
        raise ContextError(f"{where} has a bad {arch}.attention.head_count_kv: {kv!r}")
    key_length = number("attention.key_length", number("embedding_length") // max(heads, 1))
    return ModelShape(arch=arch, context_length=number("context_length"), block_count=layers,
                      head_count_kv=kv_heads, key_length=key_length,
                      value_length=number("attention.value_length", key_length))


def _read_metadata(data) -> dict:
    """GGUF key -> value; arrays of numbers as lists, other arrays skipped (None)."""
    if data[:4] != GGUF_MAGIC:
        raise ValueError("bad magic bytes")
    version, _tensors, count = struct.unpack_from("<IQQ", data, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (only 2 and 3 are read)")
    meta, offset = {}, 24
    for _ in range(count):
        key, offset = _string(data, offset)
        (kind,), offset = struct.unpack_from("<I", data, offset), offset + 4
        meta[key], offset = _value(data, offset, kind)
    return meta


def _string(data, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, offset)
    end = offset + 8 + length
    return bytes(data[offset + 8:end]).decode(), end


def _value(data, offset: int, kind: int):
    """(value, offset after it); a string array is skipped without decoding (the vocabulary is 100k+ strings)."""
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        return struct.unpack_from(fmt, data, offset)[0], offset + struct.calcsize(fmt)
    if kind == _STRING:
        return _string(data, offset)
    if kind != _ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, count = struct.unpack_from("<IQ", data, offset)
    offset += 12
    if item in _SCALARS:
        size = struct.calcsize(_SCALARS[item])
        values = list(struct.unpack_from(f"<{count}{_SCALARS[item][1]}", data, offset)) if count <= 4096 else None
        return values, offset + count * size
    if item == _STRING:
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            offset += 8 + unpack(data, offset)[0]
        return None, offset
    for _ in range(count):  # arrays of arrays: walk them
        _, offset = _value(data, offset, item)
    return None, offset


# ---------------------------------------------------------------------------- the machine

def plan(path: Path, *, requested: int = 0, slots: int = 0, offload: bool = False) -> ContextChoice:
    """Slots and the context of each for the GGUF at ``path`` on this machine (reads the file and
    free memory); ``requested``/``slots``: ``--n-ctx``/``--parallel`` (0: choose).

    ``offload``: layers go to the GPU, so the KV cache and weights live in
    VRAM and the budget comes from free VRAM instead of RAM.
    Raises ContextError for a bad GGUF, an ``n_ctx`` over the trained context, or slots
    that do not fit in the free memory.
    """
    shape = read_shape(path)
    per_token = kv_bytes_per_token(shape)
    weights, free = path.stat().st_size, free_memory(gpu=offload)
    budget = memory_budget(free, weights)
    whole = choose_n_ctx(trained=shape.context_length, budget_bytes=0 if requested else budget,
                         per_token_bytes=per_token, requested=requested)
    choice = choose_slots(whole, budget_bytes=budget, requested_slots=slots, gpu=offload)
    check_fits(choice, free_bytes=free, weights_bytes=weights, where="VRAM" if offload else "RAM")
    return choice


def free_memory(*, gpu: bool = False) -> int:
    """Bytes free now: RAM the kernel can give without swapping (MemAvailable), or free VRAM over all GPUs."""
    from inferad.hardware import available_ram_bytes, free_vram_bytes

    if gpu:
        vram = free_vram_bytes()
        if vram:
            return vram
    return available_ram_bytes()
