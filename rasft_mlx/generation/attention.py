"""Decode-step attention on the CPU: MLX's own computation, in fewer and larger matmuls.

On the CPU `mx.fast.scaled_dot_product_attention` runs its composed fallback: with grouped-query
attention it splits the query heads into (KV head, repeat) and multiplies each query head by its
KV head on its own, B x n_q_heads matmuls of (1 x D) @ (D x L) per product. At one query position
the heads that share a KV head can be the rows of one matmul instead, B x n_kv_heads products of
(G x D) @ (D x L), with the same ops otherwise (scale, where with the dtype's min, precise
softmax, matmul). On SmolLM2-135M (9 query heads over 3 KV heads) at 96 rows that takes ~25 %
off the attention, a tenth of the decode step. It must give the same bits as MLX, so greedy
decoding does not change: a BLAS may sum a matmul of more rows in another order, so
`exact_rows` checks on this machine, once per shape, how many rows per matmul keep MLX's bits
(OpenBLAS on x86: 3 do, 4 do not) and the engine keeps MLX's own split where none does.

`decode_attention(model)` puts the grouped form in place of the model module's
`scaled_dot_product_attention` (mlx-lm's models call it by that module-level name) for a
generation, and only for single-position queries with a plain KV cache; everything else goes
to the original.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import mlx.core as mx

_rows_cache: dict[tuple, int] = {}
CHECK_LENGTHS = (1, 5, 37, 64, 130, 300)  # key lengths the exactness check runs at


def grouped_attention(queries, keys, values, scale: float, mask, rows: int | None = None):
    """softmax(scale q k^T, masked) v for one query position, q (B, Hq, 1, D), k and v
    (B, Hkv, L, D), mask None, boolean (where false: the dtype's min) or additive. `rows`: query
    heads per matmul, a divisor of Hq / Hkv (default: all the heads of a KV head)."""
    batch, q_heads, _, dim = queries.shape
    kv_heads = keys.shape[1]
    group = q_heads // kv_heads
    rows = rows or group
    q = mx.array(scale, queries.dtype) * queries
    q = q.reshape(batch, kv_heads, group // rows, rows, dim)
    scores = q @ keys[:, :, None].swapaxes(-1, -2)
    if mask is not None:
        if mask.ndim == 4 and mask.shape[1] != 1:
            shape = (mask.shape[0], q_heads, 1, mask.shape[-1])
            mask = mx.broadcast_to(mask, shape)
            mask = mask.reshape(mask.shape[0], kv_heads, group // rows, rows, -1)
        elif mask.ndim == 4:
            mask = mask[:, :, None]
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    weights = mx.softmax(scores, axis=-1, precise=True)
    return (weights @ values[:, :, None]).reshape(batch, q_heads, 1, dim)


def _gives_mlx_bits(dtype, dim: int, group: int, rows: int) -> bool:
    key = mx.random.key(0)  # its own key: MLX's global random state (sampling) is untouched
    for length in CHECK_LENGTHS:
        key, q_key, k_key, v_key, m_key = mx.random.split(key, 5)
        q = mx.random.normal((2, 2 * group, 1, dim), key=q_key).astype(dtype)
        k = mx.random.normal((2, 2, length, dim), key=k_key).astype(dtype)
        v = mx.random.normal((2, 2, length, dim), key=v_key).astype(dtype)
        mask = mx.random.uniform(shape=(2, 1, 1, length), key=m_key) > 0.3
        for m in (mask, None):
            expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=m)
            if not mx.array_equal(expected, grouped_attention(q, k, v, 0.125, m, rows)).item():
                return False
    return True


def exact_rows(dtype, dim: int, group: int) -> int:
    """The most query heads per matmul (a divisor of `group`) for which `grouped_attention`
    gives MLX's own bits on this device; 1 (MLX's own split) when no grouping does. BLAS
    kernels may sum a product of more rows in another order (OpenBLAS on x86: 3 rows match,
    4 do not), hence the check, once per dtype and shape."""
    key = (str(mx.default_device()), str(dtype), dim, group)
    if key not in _rows_cache:
        divisors = [r for r in range(group, 1, -1) if group % r == 0]
        _rows_cache[key] = next((r for r in divisors if _gives_mlx_bits(dtype, dim, group, r)), 1)
    return _rows_cache[key]


def _is_cpu() -> bool:
    return mx.default_device().type == mx.DeviceType.cpu


@contextmanager
def decode_attention(model, enabled: bool = True) -> Iterator[None]:
    """Within the block, the model's single-position attention runs `grouped_attention` (CPU
    only, where it is exact); restored on the way out."""
    module = sys.modules.get(type(model).__module__)
    original = getattr(module, "scaled_dot_product_attention", None)
    if not (enabled and _is_cpu() and callable(original)):
        yield
        return

    rows_for: dict[tuple, int] = {}

    def attention(queries, keys, values, *args, **kwargs):
        mask = kwargs.get("mask")
        if (
            not args
            and "scale" in kwargs
            and kwargs.get("sinks") is None
            and not hasattr(kwargs.get("cache"), "bits")
            and queries.shape[2] == 1
            and queries.shape[1] % keys.shape[1] == 0
            and queries.dtype == keys.dtype == values.dtype
            and (mask is None or isinstance(mask, mx.array))
        ):
            shape = (queries.dtype, queries.shape[-1], queries.shape[1] // keys.shape[1])
            if shape not in rows_for:
                rows_for[shape] = exact_rows(*shape)
            rows = rows_for[shape]
            if rows > 1:
                return grouped_attention(queries, keys, values, kwargs["scale"], mask, rows)
        return original(queries, keys, values, *args, **kwargs)

    module.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        module.scaled_dot_product_attention = original
