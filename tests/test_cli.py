"""`rasft-mlx train` and `rasft-mlx eval` end to end on a tiny model, plus their error paths."""

from __future__ import annotations

import json

import mlx.core as mx
import yaml
from mlx_lm import load
from typer.testing import CliRunner

from rasft_mlx.cli import app

runner = CliRunner()


def write_recipe(path, model_dir, mode="sft", **training):
    recipe = {
        "model": {"path": str(model_dir)},
        "data": {
            "train": "synthetic",
            "test": "synthetic",
            "synthetic": {"n_train": 32, "n_test": 8, "min_level": 0, "max_level": 1},
            "max_seq_len": 256,
        },
        "lora": {"rank": 4, "scale": 2.0},
        "training": {"mode": mode, "batch_size": 8, "learning_rate": 1e-3, **training},
        "eval": {"max_new_tokens": 16},
        "output": {"dir": str(path.parent / "runs" / "{name}"), "name": "cli-test"},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_train_then_eval_end_to_end(tiny_llama_dir, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_llama_dir, warmup_steps=1)
    overrides = ["--set", "training.epochs=2", "--set", "eval.before_training=true"]
    result = runner.invoke(app, ["train", str(recipe), *overrides])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "cli-test"
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["training"]["epochs"] == 2  # the override is in the saved recipe
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["event"] == "step"] == list(range(1, 9))
    first_step = next(r for r in steps if r["event"] == "step")
    assert {"loss", "learning_rate", "tokens_per_second", "peak_memory_gb"} <= set(first_step)
    assert (run_dir / "eval-epoch-2.jsonl").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["eval"]["problems"] == 8
    assert (run_dir / "eval-epoch-0.jsonl").is_file()  # the starting model, before training
    assert summary["eval_before_training"]["problems"] == 8
    assert [r["epoch"] for r in steps if r["event"] == "eval"] == [-1, 0, 1]

    model, _ = load(str(tiny_llama_dir), adapter_path=str(run_dir / "adapters"))
    assert mx.isfinite(model(mx.array([[1, 2, 3]]))).all().item()

    out = tmp_path / "eval-out"
    args = ["eval", "--model", str(tiny_llama_dir), "--adapter", str(run_dir / "adapters")]
    args += ["--data", "synthetic", "--limit", "4", "--samples", "2", "--max-new-tokens", "8"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "pass@1" in result.output and "avg@2" in result.output
    records = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert len(records) == 4 + 4 * 2
    assert {"prompt", "completion", "extracted", "gold", "correct"} <= set(records[0])
    eval_summary = json.loads((out / "eval-summary.json").read_text())
    assert eval_summary["problems"] == 4 and eval_summary["samples"] == 2


def test_train_reports_recipe_errors_cleanly(tiny_llama_dir, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_llama_dir)
    result = runner.invoke(app, ["train", str(recipe), "--set", "training.lerning_rate=1"])
    assert result.exit_code == 2
    assert "did you mean 'training.learning_rate'" in result.output


def test_train_rejects_missing_model_and_data(tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tmp_path / "no-such-model")
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 2
    assert "no-such-model" in result.output and "does not exist" in result.output
    missing = tmp_path / "missing.jsonl"
    result = runner.invoke(app, ["train", str(recipe), "--set", f"data.train={missing}"])
    assert result.exit_code == 2 and "missing.jsonl" in result.output


def test_train_rejects_rows_all_longer_than_max_seq_len(tiny_llama_dir, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_llama_dir)
    result = runner.invoke(app, ["train", str(recipe), "--set", "data.max_seq_len=16"])
    assert result.exit_code == 2
    assert "longer than 16 tokens" in result.output


def test_help_texts():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "train" in result.output and "eval" in result.output
    for command in ("train", "eval"):
        assert runner.invoke(app, [command, "--help"]).exit_code == 0
