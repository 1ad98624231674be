"""Gradient checkpointing per layer: the same loss and gradients as without it, the same
compiled RASFT/SFT step, generation untouched, parameter names unchanged, other models of the
same class untouched."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load
from test_train_step import adapted_model, token_mean_ce_grads, training_sequences

from rasft_mlx.models.checkpointing import checkpoint_layers, is_checkpointed
from rasft_mlx.training.batching import collate
from rasft_mlx.training.losses import LossSettings
from rasft_mlx.training.train_step import CompiledTrainStep


def twin_models(model_dir):
    """Two adapted models with the same weights (LoRA A is drawn before adapted_model seeds)."""
    plain, tokenizer = adapted_model(model_dir)
    twin, _ = adapted_model(model_dir)
    twin.update(plain.parameters())
    return plain, twin, tokenizer


def test_loss_and_gradients_match_and_names_stay(tiny_llama_dir):
    plain, checkpointed, tokenizer = twin_models(tiny_llama_dir)
    names = [name for name, _ in tree_flatten(checkpointed.parameters())]
    assert checkpoint_layers(checkpointed) == len(checkpointed.layers)
    assert is_checkpointed(checkpointed) and not is_checkpointed(plain)
    assert [name for name, _ in tree_flatten(checkpointed.parameters())] == names
    batch = collate(training_sequences(tokenizer, 4), 4, 32)
    loss, grads = token_mean_ce_grads(plain, batch)
    loss_ckpt, grads_ckpt = token_mean_ce_grads(checkpointed, batch)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    flat, flat_ckpt = dict(tree_flatten(grads)), dict(tree_flatten(grads_ckpt))
    assert flat.keys() == flat_ckpt.keys() and flat  # every LoRA matrix gets its gradient
    for name, grad in flat.items():
        np.testing.assert_allclose(np.array(flat_ckpt[name]), np.array(grad), atol=1e-6)
    fresh, _ = load(str(tiny_llama_dir))  # another model of the same class: not checkpointed
    assert not is_checkpointed(fresh)


@pytest.mark.parametrize("mode", ["sft", "rasft"])
def test_the_compiled_step_is_the_same_with_checkpointing(tiny_llama_dir, mode):
    results = []
    models = twin_models(tiny_llama_dir)
    tokenizer = models[2]
    for checkpointing, model in zip((False, True), models[:2], strict=True):
        if checkpointing:
            checkpoint_layers(model)
        sequences = training_sequences(tokenizer, 4)
        if mode == "rasft":  # reference log-probs a little off the policy: the ratio acts
            sequences = [
                replace(s, reference_logprobs=np.full(s.response_length, -1.5)) for s in sequences
            ]
        step = CompiledTrainStep(model, optim.AdamW(learning_rate=1e-2), LossSettings(mode), 1.0)
        outcome = [step([collate(sequences, 4, 32)]) for _ in range(2)]
        results.append((outcome, dict(tree_flatten(model.trainable_parameters()))))
    (plain, plain_params), (ckpt, ckpt_params) = results
    for a, b in zip(plain, ckpt, strict=True):
        assert b.loss == pytest.approx(a.loss, rel=1e-5)
        assert b.grad_norm == pytest.approx(a.grad_norm, rel=1e-5)
    for name, value in plain_params.items():
        np.testing.assert_allclose(np.array(ckpt_params[name]), np.array(value), atol=1e-6)


def test_generation_with_a_cache_is_unchanged(tiny_llama_dir):
    from rasft_mlx.generation.completions import SamplingSettings, generate_completions

    plain, checkpointed, tokenizer = twin_models(tiny_llama_dir)
    checkpoint_layers(checkpointed)
    prompts = [tokenizer.encode("Mia has 3 apples.")] * 2
    settings = SamplingSettings(max_new_tokens=8)
    expected, _ = generate_completions(plain, tokenizer, prompts, settings)
    got, _ = generate_completions(checkpointed, tokenizer, prompts, settings)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    mx.eval(checkpointed.parameters())


def test_a_rasft_run_with_checkpointing_trains_the_same_adapters(tiny_llama_dir, tmp_path):
    """`training.grad_checkpoint: true` end to end (refreshes, the compiled RASFT step, eval):
    the adapters of the run equal those of the same run without it, within float rounding."""
    from rich.console import Console
    from test_distributed import adapters, largest_difference, recipe_file

    from rasft_mlx.commands.train import run_training
    from rasft_mlx.recipe.config import load_recipe

    path = recipe_file(tmp_path, tiny_llama_dir, mode="rasft")
    runs = {}
    for flag in ("false", "true"):
        small = ["data.synthetic.n_train=12", "training.epochs=1", "output.report=false"]
        recipe = load_recipe(path, [f"training.grad_checkpoint={flag}", *small])
        runs[flag] = run_training(recipe, tmp_path / flag, Console(quiet=True))
    assert runs["true"].steps == runs["false"].steps
    assert largest_difference(adapters(tmp_path / "true"), adapters(tmp_path / "false")) < 1e-5
