"""Bad input and bad numbers: a clear error, nothing half-written, the last good checkpoint kept.

The other cases of the bad-input matrix live beside the code they check: YAML syntax, unknown
keys, wrong types and ranges in test_config.py; missing, empty and malformed data files and rows
without an answer in test_readers.py; rows all too long and a missing model in test_cli.py; GGUF
architecture and quantisation in test_gguf_import.py.
"""

from __future__ import annotations

import errno
import json

import mlx.core as mx
import numpy as np
import pytest
import yaml
from mlx_lm import load
from rich.console import Console
from typer.testing import CliRunner

import rasft_mlx.training.loop as training_loop
from rasft_mlx.cli import app
from rasft_mlx.commands.train import TrainingError, run_training
from rasft_mlx.models.adapters import apply_adapters, save_adapters
from rasft_mlx.recipe.config import LoraConfig, load_recipe
from rasft_mlx.training.checkpoint import TEMP_PREFIX, list_checkpoints, load_latest
from rasft_mlx.training.run_data import load_run_data

QUIET = Console(quiet=True)
runner = CliRunner()


def recipe_path(tmp_path, model_dir, **training):
    data = {
        "rollout": {"k": 1, "max_new_tokens": 2},
        "model": {"path": str(model_dir)},
        "data": {"synthetic": {"n_train": 16, "n_test": 2, "min_level": 0, "max_level": 1}},
        "lora": {"rank": 4},
        "training": {
            "epochs": 2,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "warmup_steps": 0,
            "eval_every_epoch": False,
            **{"mode": "sft", **training},
        },
        "eval": {"max_new_tokens": 4},
        "output": {"save_every": 2},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_output_dir_not_writable(tiny_llama_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recipe = recipe_path(tmp_path, tiny_llama_dir)
    result = runner.invoke(app, ["train", str(recipe), "--out", str(blocker / "run")])
    assert result.exit_code == 2
    assert "cannot write to" in result.output and "a-file" in result.output
    assert blocker.read_text() == "not a folder"


def test_disk_full_during_a_checkpoint_write(tiny_llama_dir, tmp_path, monkeypatch):
    recipe = load_recipe(recipe_path(tmp_path, tiny_llama_dir))
    run_dir = tmp_path / "run"
    real_save = mx.save_safetensors
    writes = []

    def save_until_full(path, arrays, *args, **kwargs):
        if "optimizer" in str(path):
            writes.append(path)
            if len(writes) == 3:  # after step 0 and step 2, the one at step 4 runs out of space
                real_save(path, {k: v for k, v in list(arrays.items())[:1]})
                raise OSError(errno.ENOSPC, "No space left on device", path)
        real_save(path, arrays, *args, **kwargs)

    monkeypatch.setattr(mx, "save_safetensors", save_until_full)
    with pytest.raises(TrainingError) as caught:
        run_training(recipe, run_dir, QUIET)
    message = str(caught.value)
    assert "No space left on device" in message and "step-000004" in message
    assert "last good checkpoint is" in message and "step-000002" in message
    root = run_dir / "checkpoints"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000002", "step-000000"]
    assert not list(root.glob(f"{TEMP_PREFIX}*"))  # nothing half-written left behind
    assert (root / "latest").read_text().strip() == "step-000002"
    monkeypatch.undo()
    result = run_training(recipe, run_dir, QUIET, resume=True)  # space again: it goes on
    assert result.steps == 8


def test_adapter_that_does_not_fit_the_model(tiny_llama_dir, tmp_path):
    model, _ = load(str(tiny_llama_dir))
    apply_adapters(model, LoraConfig(rank=8))
    adapter_dir = tmp_path / "adapter"
    save_adapters(model, LoraConfig(rank=8), str(tiny_llama_dir), adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["lora_parameters"]["rank"] = 4  # the weights are rank 8
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    args = ["eval", "--model", str(tiny_llama_dir), "--adapter", str(adapter_dir)]
    result = runner.invoke(app, [*args, "--data", "synthetic", "--limit", "1"])
    assert result.exit_code == 2
    assert "does not fit this model" in result.output and "lora_a" in result.output


def test_checkpoint_that_does_not_fit_the_model_on_resume(tiny_llama_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_training(load_recipe(recipe_path(tmp_path, tiny_llama_dir, max_steps=2)), run_dir, QUIET)
    changed = load_recipe(recipe_path(tmp_path, tiny_llama_dir, max_steps=4), ["lora.rank=8"])
    with pytest.raises(TrainingError) as caught:
        run_training(changed, run_dir, QUIET, resume=True, force=True)
    assert "does not fit this model" in str(caught.value) and "lora_a" in str(caught.value)


def poison(monkeypatch, problem_id):
    """Batches holding `problem_id` get NaN sequence weights (rasft mode): NaN loss and grads."""
    real_collate = training_loop.collate

    def collate(sequences, *args):
        batch = real_collate(sequences, *args)
        if problem_id in batch.problem_ids:
            batch.sequence_weights = mx.full(batch.sequence_weights.shape, float("nan"))
        return batch

    monkeypatch.setattr(training_loop, "collate", collate)


def steps_logged(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_non_finite_loss_stops_naming_step_and_problems(tiny_llama_dir, tmp_path, monkeypatch):
    recipe = load_recipe(recipe_path(tmp_path, tiny_llama_dir, mode="rasft"))
    bad = load_run_data(recipe)[0][5].id
    poison(monkeypatch, bad)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError) as caught:
        run_training(recipe, run_dir, QUIET)
    message = str(caught.value)
    step = sum(r["event"] == "step" for r in steps_logged(run_dir)) + 1
    assert f"non-finite loss nan / grad norm nan at step {step}" in message
    assert bad in message and "not applied" in message and "on_nan: skip_batch" in message
    latest, _ = load_latest(run_dir)
    if step > 2:
        assert latest is not None and str(latest.path) in message
        weights = latest.adapter_weights()
        assert all(np.isfinite(np.array(v)).all() for v in weights.values())


def test_skip_batch_drops_the_bad_batch_and_goes_on(tiny_llama_dir, tmp_path, monkeypatch):
    recipe = load_recipe(recipe_path(tmp_path, tiny_llama_dir, mode="rasft", on_nan="skip_batch"))
    bad = load_run_data(recipe)[0][5].id
    poison(monkeypatch, bad)
    run_dir = tmp_path / "run"
    result = run_training(recipe, run_dir, QUIET)
    skipped = [r for r in steps_logged(run_dir) if r["event"] == "skipped_batch"]
    assert len(skipped) == 2 and all(bad in r["problem_ids"] for r in skipped)  # once an epoch
    assert result.steps == 8 - 2
    weights = mx.load(str(run_dir / "adapters" / "adapters.safetensors"))
    assert all(np.isfinite(np.array(v)).all() for v in weights.values())
