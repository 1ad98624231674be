"""`rasft-mlx eval --adapter`: the adapter is merged into float32 weights before decoding
(`fuse_adapters`), scoring the same policy as the live adapter layers; bf16 or quantised weights
keep the adapter live, with the reason."""

from __future__ import annotations

import json

import mlx.nn as nn
import numpy as np
import pytest
from test_start_adapter import logits, make_adapter, randomize_adapters
from typer.testing import CliRunner

from rasft_mlx.cli import app
from rasft_mlx.evaluation import benchmarks
from rasft_mlx.models.adapters import (
    adapter_modules,
    apply_adapters,
    fuse_adapters,
)
from rasft_mlx.models.loading import load_model
from rasft_mlx.recipe.config import LoraConfig, ModelConfig

runner = CliRunner()


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_fused_weights_give_the_live_adapters_logits(tiny_llama_dir, kind):
    loaded = load_model(ModelConfig(path=str(tiny_llama_dir)))
    base = logits(loaded.model)
    apply_adapters(loaded.model, LoraConfig(type=kind, rank=4, scale=3.0))
    randomize_adapters(loaded.model, 0)
    live = logits(loaded.model)
    assert np.abs(live - base).max() > 1e-2  # the adapter does something

    assert fuse_adapters(loaded.model) is None
    assert adapter_modules(loaded.model) == []
    np.testing.assert_allclose(logits(loaded.model), live, atol=1e-4)
    assert fuse_adapters(loaded.model) is None  # nothing left to fuse, nothing kept live


def test_bf16_and_quantised_weights_keep_the_adapter_live(tiny_llama_dir):
    loaded = load_model(ModelConfig(path=str(tiny_llama_dir), dtype="bfloat16"))
    apply_adapters(loaded.model, LoraConfig(rank=4))
    reason = fuse_adapters(loaded.model)
    assert "bfloat16" in reason and "only float32" in reason
    assert len(adapter_modules(loaded.model)) > 0

    loaded = load_model(ModelConfig(path=str(tiny_llama_dir)))
    nn.quantize(loaded.model, group_size=32, bits=8)
    apply_adapters(loaded.model, LoraConfig(rank=4))
    adapted = len(adapter_modules(loaded.model))
    assert "quantised base" in fuse_adapters(loaded.model)
    assert len(adapter_modules(loaded.model)) == adapted


def test_eval_scores_the_fused_adapter_with_the_live_ones_answers(
    tiny_llama_dir, tmp_path, monkeypatch
):
    make_adapter(tiny_llama_dir, tmp_path / "adapter", 3, rank=4, scale=2.0)
    evaluated = []
    real = benchmarks.evaluate_problems

    def spy(model, *args, **kwargs):
        evaluated.append(len(adapter_modules(model)))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(benchmarks, "evaluate_problems", spy)
    args = ["eval", "--model", str(tiny_llama_dir), "--adapter", str(tmp_path / "adapter")]
    args += ["--data", "synthetic", "--limit", "6", "--max-new-tokens", "12"]
    completions = {}
    for flag in ("--fuse", "--no-fuse"):
        out = tmp_path / flag.strip("-")
        result = runner.invoke(app, [*args, flag, "--out", str(out)])
        assert result.exit_code == 0, result.output
        lines = (out / "eval.jsonl").read_text().splitlines()
        completions[flag] = [json.loads(line)["completion"] for line in lines]
    assert evaluated[0] == 0 and evaluated[1] > 0  # fused: no adapter layer left to decode
    assert completions["--fuse"] == completions["--no-fuse"]
