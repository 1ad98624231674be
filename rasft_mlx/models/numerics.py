"""Slow numeric paths on a CPU, named at the start of a run: bf16/fp16 compute and a kept
quantized base, each with its measured slowdown against float32 and the setting that avoids it.

MLX's CPU kernels for bfloat16 and float16 matmuls and for quantized matmuls are plain loops
(measured on the 2-core x86 VM: bf16 5.7 GFLOP/s against 200 for float32 through OpenBLAS), so a
recipe that keeps a GPU's defaults on a CPU runs tens of times slower without saying why.
"""

from __future__ import annotations

import time

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from rasft_mlx.runtime.memory import is_cpu_device

PROBE_ROWS, PROBE_IN, PROBE_OUT = 128, 1024, 1024
SLOWDOWN_WORTH_SAYING = 2.0


def _seconds(run, repeats: int = 3) -> float:
    mx.eval(run())  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        mx.eval(run())
        best = min(best, time.perf_counter() - started)
    return best


def matmul_slowdowns(half_dtype: mx.Dtype | None, quantized_bits: int | None) -> dict[str, float]:
    """Measured time of a (128 x 1024) @ (1024 x 1024) product in the half dtype and as a quantized
    matmul, each divided by its float32 time on this device."""
    x = mx.random.normal((PROBE_ROWS, PROBE_IN))
    w = mx.random.normal((PROBE_OUT, PROBE_IN)) * 0.02
    base = _seconds(lambda: x @ w.T)
    slowdowns = {}
    if half_dtype is not None:
        xh, wh = x.astype(half_dtype), w.astype(half_dtype)
        slowdowns[str(half_dtype).removeprefix("mlx.core.")] = _seconds(lambda: xh @ wh.T) / base
    if quantized_bits is not None:
        packed, scales, biases = mx.quantize(w, group_size=64, bits=quantized_bits)

        def quantized():
            return mx.quantized_matmul(
                x, packed, scales, biases, transpose=True, group_size=64, bits=quantized_bits
            )

        slowdowns[f"{quantized_bits}-bit"] = _seconds(quantized) / base
    return slowdowns


def slow_numerics_warning(model: nn.Module) -> str | None:
    """One line when, on a CPU, the model computes in bf16/fp16 or keeps quantized weights and
    that measures at least 2x slower than float32 here; None otherwise (and on a GPU)."""
    if not is_cpu_device():
        return None
    halves = {
        p.dtype for _, p in tree_flatten(model.parameters()) if p.dtype in (mx.bfloat16, mx.float16)
    }
    bits = {m.bits for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)}
    if not halves and not bits:
        return None
    half = mx.bfloat16 if mx.bfloat16 in halves else next(iter(halves), None)
    slowdowns = matmul_slowdowns(half, min(bits) if bits else None)
    said = []
    for kind, slowdown in slowdowns.items():
        if slowdown < SLOWDOWN_WORTH_SAYING:
            continue
        fix = (
            "model.dequantize: auto" if kind.endswith("-bit") else "model.dtype: float32 (or auto)"
        )
        weights = "a kept quantized base" if kind.endswith("-bit") else f"{kind} weights"
        said.append(
            f"{weights}: {kind} matmuls measured {slowdown:.0f}x slower than float32 here; set {fix}"
        )
    if not said:
        return None
    return "slow numerics on the CPU: " + "; ".join(said)
