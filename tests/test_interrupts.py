"""A real `rasft-mlx train` subprocess gets SIGTERM inside a rollout refresh and inside an
evaluation: it stops within seconds each time, and the resumed run ends with the adapter bytes of
an uninterrupted one. Progress lines appear in non-terminal output during both phases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from child_processes import popen
from rich.console import Console
from test_checkpoint import TIMEOUT, adapter_bytes, start

from rasft_mlx.commands.train import run_training
from rasft_mlx.recipe.config import load_recipe

EXIT_WITHIN_SECONDS = 10


def write_recipe(tmp_path: Path, model_dir: Path) -> Path:
    recipe = {
        "model": {"path": str(model_dir)},
        "data": {
            "synthetic": {"n_train": 24, "n_test": 24, "min_level": 0, "max_level": 1},
            "max_seq_len": 256,
        },
        "lora": {"rank": 4, "scale": 2.0},
        "training": {
            "mode": "rasft",
            "epochs": 2,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "warmup_steps": 1,
            "eval_every_epoch": True,
        },
        "rollout": {"k": 4, "max_new_tokens": 96, "temperature": 1.0},
        "rasft": {"selection": "all"},
        "eval": {"max_new_tokens": 96, "before_training": True},
        "output": {"save_every": 1},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def stop_inside(process, label: str) -> tuple[int, str, float]:
    """Read the output until a progress line of `label`, then SIGTERM: (code, output, seconds)."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(label):
            sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            rest, _ = process.communicate(timeout=TIMEOUT)
            return process.returncode, "".join(lines) + rest, time.monotonic() - sent
    process.wait(timeout=TIMEOUT)
    raise AssertionError(f"no {label!r} progress line:\n{''.join(lines)}")


def test_sigterm_inside_refreshes_and_evaluations_then_resume(tiny_llama_dir, tmp_path):
    recipe = write_recipe(tmp_path, tiny_llama_dir)
    reference = tmp_path / "reference"
    run_training(load_recipe(recipe), reference, Console(quiet=True))

    run_dir = tmp_path / "stopped"
    labels = ["eval", "rollouts (refresh 1)", "rollouts (refresh 2)", "eval"]
    env = {"RASFT_MLX_PROGRESS_EVERY": "0"}
    for index, label in enumerate(labels):
        process = start(recipe, run_dir, *(["--resume"] if index else []), env=env)
        code, output, seconds = stop_inside(process, label)
        assert code == 143, output
        assert seconds < EXIT_WITHIN_SECONDS, f"{label}: exited {seconds:.1f} s after SIGTERM"
        assert "stopped during" in output, output  # inside the phase, not after it
        assert "resume with: rasft-mlx train" in output

    process = start(recipe, run_dir, "--resume")
    output, _ = process.communicate(timeout=TIMEOUT * 4)
    assert process.returncode == 0, output
    assert adapter_bytes(run_dir) == adapter_bytes(reference)
    for ledger in ("refresh-001.jsonl", "refresh-002.jsonl"):  # the same rollouts, redone
        redone = (run_dir / "rollouts" / ledger).read_text()
        assert redone == (reference / "rollouts" / ledger).read_text()
    refreshes = (run_dir / "metrics.jsonl").read_text().count('"event": "refresh"')
    assert refreshes == 2  # each refresh logged once: the interrupted ones left no record


def test_resume_with_nothing_to_resume_is_an_error(tiny_llama_dir, tmp_path):
    recipe = write_recipe(tmp_path, tiny_llama_dir)
    process = start(recipe, tmp_path / "never-ran", "--resume")
    output, _ = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 2
    assert "no checkpoint to resume in" in output and "never-ran" in output
    assert not (tmp_path / "never-ran").exists()


def test_a_stop_during_the_final_extra_sets_leaves_no_summary_and_resume_finishes(
    tiny_llama_dir, tmp_path, monkeypatch
):
    import json

    import pytest

    import rasft_mlx.commands.train as train_command
    from rasft_mlx.console.progress import request_stop
    from rasft_mlx.training.stop_signals import TrainingInterrupted

    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(tiny_llama_dir)},
                "data": {"synthetic": {"n_train": 8, "n_test": 4, "n_ood": 4, "max_level": 1}},
                "lora": {"rank": 4},
                "training": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3},
                "eval": {"max_new_tokens": 8, "extra_sets": ["synthetic-ood"]},
            }
        )
    )
    recipe = load_recipe(path)
    quiet = Console(quiet=True)
    whole = tmp_path / "whole"
    run_training(recipe, whole, quiet)

    real = train_command.evaluate_extra_sets

    def stop_then_evaluate(*args, **kwargs):
        request_stop()  # as the first SIGINT does, while the extra sets are evaluated
        return real(*args, **kwargs)

    monkeypatch.setattr(train_command, "evaluate_extra_sets", stop_then_evaluate)
    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted):
        run_training(recipe, stopped, quiet)
    assert not (stopped / "summary.json").exists()  # compare must not take it for finished
    monkeypatch.setattr(train_command, "evaluate_extra_sets", real)
    run_training(recipe, stopped, quiet, resume=True)
    finished = json.loads((stopped / "summary.json").read_text())
    reference = json.loads((whole / "summary.json").read_text())
    assert finished["eval_extra"]["synthetic-ood"]["problems"] == 4
    for key in ("steps", "trained_tokens", "final_loss"):
        assert finished[key] == reference[key]
    assert finished["eval"]["pass_at_1"] == reference["eval"]["pass_at_1"]
    ours = finished["eval_extra"]["synthetic-ood"]["pass_at_1"]
    assert ours == reference["eval_extra"]["synthetic-ood"]["pass_at_1"]


def start_command(*args: str) -> subprocess.Popen:
    """A real `rasft-mlx ...` process with plain progress lines as often as they come."""
    env = {**os.environ, "RASFT_MLX_PROGRESS_EVERY": "0", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "rasft_mlx.cli", *args]
    return popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def signal_at(process, prefix: str, sig: signal.Signals) -> tuple[int, str, float]:
    """Read the output until a line starting with `prefix`, then send `sig`."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(prefix):
            sent = time.monotonic()
            process.send_signal(sig)
            rest, _ = process.communicate(timeout=TIMEOUT)
            return process.returncode, "".join(lines) + rest, time.monotonic() - sent
    process.wait(timeout=TIMEOUT)
    raise AssertionError(f"no {prefix!r} line:\n{''.join(lines)}")


def test_eval_shows_progress_and_sigint_stops_it_with_nothing_half_written(
    tiny_llama_dir, tmp_path
):
    out = tmp_path / "eval"
    process = start_command(
        "eval", "--model", str(tiny_llama_dir), "--data", "synthetic", "--limit", "200",
        "--max-new-tokens", "96", "--batch-size", "4", "--out", str(out),
    )  # fmt: skip
    code, output, seconds = signal_at(process, "eval: ", signal.SIGINT)
    assert code == 130, output
    assert seconds < EXIT_WITHIN_SECONDS, f"exited {seconds:.1f} s after SIGINT"
    assert "interrupted during generation" in output and "Traceback" not in output, output
    assert not (out / "eval.jsonl").exists() and not (out / "eval-summary.json").exists()


def test_plan_sigint_during_the_mechanism_probe_stops_it_cleanly(tiny_llama_dir, tmp_path):
    """`plan --gauges N` rolls out N problems (minutes on a real model): SIGINT inside that
    phase ends it within seconds with the signal's exit code, one line and no traceback."""
    recipe = write_recipe(tmp_path, tiny_llama_dir)
    settings = ["--set", "data.synthetic.n_validation=200", "--set", "rollout.batch_size=4"]
    process = start_command("plan", str(recipe), "--probe-steps", "0", "--gauges", "200", *settings)
    code, output, seconds = signal_at(process, "gauges: rollouts", signal.SIGINT)
    assert code == 130, output
    assert seconds < EXIT_WITHIN_SECONDS, f"exited {seconds:.1f} s after SIGINT"
    assert "interrupted during generation" in output and "Traceback" not in output, output


def test_compare_sigterm_during_the_base_models_evaluation(tiny_llama_dir, tmp_path):
    from test_compare import write_recipe as write_compare_recipe

    recipe = write_compare_recipe(tmp_path / "recipe.yaml", tiny_llama_dir)
    settings = ["--set", "data.synthetic.n_test=200", "--set", "eval.max_new_tokens=96"]
    settings += ["--set", "eval.batch_size=4"]
    out = tmp_path / "compare"
    process = start_command("compare", str(recipe), "--modes", "sft", "--seeds", "1",
                            "--out", str(out), *settings)  # fmt: skip
    code, output, seconds = signal_at(process, "eval: ", signal.SIGTERM)
    assert code == 143, output
    assert seconds < EXIT_WITHIN_SECONDS, f"exited {seconds:.1f} s after SIGTERM"
    assert "interrupted during the base model's evaluation" in output, output
    assert "continue with: rasft-mlx compare" in output and "Traceback" not in output
    assert not (out / "base" / "base.json").exists()


def test_a_signal_outside_any_phase_interrupts_at_once_inside_one_it_asks_to_stop():
    import pytest

    from rasft_mlx.console.progress import PhaseInterrupted, check, phase, stop_requested
    from rasft_mlx.training.stop_signals import interruptible

    quiet = Console(quiet=True)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup, default_int_handler else
    with pytest.raises(KeyboardInterrupt), interruptible(quiet) as signals:
        os.kill(os.getpid(), signal.SIGINT)  # e.g. while a dataset downloads
        time.sleep(5)
    assert signals.exit_code == 130
    with pytest.raises(PhaseInterrupted), interruptible(quiet) as signals:
        with phase("eval", 10):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # the handler runs; nothing is raised inside the chunk
            assert stop_requested()
            check("eval")
    assert signals.exit_code == 143 and not stop_requested()
    assert signal.getsignal(signal.SIGINT) == before
