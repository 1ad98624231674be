"""`model.adapter`: a run that starts from a trained LoRA. The start is fused into the base (the
reference is the starting policy), and the run's adapters hold start + new as one mlx-lm LoRA."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
import yaml
from mlx.utils import tree_flatten
from mlx_lm import load
from rich.console import Console

from rasft_mlx.commands.train import run_training
from rasft_mlx.evaluation.evaluate import evaluate_problems
from rasft_mlx.export.formats import export_run
from rasft_mlx.models.adapters import (
    apply_adapters,
    load_adapters_into,
    reference_policy,
    save_adapters,
)
from rasft_mlx.models.errors import ModelError
from rasft_mlx.models.loading import load_model
from rasft_mlx.models.start_adapter import read_start_adapter
from rasft_mlx.recipe.config import LoraConfig, ModelConfig, RecipeError, load_recipe
from rasft_mlx.training.run_data import load_run_data

QUIET = Console(quiet=True)
TOKENS = mx.array([[1, 5, 9, 23, 42, 77, 100, 150, 200, 250, 31, 64]])


def logits(model) -> np.ndarray:
    return np.array(model(TOKENS).astype(mx.float32))


def randomize_adapters(model, seed: int) -> None:
    """Give every LoRA factor random values (lora_b starts at zero, which would hide errors)."""
    rng = np.random.default_rng(seed)
    new = [
        (k, mx.array(rng.normal(0, 0.05, v.shape).astype(np.float32)))
        for k, v in tree_flatten(model.trainable_parameters())
    ]
    model.load_weights(new, strict=False)


def make_adapter(model_dir, out_dir, seed, **lora) -> None:
    loaded = load_model(ModelConfig(path=str(model_dir)))
    config = LoraConfig(**lora)
    apply_adapters(loaded.model, config)
    randomize_adapters(loaded.model, seed)
    save_adapters(loaded.model, config, str(model_dir), out_dir)


def test_the_start_is_fused_and_the_saved_adapter_is_start_plus_new(tiny_llama_dir, tmp_path):
    # start: rank 4 on every linear of the last layer; new: rank 2, q/v only, on both layers
    make_adapter(tiny_llama_dir, tmp_path / "start", 1, rank=4, scale=2.0, num_layers=1)
    base_with_start, _ = load(str(tiny_llama_dir), adapter_path=str(tmp_path / "start"))
    expected_start = logits(base_with_start)

    loaded = load_model(ModelConfig(path=str(tiny_llama_dir), adapter=str(tmp_path / "start")))
    np.testing.assert_allclose(logits(loaded.model), expected_start, atol=1e-4)
    new = LoraConfig(rank=2, scale=3.0, keys=("self_attn.q_proj", "self_attn.v_proj"))
    apply_adapters(loaded.model, new)
    randomize_adapters(loaded.model, 2)
    policy = logits(loaded.model)
    assert np.abs(policy - expected_start).max() > 1e-2  # the new adapter does something
    with reference_policy(loaded.model):  # the reference: the starting policy
        np.testing.assert_allclose(logits(loaded.model), expected_start, atol=1e-4)

    save_adapters(
        loaded.model, new, str(tiny_llama_dir), tmp_path / "combined", start=loaded.start_adapter
    )
    config = json.loads((tmp_path / "combined" / "adapter_config.json").read_text())
    assert config["lora_parameters"]["rank"] == 6 and config["num_layers"] == 2
    assert "keys" not in config["lora_parameters"]  # the start adapted every linear
    assert config["start_adapter"]["sha256"] == loaded.start_adapter.digest
    bare_with_combined, _ = load(str(tiny_llama_dir), adapter_path=str(tmp_path / "combined"))
    np.testing.assert_allclose(logits(bare_with_combined), policy, atol=1e-4)


def test_bad_start_adapters_are_named(tiny_llama_dir, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        read_start_adapter(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="holds no adapter_config.json"):
        read_start_adapter(tmp_path / "empty")
    make_adapter(tiny_llama_dir, tmp_path / "dora", 1, type="dora", rank=2)
    with pytest.raises(ModelError, match="'dora' adapter"):
        read_start_adapter(tmp_path / "dora")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump({"model": {"path": "m", "adapter": "a"}, "lora": {"type": "dora"}})
    )
    with pytest.raises(RecipeError, match="'lora.type' must be lora"):
        load_recipe(recipe)


def stage_recipe(model_dir, tmp_path, name, **extra) -> dict:
    return {
        "model": {"path": str(model_dir), **extra.pop("model", {})},
        "data": {
            "synthetic": {"n_train": 16, "n_test": 4, "min_level": 0, "max_level": 1},
            "max_seq_len": 256,
        },
        "lora": {"rank": 4, "scale": 2.0},
        "training": {
            "mode": "sft",
            "epochs": 1,
            "batch_size": 8,
            "learning_rate": 2e-2,
            "warmup_steps": 0,
            **extra.pop("training", {}),
        },
        "rollout": {"k": 2, "max_new_tokens": 6, "temperature": 1.0},
        "eval": {"max_new_tokens": 6, "before_training": True},
        "output": {"name": name, "report": False},
        **extra,
    }


def load_yaml_recipe(tmp_path, data, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path)


def test_a_staged_run_starts_from_the_adapter_and_exports_the_whole_policy(
    tiny_llama_dir, tmp_path
):
    stage0 = run_training(
        load_yaml_recipe(tmp_path, stage_recipe(tiny_llama_dir, tmp_path, "s0"), "s0"),
        tmp_path / "s0",
        QUIET,
    )
    data = stage_recipe(
        tiny_llama_dir,
        tmp_path,
        "s1",
        model={"adapter": str(stage0.run_dir)},
        training={"mode": "rasft", "learning_rate": 1e-2},
    )
    data["rasft"] = {"selection": "all", "refresh_every_steps": 0}
    stage1 = run_training(load_yaml_recipe(tmp_path, data, "s1"), tmp_path / "s1", QUIET)

    recipe1 = load_yaml_recipe(tmp_path, data, "s1-check")
    _, test_problems = load_run_data(recipe1)

    def completions_of(adapter_dir) -> list[str]:
        loaded = load_model(ModelConfig(path=str(tiny_llama_dir)))
        load_adapters_into(loaded.model, adapter_dir)
        records, _ = evaluate_problems(
            loaded.model, loaded.tokenizer, test_problems, recipe1.eval, recipe1.data.system_prompt
        )
        return [r.completion for r in records]

    def run_completions(name: str) -> list[str]:
        lines = (tmp_path / "s1" / name).read_text().splitlines()
        return [json.loads(x)["completion"] for x in lines]

    # The starting policy's evaluation is stage 0's adapter, scored on the same problems.
    # (a run dir stands for its adapters/, as `rasft-mlx eval --adapter RUN_DIR` takes it)
    assert run_completions("eval-epoch-0.jsonl") == completions_of(tmp_path / "s0")

    # Step 1 of stage 1: policy = start, so the inverse ratio is 1 on every sequence (no bound hit).
    steps = [json.loads(x) for x in (tmp_path / "s1" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in steps if r["event"] == "step")
    assert first["ratio_at_min"] == 0 and first["ratio_at_max"] == 0

    # The run's adapters (and the mlx export) are the whole policy on the bare base.
    export_run(stage1.run_dir, "mlx", tmp_path / "export")
    exported = tmp_path / "export"
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["lora_parameters"]["rank"] == 8
    assert run_completions("eval-epoch-1.jsonl") == completions_of(exported)


def test_resume_refuses_a_start_adapter_that_changed(tiny_llama_dir, tmp_path):
    from rasft_mlx.commands.train import TrainingError, TrainingInterrupted

    make_adapter(tiny_llama_dir, tmp_path / "start", 1, rank=2, num_layers=1)
    data = stage_recipe(tiny_llama_dir, tmp_path, "s1", model={"adapter": str(tmp_path / "start")})
    data["output"]["save_every"] = 1
    recipe = load_yaml_recipe(tmp_path, data, "s1")
    with pytest.raises(TrainingInterrupted):
        run_training(recipe, tmp_path / "run", QUIET, stop_after=1)
    make_adapter(tiny_llama_dir, tmp_path / "start", 2, rank=2, num_layers=1)  # retrained
    with pytest.raises(
        TrainingError, match="model.adapter: checkpoint .* resume from the same start"
    ):
        run_training(recipe, tmp_path / "run", QUIET, resume=True)
