"""Checkpoints and exact resume: an interrupted-and-resumed run ends with the same adapter bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from rasft_mlx.cli import app
from rasft_mlx.commands.train import TrainingError, TrainingInterrupted, run_training
from rasft_mlx.recipe.config import load_recipe
from rasft_mlx.runtime.provenance import software_versions
from rasft_mlx.training.checkpoint import list_checkpoints, read_checkpoint

QUIET = Console(quiet=True)


def recipe_dict(model_dir, mode="sft", **training) -> dict:
    rasft = mode == "rasft"
    return {
        "model": {"path": str(model_dir)},
        "data": {
            "synthetic": {
                "n_train": 16 if rasft else 24,
                "n_test": 2,
                "min_level": 0,
                "max_level": 1,
            },
            "max_seq_len": 256,
        },
        "lora": {"rank": 4, "scale": 2.0},
        "training": {
            "mode": mode,
            "epochs": 2,
            "batch_size": 8 if rasft else 4,
            "grad_accumulation": 1 if rasft else 2,
            "learning_rate": 1e-3,
            "warmup_steps": 1,
            "eval_every_epoch": False,
            **training,
        },
        "rollout": {"k": 2, "max_new_tokens": 6, "temperature": 1.0},
        "rasft": {"selection": "nll_band", "refresh_every_steps": 1, "selection_fraction": 0.5},
        "eval": {"max_new_tokens": 4},
        "output": {"save_every": 2},
    }


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def adapter_bytes(run_dir) -> bytes:
    return (run_dir / "adapters" / "adapters.safetensors").read_bytes()


def metric_records(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_lines(run_dir) -> list[int]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r["event"] == "step"]


@pytest.mark.parametrize(
    ("mode", "stops", "lora"),
    # sft: 3 steps/epoch, mid-epoch and end-of-epoch; adapter dropout draws from MLX's random
    # state, so resuming must restore it for the bytes to match. lora.type full: the weights
    # themselves resume, and the reference (sft_kl's KL in the step, rasft's cached log-probs,
    # computed again after a resume) is the starting weights of the fresh load
    [
        ("sft", [2, 3, 5], {"dropout": 0.0}),
        ("sft", [2, 4], {"dropout": 0.3}),
        ("rasft", [1, 2], {"dropout": 0.3}),
        ("sft_kl", [2, 3, 5], {"type": "full", "train_embeddings": False}),
        ("rasft", [1, 2], {"type": "full"}),
    ],
)
def test_interrupted_and_resumed_run_gives_the_same_adapter_bytes(
    tiny_llama_dir, tmp_path, mode, stops, lora
):
    data = recipe_dict(tiny_llama_dir, mode)
    data["lora"].update(lora)
    recipe = load_recipe(write(tmp_path / "recipe.yaml", data))
    straight = run_training(recipe, tmp_path / "straight", QUIET)

    run_dir = tmp_path / "resumed"
    for index, stop in enumerate(stops):
        with pytest.raises(TrainingInterrupted) as caught:
            run_training(recipe, run_dir, QUIET, resume=index > 0, stop_after=stop)
        assert caught.value.step == stop
        assert read_checkpoint(caught.value.checkpoint).step == stop
    resumed = run_training(recipe, run_dir, QUIET, resume=True)

    assert resumed.steps == straight.steps
    assert adapter_bytes(run_dir) == adapter_bytes(tmp_path / "straight")
    assert step_lines(run_dir) == step_lines(tmp_path / "straight")  # no duplicated records
    assert len(list_checkpoints(run_dir)) == 2  # keep_checkpoints
    processes = [r for r in metric_records(run_dir) if r["event"] == "process"]
    assert [p["resumed"] for p in processes] == [False] + [True] * len(stops)
    software = json.loads((run_dir / "summary.json").read_text())["software"]
    assert software == processes[-1]["software"] == software_versions()
    if mode == "rasft":
        refreshes = [
            json.loads(x)["refresh"]
            for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"refresh"' in x
        ]
        assert refreshes == sorted(set(refreshes))  # each refresh logged once


def test_resume_refuses_a_changed_recipe_unless_forced(tiny_llama_dir, tmp_path):
    data = recipe_dict(tiny_llama_dir, max_steps=2)
    recipe = load_recipe(write(tmp_path / "recipe.yaml", data))
    run_dir = tmp_path / "run"
    run_training(recipe, run_dir, QUIET)
    changed = dict(data, training={**data["training"], "learning_rate": 2e-3, "max_steps": 3})
    new = load_recipe(write(tmp_path / "changed.yaml", changed))
    with pytest.raises(TrainingError) as caught:
        run_training(new, run_dir, QUIET, resume=True)
    message = str(caught.value)
    assert "training.learning_rate: 0.001 -> 0.002" in message
    assert "training.max_steps: 2 -> 3" in message and "--force" in message
    result = run_training(new, run_dir, QUIET, resume=True, force=True)
    assert result.steps == 3
    assert step_lines(run_dir) == [1, 2, 3]


def test_fresh_train_into_a_run_with_checkpoints_is_refused(tiny_llama_dir, tmp_path):
    recipe_path = write(tmp_path / "recipe.yaml", recipe_dict(tiny_llama_dir, max_steps=1))
    run_dir = tmp_path / "run"
    runner = CliRunner()
    args = ["train", str(recipe_path), "--out", str(run_dir)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--resume" in result.output
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0 and "already finished" in result.output
    result = runner.invoke(app, ["train", str(run_dir)])  # a run dir resumes with its recipe
    assert result.exit_code == 0 and "already finished" in result.output
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    assert step_lines(run_dir) == [1]


def test_resume_skips_a_damaged_checkpoint(tiny_llama_dir, tmp_path):
    recipe = load_recipe(write(tmp_path / "recipe.yaml", recipe_dict(tiny_llama_dir)))
    straight = run_training(recipe, tmp_path / "straight", QUIET)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        run_training(recipe, run_dir, QUIET, stop_after=3)
    newest = list_checkpoints(run_dir)[0]
    assert newest.name == "step-000003"
    (newest / "optimizer.safetensors").write_bytes(b"truncated")
    result = run_training(recipe, run_dir, QUIET, resume=True)  # falls back to step 2
    assert result.steps == straight.steps
    assert adapter_bytes(run_dir) == adapter_bytes(tmp_path / "straight")


def test_software_versions_name_this_checkout_and_the_installed_mlx():
    import subprocess

    import mlx.core as mx

    versions = software_versions()
    assert versions["mlx"] == mx.__version__ and versions["mlx_lm"]
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True)
        assert versions["git_commit"] == head.stdout.decode().strip()
        assert isinstance(versions["git_dirty"], bool)
    else:
        assert versions["git_commit"] is None
