"""`rasft_mlx.experiments.plan`: counts, tokens, rollout volume, the memory estimate against a probe, the check."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from tiny_models import make_tiny_model_dir

from rasft_mlx.data.encoding import encode_expert_sequences
from rasft_mlx.experiments.plan import (
    authors_hard_pool_demos,
    build_plan,
    check_memory,
    refresh_problems,
)
from rasft_mlx.experiments.plan_report import format_bytes, plan_rows, render_plan
from rasft_mlx.models.adapters import (
    apply_adapters,
    total_parameter_count,
    trainable_parameter_count,
)
from rasft_mlx.models.loading import load_model
from rasft_mlx.rasft.routing import expected_rollout_problems
from rasft_mlx.recipe.config import RasftConfig, load_recipe, recipe_from_dict
from rasft_mlx.training import memory_estimate
from rasft_mlx.training.batching import padded_length
from rasft_mlx.training.run_data import load_run_data


def make_recipe(model_dir, mode="sft", rasft=None, lora=None, **training):
    return recipe_from_dict(
        {
            "model": {"path": str(model_dir)},
            "data": {
                "synthetic": {"n_train": 32, "n_test": 8, "min_level": 0, "max_level": 1},
                "max_seq_len": 256,
            },
            "lora": lora or {"rank": 4},
            "training": {"mode": mode, "batch_size": 8, **training},
            "rollout": {"k": 3, "max_new_tokens": 40},
            "rasft": rasft or {},
            "eval": {"max_new_tokens": 16},
        }
    )


@pytest.fixture(scope="module")
def loaded(tiny_llama_dir):
    loaded = load_model(make_recipe(tiny_llama_dir).model)
    apply_adapters(loaded.model, make_recipe(tiny_llama_dir).lora)
    return loaded


@pytest.fixture(scope="module")
def mid_model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mid-llama")
    return make_tiny_model_dir(out, hidden_size=256, num_hidden_layers=4, intermediate_size=512)


def test_counts_and_tokens_match_the_model_and_the_encoded_data(tiny_llama_dir, loaded):
    recipe = make_recipe(tiny_llama_dir, epochs=2)
    plan = build_plan(recipe)  # loads its own model
    assert plan.total_parameters == total_parameter_count(loaded.model)
    assert plan.trainable_parameters == trainable_parameter_count(loaded.model) > 0
    weights = sum(v.nbytes for _, v in tree_flatten(loaded.model.parameters()))
    assert plan.weight_bytes == weights
    train, _ = load_run_data(recipe)
    sequences, _ = encode_expert_sequences(
        loaded.tokenizer, train, recipe.data.system_prompt, recipe.data.max_seq_len
    )
    assert plan.sequences_per_epoch == len(sequences) == 32
    assert plan.tokens_per_epoch == sum(len(s.tokens) for s in sequences)
    assert plan.response_tokens_per_epoch == sum(s.response_length for s in sequences)
    assert plan.steps_per_epoch == 4 and plan.planned_steps == 8 == plan.max_planned_steps
    assert plan.refreshes == 0 and plan.rollout_tokens_per_refresh == 0
    assert plan.eval_tokens == 8 * 16 * 2  # greedy eval after each of the 2 epochs
    longest = max(len(s.tokens) for s in sequences)
    assert plan.largest_bucket == padded_length(longest, 32)
    labels = [label for label, _ in plan_rows(plan)]
    assert "peak memory (estimate)" in labels and "wall time (estimate)" not in labels
    assert render_plan(plan).row_count == len(labels)


def test_rollout_tokens_per_refresh(tiny_llama_dir, loaded):
    every = build_plan(make_recipe(tiny_llama_dir, "rasft"), loaded=loaded)
    assert every.rollout_problems_per_refresh == 32
    assert every.rollout_tokens_per_refresh == 32 * 3 * 40
    assert every.refreshes == 1
    # every rollout correct: 32 demos + 96 rollouts per epoch -> 16 steps
    assert every.max_planned_steps == 16 > every.planned_steps == 4
    fraction = {"selection": "fraction", "selection_fraction": 0.3}
    some = build_plan(make_recipe(tiny_llama_dir, "rasft", fraction), loaded=loaded)
    assert some.rollout_tokens_per_refresh == round(0.3 * 32) * 3 * 40
    # rollouts (prompt + 40 new tokens) may be longer than any demo
    assert some.largest_bucket >= every.largest_bucket >= 64
    recipe = make_recipe(tiny_llama_dir, "rasft")
    budget = replace(recipe, rollout=replace(recipe.rollout, max_new_tokens_per_demo_token=1.0))
    sequences, _ = encode_expert_sequences(
        loaded.tokenizer, load_run_data(recipe)[0], recipe.data.system_prompt, 256
    )
    limits = [min(40, max(16, s.response_length)) for s in sequences]  # F 1: the demo's length
    assert len(set(limits)) > 1  # the budget differs per demo here
    sized = build_plan(budget, loaded=loaded).rollout_tokens_per_refresh
    assert sized == 32 * 3 * -(-sum(limits) // len(limits)) < every.rollout_tokens_per_refresh


def test_the_authors_plan_counts_the_hard_pools_second_pass(tiny_llama_dir, loaded):
    """One pass over the demos, then the hard pool (NLL between the window's top 0.45 and the
    0.90 ceiling) trained again when nothing waits: 32 demos + round(0.45 x 32) = 14 again."""
    recipe = replace(make_recipe(tiny_llama_dir, "rasft"), protocol="authors")
    recipe = replace(
        recipe,
        rasft=replace(
            recipe.rasft, schedule="authors", selection="nll_band", refresh_every_steps=32
        ),
    )
    assert authors_hard_pool_demos(32, recipe) == 14
    plan = build_plan(recipe, loaded=loaded)
    assert plan.hard_pool_demos == 14
    assert plan.planned_steps == 6  # ceil(46 / 8), not one pass's 4
    assert plan.max_planned_steps == 7  # + 3 rolled-out problems x K 3
    assert plan.refresh_steps == (3,)  # the first queue (32 - 8 mid) runs dry after 3 steps
    steps = dict(plan_rows(plan))["optimizer steps"]
    assert "6 planned (the hard pool's 14 demos trained again included)" in steps
    staged = load_recipe("recipes/staged-authors.yaml")  # its header: about 29-35 steps
    assert authors_hard_pool_demos(160, staged) == 72
    assert build_plan(make_recipe(tiny_llama_dir, "rasft"), loaded=loaded).hard_pool_demos == 0


def test_selection_estimates_and_refresh_count(tiny_llama_dir):
    band = RasftConfig(selection="nll_band")  # 0.35 x 0.25 mid window + 0.03 x (0.90 - 0.45)
    assert expected_rollout_problems(1000, band) == round((0.35 * 0.25 + 0.03 * 0.45) * 1000)
    assert expected_rollout_problems(10, RasftConfig(selection="fraction")) == round(3.5)
    recipe = make_recipe(tiny_llama_dir, "rasft", {"refresh_every_steps": 2}, epochs=2)
    # each epoch + after steps 2 and 6 (not 4, 8: epoch ends)
    assert refresh_problems(4, recipe, 32, 32) == [32, 32, 32, 32]
    capped = replace(recipe, training=replace(recipe.training, max_steps=5))
    # epoch 2 starts at step 4: one step of 8 sequences left, so 8 of the 32 problems (of which
    # the selected 30 %: 3, rounded up)
    assert refresh_problems(4, capped, 32, 32) == [32, 32, 8]
    assert refresh_problems(4, capped, 32, 10) == [10, 10, 3]
    untrimmed = replace(capped, rasft=replace(capped.rasft, trim_capped_refresh=False))
    assert refresh_problems(4, untrimmed, 32, 32) == [32, 32, 32]
    warm = replace(recipe, rasft=replace(recipe.rasft, warmup_epochs=1))
    assert refresh_problems(4, warm, 32, 32) == [32, 32]  # epoch 2's start, after step 6


def test_the_plan_counts_the_rollouts_of_a_refresh_the_step_cap_trims(tiny_llama_dir, loaded):
    """32 demos at batch 8, 2 epochs capped at 5 steps: epoch 2's refresh has room for one step
    (8 problems of 32), and the plan's rollout volume and time count 32 + 8 problems."""
    capped = make_recipe(tiny_llama_dir, "rasft", epochs=2, max_steps=5)
    plan = build_plan(capped, loaded=loaded)
    assert (plan.refreshes, plan.rollout_problems, plan.rollout_problems_per_refresh) == (2, 40, 32)
    assert plan.rollout_tokens == 40 * 3 * 40
    assert "40 problems rolled out in all, not 64" in dict(plan_rows(plan))["refreshes"]
    full = replace(capped, rasft=replace(capped.rasft, trim_capped_refresh=False))
    plan = build_plan(full, loaded=loaded)
    assert (plan.rollout_problems, plan.rollout_tokens) == (64, 64 * 3 * 40)
    assert dict(plan_rows(plan))["refreshes"] == "2"


def test_memory_estimate_grows_with_batch_and_length(tiny_llama_dir, loaded):
    small = build_plan(make_recipe(tiny_llama_dir, batch_size=4), loaded=loaded).memory
    large = build_plan(make_recipe(tiny_llama_dir, batch_size=8), loaded=loaded).memory
    longer_recipe = make_recipe(tiny_llama_dir, batch_size=8, bucket_multiple=256)
    longer = build_plan(longer_recipe, loaded=loaded)
    assert longer.largest_bucket == 256
    assert small.activations < large.activations < longer.memory.activations
    assert small.logits < large.logits < longer.memory.logits
    assert small.peak < large.peak < longer.memory.peak
    assert small.weights == large.weights > 0


@pytest.mark.parametrize("train_embeddings", [True, False])
def test_full_fine_tuning_counts_the_weights_adamw_and_the_reference_copy(
    tiny_llama_dir, train_embeddings
):
    recipe = make_recipe(
        tiny_llama_dir, lora={"type": "full", "train_embeddings": train_embeddings}
    )
    plan = build_plan(recipe)
    memory, lora_memory = plan.memory, build_plan(make_recipe(tiny_llama_dir)).memory
    loaded = load_model(recipe.model)
    embedding = loaded.model.model.embed_tokens.weight.nbytes
    trained = plan.weight_bytes - (0 if train_embeddings else embedding)
    assert plan.trainable_parameters * 4 == trained  # float32
    assert memory.weights == plan.weight_bytes - trained  # frozen: nothing, or the embeddings
    assert memory.trainable_state == 3 * trained  # the weights and two AdamW moments
    assert memory.update_temporaries == 5 * trained  # gradients, clipped, new weights and moments
    assert memory.reference_weights == trained  # the frozen starting copy
    assert memory.resident == plan.weight_bytes + 3 * trained
    assert lora_memory.reference_weights == 0 and lora_memory.weights > memory.weights
    row = dict(plan_rows(plan))["  training step"]
    assert f"reference copy {format_bytes(trained)}" in row


def test_check_memory_names_the_estimate_and_force(tiny_llama_dir, loaded, monkeypatch):
    plan = build_plan(make_recipe(tiny_llama_dir), loaded=loaded)
    assert plan.machine_memory > plan.memory.peak
    assert check_memory(plan) is None
    monkeypatch.setattr(memory_estimate, "machine_memory_bytes", lambda: 1_000_000)
    tiny = build_plan(make_recipe(tiny_llama_dir), loaded=loaded)
    message = check_memory(tiny)
    assert tiny.machine_memory == 1_000_000
    assert "--force" in message and "1.00 MB" in message
    assert format_bytes(tiny.memory.peak) in message


def test_probe_matches_the_estimate_and_leaves_the_model_unchanged(mid_model_dir):
    recipe = make_recipe(mid_model_dir, "rasft", learning_rate=1e-2)
    loaded = load_model(recipe.model)
    apply_adapters(loaded.model, recipe.lora)
    before = dict(tree_flatten(loaded.model.trainable_parameters()))
    plan = build_plan(recipe, loaded=loaded, probe_steps=3)
    after = dict(tree_flatten(loaded.model.trainable_parameters()))
    assert all(mx.array_equal(before[k], after[k]).item() for k in before)
    probe = plan.probe
    assert probe.steps == 3 and probe.seconds_per_step > 0 and probe.first_step_seconds > 0
    assert probe.generation_tokens_per_second > 0
    assert probe.wall_seconds >= probe.train_seconds > 0 and probe.rollout_seconds > 0
    # the probe's first step runs the longest demo's bucket; the estimate's bucket is the
    # longest possible rollout, so compare at the measured step's length
    demo_bucket = build_plan(make_recipe(mid_model_dir), loaded=loaded).memory
    ratio = demo_bucket.training / probe.measured_training_peak
    assert 1 / 3 < ratio < 3, ratio
    generation_ratio = plan.memory.generation / probe.measured_generation_peak
    assert 1 / 3 < generation_ratio < 3, generation_ratio
    assert probe.rss_peak > 0
    assert "wall time (estimate)" in [label for label, _ in plan_rows(plan)]


def test_full_fine_tuning_probe_matches_the_estimate(tmp_path):
    """On a model whose weights outweigh its activations, the measured peak of real full
    fine-tuning steps (AdamW state and the starting copy held) is within a factor of the
    estimate, and the probe puts the trained weights back."""
    wide = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4)
    model_dir = make_tiny_model_dir(tmp_path, num_attention_heads=8, **wide)
    recipe = make_recipe(model_dir, lora={"type": "full"}, learning_rate=1e-3, batch_size=1)
    loaded = load_model(recipe.model)
    apply_adapters(loaded.model, recipe.lora)
    before = dict(tree_flatten(loaded.model.trainable_parameters()))
    plan = build_plan(recipe, loaded=loaded, probe_steps=2)
    after = dict(tree_flatten(loaded.model.trainable_parameters()))
    assert all(mx.array_equal(before[k], after[k]).item() for k in before)
    memory, measured = plan.memory, plan.probe.measured_training_peak
    assert memory.reference_weights == plan.weight_bytes > memory.activations
    assert measured > 8 * plan.weight_bytes  # the step's copies of the weights, the start's too
    assert 1 / 1.25 < memory.training / measured < 1.25, memory.training / measured
    message = memory_estimate.check_memory(memory, 1_000_000)
    assert "largest part: trained weights" in message and "lora.type lora" in message


def test_train_refuses_a_run_bigger_than_the_machine_unless_forced(
    tiny_llama_dir, tmp_path, monkeypatch
):
    from rich.console import Console

    from rasft_mlx.commands.train import TrainingError, run_training

    monkeypatch.setattr(memory_estimate, "machine_memory_bytes", lambda: 1_000_000)
    recipe = recipe_from_dict(
        {
            "model": {"path": str(tiny_llama_dir)},
            "data": {"synthetic": {"n_train": 8, "n_test": 2, "min_level": 0, "max_level": 0}},
            "lora": {"rank": 4},
            "training": {"mode": "sft", "batch_size": 4, "max_steps": 1},
            "eval": {"max_new_tokens": 4},
        }
    )
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError, match="--force"):
        run_training(recipe, run_dir, Console(quiet=True))
    assert not run_dir.exists()  # refused before anything was written
    result = run_training(recipe, run_dir, Console(quiet=True), force=True)
    assert result.steps == 1


def test_plan_command_prints_the_plan(tiny_llama_dir, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from rasft_mlx.cli import app

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(tiny_llama_dir)},
                "data": {"synthetic": {"n_train": 8, "n_test": 2, "min_level": 0, "max_level": 0}},
                "lora": {"rank": 4},
                "training": {"mode": "sft", "batch_size": 4},
                "eval": {"max_new_tokens": 4},
            }
        )
    )
    result = CliRunner().invoke(app, ["plan", str(recipe), "--probe-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "memory" in result.output.lower() and "tokens" in result.output.lower()


def test_auto_decode_batch_is_sized_from_memory(tiny_llama_dir, loaded, monkeypatch):
    recipe = make_recipe(tiny_llama_dir, "rasft")
    assert recipe.rollout.batch_size == 0 and recipe.eval.batch_size == 0  # the defaults: auto
    roomy = build_plan(recipe, loaded=loaded)
    assert roomy.rollout_rows == 32 * 3 and roomy.eval_rows == 8  # everything fits at once
    fixed = build_plan(
        replace(recipe, rollout=replace(recipe.rollout, batch_size=5)), loaded=loaded
    )
    assert fixed.rollout_rows == 5
    weights = roomy.weight_bytes
    monkeypatch.setattr(memory_estimate, "machine_memory_bytes", lambda: weights + 10_000_000)
    tight = build_plan(recipe, loaded=loaded)
    assert 1 <= tight.rollout_rows < 96
    assert ("decode batch", f"eval 8, rollouts {tight.rollout_rows} sequences together") in [
        row for row in plan_rows(tight)
    ]
