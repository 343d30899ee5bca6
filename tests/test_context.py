"""Choosing the context window: the model's trained length, capped by a memory budget."""

import struct

import pytest

from inferad.context import (
    MIN_N_CTX,
    ContextError,
    ModelShape,
    choose_n_ctx,
    kv_bytes_per_token,
    memory_budget,
    plan,
    read_shape,
)

GEMMA = ModelShape(arch="gemma3", context_length=32768, block_count=18, head_count_kv=(1,) * 18, key_length=256,
                   value_length=256)
KIB, GIB = 1 << 10, 1 << 30


def test_kv_cache_per_token_follows_llama_cpp_layout():
    # 18 layers x 1 KV head x (256 key + 256 value) x 2 bytes (f16)
    assert kv_bytes_per_token(GEMMA) == 18 * KIB
    grouped = ModelShape("llama", 131072, 32, (8,) * 32, 128, 128)  # Llama 3.1 8B: 128 KiB per token
    assert kv_bytes_per_token(grouped) == 128 * KIB


def test_the_trained_context_when_the_budget_holds_it():
    choice = choose_n_ctx(trained=32768, budget_bytes=4 * GIB, per_token_bytes=18 * KIB)
    assert (choice.n_ctx, choice.why) == (32768, "trained")
    assert "32768" in choice.describe() and "GiB" in choice.describe()


def test_a_small_budget_caps_the_context_at_a_multiple_of_256():
    choice = choose_n_ctx(trained=32768, budget_bytes=1000 * 18 * KIB, per_token_bytes=18 * KIB)
    assert (choice.n_ctx, choice.why) == (768, "memory")  # 1000 tokens fit: 768 is the multiple of 256 below


def test_a_budget_below_the_floor_still_gets_the_floor():
    choice = choose_n_ctx(trained=32768, budget_bytes=10 * 18 * KIB, per_token_bytes=18 * KIB)
    assert (choice.n_ctx, choice.why) == (MIN_N_CTX, "floor")
    tiny = choose_n_ctx(trained=128, budget_bytes=0, per_token_bytes=18 * KIB)
    assert tiny.n_ctx == 128  # never beyond what the model was trained for


def test_an_explicit_n_ctx_wins_up_to_the_trained_context():
    assert choose_n_ctx(trained=32768, budget_bytes=0, per_token_bytes=1, requested=1000).n_ctx == 1000
    with pytest.raises(ContextError, match="over the model's trained context of 32768 tokens: set at most 32768"):
        choose_n_ctx(trained=32768, budget_bytes=0, per_token_bytes=1, requested=65536)


def test_the_budget_is_a_share_of_the_memory_left_after_the_weights():
    assert memory_budget(16 * GIB, 4 * GIB, share=0.25) == 3 * GIB
    assert memory_budget(1 * GIB, 4 * GIB) == 0


# ---------------------------------------------------------------------------- GGUF headers


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def write_gguf(path, items: list[tuple[str, int, bytes]]) -> None:
    """A GGUF v3 header with the given (key, value type, packed value) items and no tensors."""
    body = b"".join(_string(key) + struct.pack("<I", kind) + value for key, kind, value in items)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(items)) + body)


U32, STRING, ARRAY = 4, 8, 9


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def test_reads_the_shape_from_a_gguf_header_skipping_the_vocabulary(tmp_path):
    vocabulary = struct.pack("<IQ", STRING, 3) + b"".join(_string(t) for t in ("<s>", "hello", "world"))
    path = tmp_path / "m.gguf"
    write_gguf(path, [("general.architecture", STRING, _string("llama")),
                      ("llama.context_length", U32, u32(8192)), ("llama.block_count", U32, u32(2)),
                      ("llama.embedding_length", U32, u32(512)), ("llama.attention.head_count", U32, u32(8)),
                      ("llama.attention.head_count_kv", ARRAY, struct.pack("<IQ", U32, 2) + u32(2) + u32(4)),
                      ("tokenizer.ggml.tokens", ARRAY, vocabulary)])
    shape = read_shape(path)
    # key_length defaults to embedding_length / head_count, value_length to key_length (as llama.cpp does)
    assert shape == ModelShape("llama", 8192, 2, (2, 4), 64, 64)
    assert kv_bytes_per_token(shape) == (2 + 4) * (64 + 64) * 2


def test_a_file_that_is_not_a_usable_gguf_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(ContextError, match="bad.gguf"):
        read_shape(bad)
    partial = tmp_path / "partial.gguf"
    write_gguf(partial, [("general.architecture", STRING, _string("llama"))])
    with pytest.raises(ContextError, match="llama.block_count"):
        read_shape(partial)


def long_model(tmp_path):
    path = tmp_path / "long.gguf"  # 1 layer x 1 KV head x (512 + 512) x 2 bytes: 2 KiB per token, 1M trained
    write_gguf(path, [("general.architecture", STRING, _string("llama")), ("llama.context_length", U32, u32(1 << 20)),
                      ("llama.block_count", U32, u32(1)), ("llama.embedding_length", U32, u32(512)),
                      ("llama.attention.head_count", U32, u32(1))])
    return path


def test_offloading_sizes_the_slots_from_free_vram_and_else_from_ram(tmp_path, monkeypatch):
    path = long_model(tmp_path)
    monkeypatch.setattr("inferad.hardware.available_ram_bytes", lambda: 100 * GIB)
    monkeypatch.setattr("inferad.hardware.free_vram_bytes", lambda: 4 * GIB)
    on_gpu = plan(path, offload=True)  # a quarter of 4 GiB (less the tiny file) at 2 KiB per token
    assert on_gpu.n_slots == 64 and on_gpu.n_ctx == 8192 - 256  # as many 4096-token slots as fit: capped at 64
    assert on_gpu.kv_bytes <= GIB
    on_cpu = plan(path, offload=False)  # 2 GiB of KV cache: within a quarter of 100 GiB, shared by 4 slots
    assert (on_cpu.why, on_cpu.n_slots, on_cpu.n_ctx) == ("slots", 4, (1 << 20) // 4)
    monkeypatch.setattr("inferad.hardware.free_vram_bytes", lambda: 0)  # no NVML: RAM is all we know
    assert plan(path, offload=True).kv_bytes > 4 * GIB


def test_an_explicit_context_is_each_slots_and_slots_that_do_not_fit_are_refused(tmp_path, monkeypatch):
    path = long_model(tmp_path)
    monkeypatch.setattr("inferad.hardware.available_ram_bytes", lambda: 4 * GIB)
    choice = plan(path, requested=4096, slots=16)
    assert (choice.n_slots, choice.n_ctx, choice.kv_bytes) == (16, 4096, 16 * 4096 * 2 * KIB)
    with pytest.raises(ContextError, match="lower --parallel or --n-ctx"):
        plan(path, requested=1 << 19, slots=8)  # 8 GiB of KV cache, 4 GiB free


@pytest.mark.model
def test_gemma_3_270m_is_trained_for_32k_at_18_kib_per_token(gemma_path):
    shape = read_shape(gemma_path)
    assert (shape.arch, shape.context_length) == ("gemma3", 32768)
    assert kv_bytes_per_token(shape) == 18 * KIB
