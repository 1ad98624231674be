"""Memory: the machine's, what is free now, the process's peak, and what decoding needs per sequence.

`auto_decode_rows` sizes a generation batch (`rollout.batch_size: 0`, `eval.batch_size: 0`) from
free memory: each decoded sequence holds its KV cache (mlx-lm grows caches in 256-token steps,
copying the old one) and a few vocabulary-sized float32 rows per step (logits, log-probs,
repetition penalty, top-p). `rasft-mlx plan` uses the same per-row figure.
"""

from __future__ import annotations

import math
import os
import resource
import sys
from collections import Counter
from dataclasses import dataclass

import mlx.core as mx
from mlx.utils import tree_flatten

KV_STEP, KV_GROWTH = 256, 1.25  # mlx-lm grows caches 256 tokens at a time, copying the old one
DECODE_LOGIT_COPIES = 4  # logits, log-probs, repetition penalty, top-p per decode step
AUTO_MEMORY_SHARE = 0.5  # of the free memory, for one generation batch
AUTO_MAX_ROWS = 512  # beyond this, per-step latency grows with no throughput left to gain


def peak_rss_bytes() -> int:
    """The process's peak resident set so far (ru_maxrss: bytes on macOS, KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def peak_memory_gb() -> float:
    """MLX's peak allocation, or the process's peak RSS where MLX does not track it (CPU)."""
    mlx_peak = mx.get_peak_memory()
    return max(mlx_peak, peak_rss_bytes()) / 1e9


def is_cpu_device() -> bool:
    return mx.default_device().type == mx.DeviceType.cpu


def machine_memory_bytes() -> int:
    """The GPU's memory as MLX reports it (Metal's recommended working set, CUDA's total), else
    the RAM; on Linux a cgroup memory limit below the RAM wins."""
    if not is_cpu_device() and hasattr(mx, "device_info"):
        info = mx.device_info()
        for key in ("max_recommended_working_set_size", "memory_size", "total_memory"):
            if isinstance(info.get(key), int) and info[key] > 0:
                return info[key]
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as file:
                total = min(total, int(file.read().strip()))
        except (OSError, ValueError):  # absent, or "max"
            pass
    return total


def _linux_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_memory_bytes() -> int:
    """Memory a new allocation can still take: on a GPU the device's minus MLX's active memory;
    on a Linux CPU the kernel's MemAvailable (other processes count), capped by the machine's."""
    machine = machine_memory_bytes()
    if is_cpu_device():
        available = _linux_available_bytes()
        if available is not None:
            return max(min(available, machine - mx.get_active_memory()), 0)
    return max(machine - mx.get_active_memory(), 0)


@dataclass(frozen=True)
class ModelDims:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    act_bytes: int  # the compute dtype's bytes


def _arg(args, names: tuple[str, ...], default: int) -> int:
    return next((getattr(args, n) for n in names if getattr(args, n, None)), default)


def model_dims(model) -> ModelDims:
    args = getattr(model, "args", None)
    hidden = _arg(args, ("hidden_size", "dim", "n_embd"), 1024)
    heads = _arg(args, ("num_attention_heads", "n_heads", "n_head"), max(hidden // 64, 1))
    floats = Counter(
        v.dtype.size
        for _, v in tree_flatten(model.parameters())
        if mx.issubdtype(v.dtype, mx.floating)
    )
    return ModelDims(
        layers=len(model.layers),
        hidden=hidden,
        heads=heads,
        kv_heads=_arg(args, ("num_key_value_heads", "n_kv_heads"), heads),
        head_dim=_arg(args, ("head_dim",), hidden // heads),
        intermediate=_arg(args, ("intermediate_size", "hidden_dim"), 4 * hidden),
        vocab=_arg(args, ("vocab_size",), 32000),
        act_bytes=floats.most_common(1)[0][0] if floats else 4,
    )


def kv_bytes_per_row(dims: ModelDims, context_tokens: int) -> int:
    """One sequence's KV cache at `context_tokens`, as mlx-lm allocates it (with growth copies)."""
    context = math.ceil(context_tokens / KV_STEP) * KV_STEP
    per_token = dims.layers * 2 * dims.kv_heads * dims.head_dim * dims.act_bytes
    return int(KV_GROWTH * context * per_token)


def decode_bytes_per_row(dims: ModelDims, context_tokens: int) -> int:
    """One decoded sequence: its KV cache plus its share of a step's vocabulary-sized rows."""
    return kv_bytes_per_row(dims, context_tokens) + DECODE_LOGIT_COPIES * dims.vocab * 4


def auto_decode_rows(
    model,
    context_tokens: int,
    free_bytes: int | None = None,
    share: float = AUTO_MEMORY_SHARE,
    cap: int = AUTO_MAX_ROWS,
) -> int:
    """Sequences to decode together: as many as fit in `share` of the free memory, 1 to cap."""
    free = free_memory_bytes() if free_bytes is None else free_bytes
    per_row = decode_bytes_per_row(model_dims(model), context_tokens)
    return max(1, min(cap, int(share * free) // per_row))
