"""The compiled step, adapter switching, LR schedule and saved adapters on tiny models."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load

from rasft_mlx.config import DEFAULT_SYSTEM_PROMPT, LoraConfig, TrainingConfig
from rasft_mlx.data.encoding import encode_expert_sequences
from rasft_mlx.data.synthetic import generate_problems
from rasft_mlx.models.adapters import (
    adapter_modules,
    adapters_disabled,
    apply_adapters,
    save_adapters,
)
from rasft_mlx.training.batching import collate
from rasft_mlx.training.losses import LossSettings
from rasft_mlx.training.train_step import CompiledTrainStep, build_lr_schedule


def adapted_model(model_dir, lora_type="lora", seed=0):
    model, tokenizer = load(str(model_dir))
    apply_adapters(model, LoraConfig(type=lora_type, rank=4, scale=2.0))
    mx.random.seed(seed)
    for _, module in adapter_modules(model):  # non-zero B so the adapters change the output
        module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
    mx.eval(model.parameters())
    return model, tokenizer


@pytest.mark.parametrize("lora_type", ["lora", "dora"])
def test_adapters_disabled_gives_base_model_and_restores(tiny_llama_dir, lora_type):
    base, _ = load(str(tiny_llama_dir))
    tokens = mx.array([[5, 17, 42, 9, 33, 2]])
    base_logits = base(tokens)
    model, _ = adapted_model(tiny_llama_dir, lora_type)
    policy_logits = model(tokens)
    assert mx.abs(policy_logits - base_logits).max().item() > 1e-3
    with adapters_disabled(model):
        reference_logits = model(tokens)
    assert mx.allclose(reference_logits, base_logits, atol=1e-5)
    assert mx.allclose(model(tokens), policy_logits, atol=1e-6)

    @mx.compile
    def both(x):
        policy = model(x)
        with adapters_disabled(model):
            reference = model(x)
        return policy, reference

    compiled_policy, compiled_reference = both(tokens)
    assert mx.allclose(compiled_policy, policy_logits, atol=1e-5)
    assert mx.allclose(compiled_reference, base_logits, atol=1e-5)
    assert mx.allclose(model(tokens), policy_logits, atol=1e-6)


def training_sequences(tokenizer, count):
    problems = generate_problems(count, seed=3, min_level=1, max_level=3)
    sequences, _ = encode_expert_sequences(tokenizer, problems, DEFAULT_SYSTEM_PROMPT, 512)
    return sequences


@pytest.mark.parametrize("mode", ["sft", "asft"])
def test_gradient_accumulation_equals_one_big_batch(tiny_llama_dir, mode):
    """Two micro-batches of 2 give the same update as one batch of 4 (token-mean over all 4)."""
    results = []
    for micro_sizes in ([4], [2, 2]):
        model, tokenizer = adapted_model(tiny_llama_dir)
        sequences = training_sequences(tokenizer, 4)
        optimizer = optim.AdamW(learning_rate=1e-2)
        step = CompiledTrainStep(model, optimizer, LossSettings(mode), grad_clip=0.0)
        batches, start = [], 0
        for size in micro_sizes:
            batches.append(collate(sequences[start : start + size], size, 32))
            start += size
        result = step(batches)
        loss, tokens = result.loss, result.tokens
        results.append((loss, tokens, dict(tree_flatten(model.trainable_parameters()))))
    (loss_a, tokens_a, params_a), (loss_b, tokens_b, params_b) = results
    assert tokens_a == tokens_b
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for name, value in params_a.items():
        np.testing.assert_allclose(np.array(value), np.array(params_b[name]), atol=2e-5)


def test_training_step_changes_only_adapters(tiny_llama_dir):
    model, tokenizer = adapted_model(tiny_llama_dir)
    frozen_before = {k: np.array(v) for k, v in tree_flatten(model.parameters()) if "lora" not in k}
    trainable_before = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    step = CompiledTrainStep(model, optim.AdamW(learning_rate=1e-2), LossSettings("sft"), 1.0)
    step([collate(training_sequences(tokenizer, 4), 4, 32)])
    after = dict(tree_flatten(model.parameters()))
    for name, value in frozen_before.items():
        np.testing.assert_array_equal(value, np.array(after[name]))
    assert any(np.abs(v - np.array(after[k])).max() > 0 for k, v in trainable_before.items())


def test_lr_schedule_warmup_then_cosine():
    config = TrainingConfig(learning_rate=1e-3, warmup_steps=4, min_lr_ratio=0.1)
    schedule = build_lr_schedule(config, total_steps=14)
    values = [schedule(mx.array(step)).item() for step in range(15)]
    assert values[0] == pytest.approx(0.0)
    assert values[2] == pytest.approx(0.5e-3)
    assert values[4] == pytest.approx(1e-3)
    assert values[14] == pytest.approx(1e-4, rel=1e-3)
    assert all(a >= b for a, b in zip(values[4:], values[5:], strict=False))


def test_saved_adapters_load_in_mlx_lm(tiny_llama_dir, tmp_path):
    model, _ = adapted_model(tiny_llama_dir)
    save_adapters(model, LoraConfig(rank=4, scale=2.0), str(tiny_llama_dir), tmp_path)
    reloaded, _ = load(str(tiny_llama_dir), adapter_path=str(tmp_path))
    tokens = mx.array([[5, 17, 42, 9]])
    assert mx.allclose(reloaded(tokens), model(tokens), atol=1e-5)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_rasft_step_counts_sequences_on_the_ratio_bounds(tiny_llama_dir):
    model, tokenizer = adapted_model(tiny_llama_dir)
    sequences = training_sequences(tokenizer, 3)
    far_below = [
        replace(s, reference_logprobs=np.full(s.response_length, -30.0)) for s in sequences
    ]
    step = CompiledTrainStep(model, optim.AdamW(learning_rate=1e-3), LossSettings("rasft"), 1.0)
    result = step([collate(far_below, 4, 32)])  # 3 real rows + 1 padding row
    assert (result.sequences, result.ratio_at_min, result.ratio_at_max) == (3, 3, 0)
    far_above = [replace(s, reference_logprobs=np.zeros(s.response_length)) for s in sequences]
    result = step([collate(far_above, 4, 32)])
    assert (result.sequences, result.ratio_at_min, result.ratio_at_max) == (3, 0, 3)
