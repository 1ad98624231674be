"""The slow-numerics warning: a bf16 or quantized model on the CPU is named at the start of a run
with its measured slowdown and the setting that avoids it; a float32 model costs no probe."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from rasft_mlx.models import numerics


def small_model(dtype=mx.float32, quantize_bits: int | None = None) -> nn.Module:
    model = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 128))
    model.set_dtype(dtype)
    if quantize_bits is not None:
        nn.quantize(model, group_size=64, bits=quantize_bits)
    return model


def test_a_float32_model_is_not_probed(monkeypatch):
    monkeypatch.setattr(numerics, "matmul_slowdowns", pytest.fail)
    assert numerics.slow_numerics_warning(small_model()) is None


def test_bf16_and_a_quantized_base_are_named_with_their_slowdown_and_fix(monkeypatch):
    asked = []

    def measured(half, bits):
        asked.append((half, bits))
        return {"bfloat16": 35.2, "4-bit": 1.4} if bits else {"bfloat16": 35.2}

    monkeypatch.setattr(numerics, "matmul_slowdowns", measured)
    warning = numerics.slow_numerics_warning(small_model(mx.bfloat16))
    assert warning == (
        "slow numerics on the CPU: bfloat16 weights: bfloat16 matmuls measured 35x slower than "
        "float32 here; set model.dtype: float32 (or auto)"
    )
    assert numerics.slow_numerics_warning(small_model(mx.bfloat16, quantize_bits=4)) == warning
    assert asked == [(mx.bfloat16, None), (mx.bfloat16, 4)]  # 1.4x: not worth a line
    monkeypatch.setattr(numerics, "matmul_slowdowns", lambda half, bits: {"8-bit": 9.0})
    warning = numerics.slow_numerics_warning(small_model(quantize_bits=8))
    assert "a kept quantized base: 8-bit matmuls measured 9x slower" in warning
    assert warning.endswith("set model.dequantize: auto")


def test_the_probe_measures_each_path_against_float32():
    slowdowns = numerics.matmul_slowdowns(mx.bfloat16, 4)
    assert set(slowdowns) == {"bfloat16", "4-bit"}
    assert all(value > 0 for value in slowdowns.values())
