"""`rasft_mlx.runtime.memory`: per-row decode bytes by hand, auto batch sizing, free memory."""

from __future__ import annotations

import pytest
from mlx_lm import load

from rasft_mlx.generation.completions import SamplingSettings, generate_completions
from rasft_mlx.runtime.memory import (
    AUTO_MAX_ROWS,
    ModelDims,
    auto_decode_rows,
    decode_bytes_per_row,
    free_memory_bytes,
    kv_bytes_per_row,
    machine_memory_bytes,
    model_dims,
)

DIMS = ModelDims(
    layers=2, hidden=32, heads=4, kv_heads=2, head_dim=8, intermediate=64, vocab=100, act_bytes=4
)


def test_kv_cache_per_row_by_hand():
    # 300 tokens -> two 256-token steps = 512; per token 2 layers x (K, V) x 2 heads x 8 x 4 bytes
    assert kv_bytes_per_row(DIMS, 300) == int(1.25 * 512 * (2 * 2 * 2 * 8 * 4)) == 163_840
    assert kv_bytes_per_row(DIMS, 256) == int(1.25 * 256 * 256)


def test_decode_row_adds_four_float32_vocabulary_rows():
    assert decode_bytes_per_row(DIMS, 300) == 163_840 + 4 * 100 * 4


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load(str(tiny_llama_dir))


def test_model_dims_read_the_config(tiny):
    model, _ = tiny
    dims = model_dims(model)
    args = model.args
    assert (dims.layers, dims.hidden, dims.vocab) == (
        args.num_hidden_layers,
        args.hidden_size,
        args.vocab_size,
    )
    assert dims.kv_heads == args.num_key_value_heads and dims.act_bytes == 4


def test_auto_rows_fill_the_share_of_free_memory_within_bounds(tiny):
    model, _ = tiny
    per_row = decode_bytes_per_row(model_dims(model), 200)
    assert auto_decode_rows(model, 200, free_bytes=40 * per_row, share=0.5) == 20
    assert auto_decode_rows(model, 200, free_bytes=41 * per_row, share=0.5) == 20
    assert auto_decode_rows(model, 200, free_bytes=0) == 1
    assert auto_decode_rows(model, 200, free_bytes=10**15) == AUTO_MAX_ROWS
    longer = auto_decode_rows(model, 2000, free_bytes=40 * per_row, share=0.5)
    assert 1 <= longer < 20


def test_free_memory_is_positive_and_within_the_machine():
    assert 0 < free_memory_bytes() <= machine_memory_bytes()


def test_auto_batch_generates_what_a_fixed_batch_does(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer.encode(t) for t in ("What is 3 + 4?", "Hi", "Add 2 and 9.")] * 2
    auto, _ = generate_completions(model, tokenizer, prompts, SamplingSettings(10, batch_size=0))
    fixed, _ = generate_completions(model, tokenizer, prompts, SamplingSettings(10, batch_size=2))
    assert auto == fixed
