"""The compiled step, adapter switching, LR schedule and saved adapters on tiny models."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map
from mlx_lm import load

from rasft_mlx.data.encoding import encode_expert_sequences
from rasft_mlx.data.synthetic import generate_problems
from rasft_mlx.generation.completions import SamplingSettings, generate_completions
from rasft_mlx.models.adapters import (
    adapter_modules,
    apply_adapters,
    dropout_mode,
    reference_policy,
    save_adapters,
)
from rasft_mlx.rasft.reference import response_logprobs
from rasft_mlx.recipe.config import DEFAULT_SYSTEM_PROMPT, LoraConfig, TrainingConfig
from rasft_mlx.training.batching import collate
from rasft_mlx.training.losses import LossSettings, token_logprobs
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
def test_reference_policy_gives_base_model_and_restores(tiny_llama_dir, lora_type):
    base, _ = load(str(tiny_llama_dir))
    tokens = mx.array([[5, 17, 42, 9, 33, 2]])
    base_logits = base(tokens)
    model, _ = adapted_model(tiny_llama_dir, lora_type)
    policy_logits = model(tokens)
    assert mx.abs(policy_logits - base_logits).max().item() > 1e-3
    with reference_policy(model):
        reference_logits = model(tokens)
    assert mx.allclose(reference_logits, base_logits, atol=1e-5)
    assert mx.allclose(model(tokens), policy_logits, atol=1e-6)

    @mx.compile
    def both(x):
        policy = model(x)
        with reference_policy(model):
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


def token_mean_ce_grad_norm(model, batch) -> float:
    """The gradient norm of plain CE averaged over every unmasked token, computed without the step."""
    return tree_norm(token_mean_ce_grads(model, batch)[1])


def tree_norm(tree) -> float:
    return float(np.sqrt(sum(float((g * g).sum()) for _, g in tree_flatten(tree))))


def token_mean_ce_grads(model, batch):
    """(loss, gradients) of plain CE averaged over the batch's unmasked tokens, outside the step."""

    def loss(model):
        logits = model(batch.inputs)
        positions = batch.positions[..., None]
        picked = mx.take_along_axis(logits, positions, axis=1)
        logprobs = picked - mx.logsumexp(picked, axis=-1, keepdims=True)
        target_logprobs = mx.take_along_axis(logprobs, batch.targets[..., None], axis=-1)[..., 0]
        mask = batch.mask.astype(mx.float32)
        return -(target_logprobs * mask).sum() / mask.sum()

    value, grads = nn.value_and_grad(model, loss)(model)
    return float(value), grads


def test_micro_batch_mean_weighs_every_micro_batch_equally(tiny_llama_dir):
    """The authors' normalisation: the gradient is the mean over micro-batches of each one's
    token-mean gradient; with micro-batches of unequal token counts it differs from the token
    mean over the whole step."""
    model, tokenizer = adapted_model(tiny_llama_dir)
    sequences = sorted(training_sequences(tokenizer, 4), key=lambda s: s.response_length)
    batches = [collate(sequences[:1], 1, 32), collate(sequences[1:], 3, 32)]
    parts = [token_mean_ce_grads(model, batch) for batch in batches]
    expected_grads = tree_map(lambda a, b: (a + b) / 2, parts[0][1], parts[1][1])
    expected_loss = (parts[0][0] + parts[1][0]) / 2
    whole_step_norm = token_mean_ce_grad_norm(model, collate(sequences, 4, 32))
    optimizer = optim.AdamW(learning_rate=1e-2)
    step = CompiledTrainStep(model, optimizer, LossSettings("sft"), 0.0, "micro_batch_mean")
    result = step(batches)
    assert result.grad_norm == pytest.approx(tree_norm(expected_grads), rel=1e-4)
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)
    assert abs(result.grad_norm - whole_step_norm) > 1e-3 * whole_step_norm


@pytest.mark.parametrize("mode", ["sft", "asft"])
def test_gradient_accumulation_equals_one_big_batch(tiny_llama_dir, mode):
    """Two micro-batches of 2 give the same gradient and update as one batch of 4 (token mean over
    all 4): the gradient norms (clipping off) agree closely, and for SFT both equal the norm of the
    token-mean CE gradient computed independently."""
    results = []
    for micro_sizes in ([4], [2, 2]):
        model, tokenizer = adapted_model(tiny_llama_dir)
        sequences = training_sequences(tokenizer, 4)
        expected_norm = token_mean_ce_grad_norm(model, collate(sequences, 4, 32))
        optimizer = optim.AdamW(learning_rate=1e-2)
        step = CompiledTrainStep(model, optimizer, LossSettings(mode), grad_clip=0.0)
        batches, start = [], 0
        for size in micro_sizes:
            batches.append(collate(sequences[start : start + size], size, 32))
            start += size
        result = step(batches)
        params = dict(tree_flatten(model.trainable_parameters()))
        results.append((result, params, expected_norm))
    (a, params_a, expected), (b, params_b, _) = results
    assert a.tokens == b.tokens
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
    assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-4)
    if mode == "sft":
        assert a.grad_norm == pytest.approx(expected, rel=1e-4)
    for name, value in params_a.items():
        np.testing.assert_allclose(np.array(value), np.array(params_b[name]), atol=2e-5)


def dropout_model(model_dir, dropout):
    """A tiny model whose adapters are identical across calls (seeded init, non-zero B)."""
    model, tokenizer = load(str(model_dir))
    mx.random.seed(0)
    apply_adapters(model, LoraConfig(rank=4, scale=2.0, dropout=dropout))
    for _, module in adapter_modules(model):
        module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
    mx.eval(model.parameters())
    return model, tokenizer


def two_steps_with_seed(model_dir, seed, dropout=0.5) -> dict:
    model, tokenizer = dropout_model(model_dir, dropout)
    batch = collate(training_sequences(tokenizer, 4), 4, 32)
    step = CompiledTrainStep(model, optim.AdamW(learning_rate=1e-2), LossSettings("sft"), 1.0)
    mx.random.seed(seed)
    losses = [step([batch]).loss, step([batch]).loss]
    params = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    return {"losses": losses, "params": params, "model": model, "tokenizer": tokenizer}


def test_adapter_dropout_is_active_in_training_steps(tiny_llama_dir):
    """lora.dropout > 0: the steps draw dropout masks from MLX's random state (same seed, same
    parameters; another seed, other parameters); dropout 0 does not depend on the seed."""
    first = two_steps_with_seed(tiny_llama_dir, seed=1)
    again = two_steps_with_seed(tiny_llama_dir, seed=1)
    other = two_steps_with_seed(tiny_llama_dir, seed=2)
    for name, value in first["params"].items():
        np.testing.assert_array_equal(value, again["params"][name])
    assert first["losses"] != other["losses"]
    assert max(np.abs(v - other["params"][k]).max() for k, v in first["params"].items()) > 1e-4
    plain = [two_steps_with_seed(tiny_llama_dir, seed, dropout=0.0) for seed in (1, 2)]
    for name, value in plain[0]["params"].items():
        np.testing.assert_array_equal(value, plain[1]["params"][name])


def test_dropout_is_off_outside_training_steps(tiny_llama_dir):
    """After training steps, and even with the model forced into train mode, reference log-probs
    and greedy rollouts do not depend on MLX's random state; the caller's mode comes back."""
    trained = two_steps_with_seed(tiny_llama_dir, seed=1)
    model, tokenizer = trained["model"], trained["tokenizer"]
    assert not any(m.training for _, m in model.named_modules())  # steps leave it in eval mode
    sequences = training_sequences(tokenizer, 3)
    prompts = [list(s.tokens[: s.prompt_length]) for s in sequences]
    settings = SamplingSettings(max_new_tokens=8, temperature=0.0, batch_size=3)
    model.train()  # a caller that left the model in train mode
    outputs = []
    for seed in (3, 4):
        mx.random.seed(seed)
        logprobs = response_logprobs(model, sequences, 3, 32)
        completions, _ = generate_completions(model, tokenizer, prompts, settings, seed=seed)
        outputs.append((logprobs, [c.token_ids for c in completions]))
        assert all(m.training for _, m in model.named_modules())  # the caller's mode is back
    (logprobs_a, tokens_a), (logprobs_b, tokens_b) = outputs
    for x, y in zip(logprobs_a, logprobs_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert tokens_a == tokens_b
    mx.random.seed(3)
    with dropout_mode(model, True):  # the same forward with dropout on does depend on the seed
        dropped = response_logprobs_in_train_mode(model, sequences)
    assert any(np.abs(x - y).max() > 1e-4 for x, y in zip(dropped, logprobs_a, strict=True))


def response_logprobs_in_train_mode(model, sequences):
    batch = collate(sequences, len(sequences), 32)
    logits = model(batch.inputs)
    picked = mx.take_along_axis(logits, batch.positions[..., None], axis=1)
    values = np.array(token_logprobs(picked, batch.targets))
    return [values[i, : s.response_length] for i, s in enumerate(sequences)]


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


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_response_logprobs_in_lanes_are_each_sequences_own(tiny_llama_dir, lanes):
    """Split over CPU streams, each batch's rows still get their own sequence's log-probs (as a
    forward of that sequence alone gives them), in the caller's order, whatever the lanes."""
    model, tokenizer = adapted_model(tiny_llama_dir)
    sequences = training_sequences(tokenizer, 7)
    sequences = [sequences[i] for i in (3, 0, 6, 1, 5, 2, 4)]  # not in length order
    assert len({len(s.tokens) for s in sequences}) > 2
    values = response_logprobs(model, sequences, 4, 32, lanes=lanes)
    model.eval()
    for sequence, got in zip(sequences, values, strict=True):
        (alone,) = response_logprobs_in_train_mode(model, [sequence])
        assert got.shape == (sequence.response_length,)
        np.testing.assert_allclose(got, alone, atol=2e-5, rtol=0)


def test_lane_shares_deal_rows_in_turn():
    from rasft_mlx.generation.lanes import lane_shares

    assert lane_shares([7, 3, 9, 1, 4], 2) == [[7, 9, 4], [3, 1]]
    assert lane_shares([7, 3], 3) == [[7], [3]]
    assert lane_shares([5, 6, 8], 1) == [[5, 6, 8]]
