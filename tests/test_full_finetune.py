"""`lora.type: full` (models/full_finetune.py): what trains, and the reference is the start."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load

from rasft_mlx.data.encoding import encode_expert_sequences
from rasft_mlx.data.synthetic import generate_problems
from rasft_mlx.evaluation.drift import measure_drift
from rasft_mlx.models.adapters import (
    adapter_config_dict,
    adapter_modules,
    apply_adapters,
    reference_policy,
)
from rasft_mlx.models.errors import ModelError
from rasft_mlx.models.full_finetune import vocabulary_modules
from rasft_mlx.rasft.reference import response_logprobs, with_reference_logprobs
from rasft_mlx.recipe.config import DEFAULT_SYSTEM_PROMPT, LoraConfig
from rasft_mlx.training.batching import collate
from rasft_mlx.training.losses import LossSettings
from rasft_mlx.training.train_step import CompiledTrainStep

TOKENS = mx.array([[5, 17, 42, 9, 33, 2, 71, 8]])
EMBEDDING = "model.embed_tokens.weight"


def full_model(model_dir, **lora):
    model, tokenizer = load(str(model_dir))
    apply_adapters(model, LoraConfig(type="full", **lora))
    return model, tokenizer


def params(model, trainable=False) -> dict[str, np.ndarray]:
    tree = model.trainable_parameters() if trainable else model.parameters()
    return {k: np.array(v) for k, v in tree_flatten(tree)}


def sequences_of(tokenizer, count=4):
    problems = generate_problems(count, seed=3, min_level=1, max_level=3)
    sequences, _ = encode_expert_sequences(tokenizer, problems, DEFAULT_SYSTEM_PROMPT, 512)
    return sequences


def train(model, tokenizer, steps, mode="sft", learning_rate=1e-2):
    batch = collate(sequences_of(tokenizer), 4, 32)
    step = CompiledTrainStep(
        model, optim.AdamW(learning_rate=learning_rate), LossSettings(mode), 1.0
    )
    return [step([batch]).loss for _ in range(steps)]


@pytest.mark.parametrize(
    ("lora", "trained_layers", "embeddings"),
    [({}, {0, 1}, True), ({"num_layers": 1, "train_embeddings": False}, {1}, False)],
)
def test_the_chosen_weights_train(tiny_llama_dir, lora, trained_layers, embeddings):
    model, _ = full_model(tiny_llama_dir, **lora)
    names = set(params(model, trainable=True))
    every = set(params(model))
    layer_of = {n: int(n.split(".")[2]) for n in every if n.startswith("model.layers.")}
    assert {n for n in every if layer_of.get(n) in trained_layers} <= names
    assert not {n for n in names if n in layer_of and layer_of[n] not in trained_layers}
    assert "model.norm.weight" in names
    assert (EMBEDDING in names) == embeddings
    assert not adapter_modules(model)  # no LoRA layer anywhere
    config = adapter_config_dict(model, LoraConfig(type="full", **lora), "base")
    assert config["fine_tune_type"] == "full" and "lora_parameters" not in config


def test_an_untied_output_head_counts_as_embeddings(tmp_path):
    from tiny_models import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path, tie_word_embeddings=False)
    model, _ = full_model(model_dir, train_embeddings=False)
    assert {n for n, _ in vocabulary_modules(model)} == {"model.embed_tokens", "lm_head"}
    names = set(params(model, trainable=True))
    assert "lm_head.weight" not in names and EMBEDDING not in names
    assert "model.norm.weight" in names


def test_a_quantized_model_is_refused(tiny_llama_dir):
    model, _ = load(str(tiny_llama_dir))
    nn.quantize(model, group_size=32, bits=8)
    with pytest.raises(ModelError, match="model.dequantize: always"):
        apply_adapters(model, LoraConfig(type="full"))


def test_training_changes_every_trained_weight_and_no_frozen_one(tiny_llama_dir):
    model, tokenizer = full_model(tiny_llama_dir, num_layers=1, train_embeddings=False)
    before = params(model)
    trained = set(params(model, trainable=True))
    losses = train(model, tokenizer, 6)
    after = params(model)
    assert losses[-1] < 0.8 * losses[0], losses
    for name, value in before.items():
        if name in trained:
            assert np.abs(after[name] - value).max() > 1e-4, f"{name} did not train"
        else:
            assert after[name].tobytes() == value.tobytes(), f"frozen {name} changed"
    assert EMBEDDING not in trained


def test_the_reference_is_the_start_and_matches_the_lora_reference(tiny_llama_dir):
    """policy == reference before training (bit for bit); after training the reference is still
    the starting weights: the same numbers as a fresh load and as the LoRA path's adapters-off
    forward; the live weights come back after each reference block, compiled or not."""
    base, _ = load(str(tiny_llama_dir))
    base_logits = np.array(base(TOKENS))
    model, tokenizer = full_model(tiny_llama_dir)
    with reference_policy(model):
        np.testing.assert_array_equal(np.array(model(TOKENS)), base_logits)
    train(model, tokenizer, 2)
    live = np.array(model(TOKENS))
    assert np.abs(live - base_logits).max() > 1e-2
    with reference_policy(model):
        reference = np.array(model(TOKENS))
    np.testing.assert_array_equal(reference, base_logits)
    np.testing.assert_array_equal(np.array(model(TOKENS)), live)

    lora, _ = load(str(tiny_llama_dir))
    apply_adapters(lora, LoraConfig(rank=4))
    for _, module in adapter_modules(lora):
        module.lora_b = mx.ones(module.lora_b.shape) * 0.05
    with reference_policy(lora):
        np.testing.assert_array_equal(np.array(lora(TOKENS)), reference)

    @mx.compile
    def both(x):
        policy = model(x)
        with reference_policy(model):
            start = model(x)
        return policy, start

    compiled_policy, compiled_reference = both(TOKENS)
    np.testing.assert_allclose(np.array(compiled_policy), live, atol=1e-5)
    np.testing.assert_allclose(np.array(compiled_reference), base_logits, atol=1e-5)
    np.testing.assert_array_equal(np.array(model(TOKENS)), live)


def test_rasft_ratio_is_one_at_the_start_and_the_reference_log_probs_stay(tiny_llama_dir):
    model, tokenizer = full_model(tiny_llama_dir)
    sequences = sequences_of(tokenizer)

    def ratios(model):
        policy = response_logprobs(model, sequences, 4, 32)
        filled = with_reference_logprobs(model, sequences, 4, 32)
        reference = [s.reference_logprobs for s in filled]
        return reference, [
            float(np.exp(r.mean() - p.mean())) for r, p in zip(reference, policy, strict=True)
        ]

    start_reference, start_ratios = ratios(model)
    assert start_ratios == [1.0] * len(sequences)
    # a RASFT step with the cached reference log-probs trains
    batch = collate(with_reference_logprobs(model, sequences, 4, 32), 4, 32)
    step = CompiledTrainStep(model, optim.AdamW(learning_rate=1e-2), LossSettings("rasft"), 1.0)
    for _ in range(3):
        step([batch])
    reference, trained_ratios = ratios(model)
    assert min(abs(r - 1.0) for r in trained_ratios) > 1e-3, trained_ratios
    fresh, _ = load(str(tiny_llama_dir))
    for now, first, again in zip(
        reference, start_reference, response_logprobs(fresh, sequences, 4, 32), strict=True
    ):
        np.testing.assert_array_equal(now, first)
        np.testing.assert_array_equal(now, again)


def test_sft_kl_measures_the_distance_to_the_start(tiny_llama_dir):
    """SFT+KL's reference forward inside the compiled step, first thing on a fresh model (the
    starting copy is not the live arrays, which the step takes as inputs): zero KL at the start
    (its loss equals SFT's), a positive KL once the weights moved."""

    def losses(model, tokenizer):
        batch = collate(sequences_of(tokenizer), 4, 32)
        values = []
        for mode in ("sft_kl", "sft"):
            step = CompiledTrainStep(model, optim.AdamW(learning_rate=0.0), LossSettings(mode), 0.0)
            values.append(step([batch]).loss)
        return values[::-1]

    model, tokenizer = full_model(tiny_llama_dir)
    sft, sft_kl = losses(model, tokenizer)
    assert sft_kl == pytest.approx(sft, abs=1e-6)
    train(model, tokenizer, 3)
    sft, sft_kl = losses(model, tokenizer)
    assert sft_kl > sft + 1e-4


def test_drift_is_zero_at_the_start_and_grows_with_training(tiny_llama_dir):
    model, tokenizer = full_model(tiny_llama_dir)
    sequences = sequences_of(tokenizer)
    assert measure_drift(model, sequences, 4).kl_ref_policy == pytest.approx(0.0, abs=1e-7)
    train(model, tokenizer, 3)
    assert measure_drift(model, sequences, 4).kl_ref_policy > 1e-4


def test_sft_kl_with_gradient_checkpointing_is_the_same_step(tiny_llama_dir):
    """The starting weights swapped in inside checkpointed layers of the compiled step."""
    from rasft_mlx.models.checkpointing import checkpoint_layers

    results = []
    for checkpointing in (False, True):
        model, tokenizer = full_model(tiny_llama_dir)
        if checkpointing:
            checkpoint_layers(model)
        losses = train(model, tokenizer, 3, mode="sft_kl")
        results.append((losses, params(model, trainable=True)))
    (losses, weights), (losses_ckpt, weights_ckpt) = results
    assert losses_ckpt == pytest.approx(losses, rel=1e-5)
    for name, value in weights.items():
        np.testing.assert_allclose(weights_ckpt[name], value, atol=1e-5)
