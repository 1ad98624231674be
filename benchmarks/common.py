"""Shared pieces of the benchmarks: random Qwen2.5-shaped models, device selection, machine info."""

from __future__ import annotations

import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=4,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=4096,
    ),
    "smollm2-135m": dict(  # SmolLM2-135M's dimensions (its vocabulary is 49,152)
        hidden_size=576,
        num_hidden_layers=30,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
    ),
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        num_hidden_layers=24,
        intermediate_size=4864,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        num_hidden_layers=28,
        intermediate_size=8960,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
}


def use_device(name: str) -> None:
    mx.set_default_device(mx.cpu if name == "cpu" else mx.gpu)


def random_model(shape: str, dtype: mx.Dtype, seed: int = 0):
    """A randomly initialised Qwen2 model of the named shape, and its config."""
    from mlx_lm.models.qwen2 import Model, ModelArgs

    config = dict(
        model_type="qwen2",
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        **SHAPES[shape],
    )
    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(config))
    model.set_dtype(dtype)
    model.eval()
    mx.eval(model.parameters())
    return model, config


def machine_info() -> dict:
    info = {
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": str(mx.default_device()),
        "mlx": version("mlx"),
        "mlx_lm": version("mlx-lm"),
    }
    try:
        info["device_info"] = {k: str(v) for k, v in mx.device_info().items()}
    except Exception:  # noqa: BLE001 - older MLX or no device info
        pass
    return info


def best_of(function, repeats: int = 3) -> float:
    """The fastest of `repeats` timed calls after one untimed warm-up call, in seconds: the round
    least slowed by other load on a shared machine."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)
