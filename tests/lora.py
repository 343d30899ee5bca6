"""A small LoRA adapter for gemma-3-270m's tensor shapes, written with the ``gguf`` package
(the llama.cpp project's writer), for tests.

llama.cpp's LoRA GGUF: ``general.type = adapter``, ``adapter.type = lora``,
``adapter.lora.alpha``; for a base weight ``W`` (ggml shape ``[n_in, n_out]``) the tensors
``<W>.lora_a`` (numpy shape ``(rank, n_in)``) and ``<W>.lora_b`` (``(n_out, rank)``), and the
layer computes ``W x + (alpha / rank) B A x``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inferad.context import read_metadata


def make_adapter(base: Path, dest: Path, *, seed: int = 0, scale: float = 0.5, rank: int = 8) -> Path:
    """An adapter on the first block's query and up projections of ``base``, with weights of
    standard deviation ``scale`` (0.5 changes gemma-3-270m's greedy output; 0.05 does not)."""
    import gguf

    meta = read_metadata(base)
    arch = meta["general.architecture"]
    n_embd = meta[f"{arch}.embedding_length"]
    n_q = meta[f"{arch}.attention.head_count"] * meta[f"{arch}.attention.key_length"]
    shapes = {"blk.0.attn_q.weight": (n_embd, n_q),
              "blk.0.ffn_up.weight": (n_embd, meta[f"{arch}.feed_forward_length"])}
    rng = np.random.default_rng(seed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(dest), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for name, (n_in, n_out) in shapes.items():
        writer.add_tensor(f"{name}.lora_a", rng.normal(0, scale, (rank, n_in)).astype(np.float32))
        writer.add_tensor(f"{name}.lora_b", rng.normal(0, scale, (n_out, rank)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest
