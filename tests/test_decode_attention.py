"""The CPU's grouped decode attention gives MLX's own bits, and is in place only where asked."""

from __future__ import annotations

import sys

import mlx.core as mx
import pytest
from mlx_lm import load

from rasft_mlx.generation.attention import decode_attention, exact_rows, grouped_attention


@pytest.mark.parametrize(("q_heads", "kv_heads"), [(6, 2), (9, 3), (8, 2), (4, 4)])
def test_grouped_attention_gives_mlx_bits_at_the_rows_found_exact(q_heads, kv_heads):
    """At the rows per matmul `exact_rows` picks (and at 1 row, MLX's own split) the grouped
    attention equals MLX's kernel bit for bit, under every kind of mask."""
    group = q_heads // kv_heads
    rows = exact_rows(mx.float32, 16, group)
    assert group % rows == 0
    keys = mx.random.split(mx.random.key(3), 4)
    q = mx.random.normal((4, q_heads, 1, 16), key=keys[0])
    k = mx.random.normal((4, kv_heads, 11, 16), key=keys[1])
    v = mx.random.normal((4, kv_heads, 11, 16), key=keys[2])
    masks = [
        None,
        mx.arange(11)[None, None, None, :] >= mx.array([0, 3, 5, 10])[:, None, None, None],
        mx.random.uniform(shape=(4, q_heads, 1, 11), key=keys[3]) > 0.5,  # one per query head
        mx.random.normal((4, 1, 1, 11), key=keys[3]),  # additive
    ]
    for mask in masks:
        expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
        for r in {rows, 1}:
            assert mx.array_equal(grouped_attention(q, k, v, 0.25, mask, r), expected).item()


def test_decode_attention_is_scoped_and_leaves_prefill_alone(tiny_llama_dir):
    model, _ = load(str(tiny_llama_dir))
    module = sys.modules[type(model).__module__]
    original = module.scaled_dot_product_attention
    with decode_attention(model):
        patched = module.scaled_dot_product_attention
        assert patched is not original
        q = mx.random.normal((1, 4, 3, 8))  # three query positions: MLX's own kernel
        k = mx.random.normal((1, 2, 3, 8))
        out = patched(q, k, k, cache=None, scale=0.5, mask="causal")
        assert mx.array_equal(out, original(q, k, k, cache=None, scale=0.5, mask="causal")).item()
    assert module.scaled_dot_product_attention is original
    with decode_attention(model, enabled=False):
        assert module.scaled_dot_product_attention is original
