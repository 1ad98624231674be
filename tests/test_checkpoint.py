"""A real `rasft-mlx train` subprocess killed (SIGKILL, also mid-checkpoint) and resumed each time."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from child_processes import popen
from rich.console import Console

from rasft_mlx.commands.train import run_training
from rasft_mlx.recipe.config import load_recipe
from rasft_mlx.training.checkpoint import SLEEP_ENV, TEMP_PREFIX, load_latest

TIMEOUT = 60


def write_recipe(tmp_path: Path, model_dir: Path) -> Path:
    recipe = {
        "model": {"path": str(model_dir)},
        "data": {
            "synthetic": {"n_train": 32, "n_test": 2, "min_level": 0, "max_level": 1},
            "max_seq_len": 256,
        },
        "lora": {"rank": 4, "scale": 2.0},
        "training": {
            "mode": "sft",
            "epochs": 2,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "warmup_steps": 2,
            "eval_every_epoch": False,
        },
        "eval": {"max_new_tokens": 4},
        "output": {"save_every": 1},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def start(recipe: Path, run_dir: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, SLEEP_ENV: "0.05", "HF_HUB_OFFLINE": "1", **(env or {})}
    if "openblas" not in env.get("LD_PRELOAD", ""):
        env["RASFT_MLX_NO_BLAS"] = "1"  # the same BLAS as the in-process reference run
    command = [sys.executable, "-m", "rasft_mlx.cli", "train", str(recipe), "--out", str(run_dir)]
    return popen(
        [*command, *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=TIMEOUT)
    return process.returncode, output


def wait_for(process: subprocess.Popen, condition) -> bool:
    """Poll until `condition()`; False when the process ended first."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the training subprocess")


def checkpoint_dirs(run_dir: Path, prefix: str) -> list[Path]:
    root = run_dir / "checkpoints"
    return list(root.glob(f"{prefix}*")) if root.is_dir() else []


def adapter_bytes(run_dir: Path) -> bytes:
    return (run_dir / "adapters" / "adapters.safetensors").read_bytes()


def test_sigkill_at_random_points_then_resume_gives_the_same_adapter(tiny_llama_dir, tmp_path):
    recipe = write_recipe(tmp_path, tiny_llama_dir)
    reference = tmp_path / "reference"
    run_training(load_recipe(recipe), reference, Console(quiet=True))  # uninterrupted

    rng = random.Random(1234)
    run_dir = tmp_path / "killed"
    kill_points = ["random", "mid-write", "random", "SIGTERM", "mid-write"]
    tried = []
    for index, point in enumerate(kill_points):
        process = start(recipe, run_dir, *(["--resume"] if index else []))
        before = load_latest(run_dir)[0]
        before_step = before.step if before else 0

        def progressed(before_step=before_step):
            latest = load_latest(run_dir)[0] if checkpoint_dirs(run_dir, "step-") else None
            return latest is not None and latest.step > before_step

        def writing(pid=process.pid):  # this process's temp folder (stale ones have other pids)
            return [p for p in checkpoint_dirs(run_dir, TEMP_PREFIX) if p.name.endswith(f"-{pid}")]

        if point == "mid-write":
            happened = wait_for(process, writing)
        else:
            happened = wait_for(process, progressed)
            if point == "random":
                time.sleep(rng.uniform(0.0, 0.6))
        if not happened:  # the run finished before this kill point: nothing left to interrupt
            break
        if point in ("SIGINT", "SIGTERM"):
            process.send_signal(getattr(signal, point))
            code, output = finish(process)
            assert code == {"SIGINT": 130, "SIGTERM": 143}[point], output
            assert "resume with: rasft-mlx train" in output and "--resume" in output
        else:
            process.kill()
            process.wait(timeout=TIMEOUT)
            mid_write = bool(writing())  # still there after the kill: it died mid-write
            assert process.returncode == -signal.SIGKILL
        latest, skipped = load_latest(run_dir)
        assert latest is not None and not skipped  # the previous checkpoint is always loadable
        if point in ("random", "mid-write"):
            point = "mid-write" if mid_write else "between writes"
        tried.append((point, latest.step))

    code, output = finish(start(recipe, run_dir, "--resume"))
    assert code == 0, output
    print(f"kill points (kind, checkpoint step after the kill): {tried}")
    assert len(tried) >= 4
    assert [step for _, step in tried] == sorted(step for _, step in tried)
    assert any(kind == "mid-write" for kind, _ in tried)
    assert adapter_bytes(run_dir) == adapter_bytes(reference)


def test_keys_added_since_a_run_was_saved_are_no_difference_at_their_defaults():
    from rasft_mlx.training.checkpoint import recipe_differences

    defaults = {"eval": {"drift_problems": 0, "limit": None}, "output": {"report": True}}
    old = {"eval": {"limit": 5}, "output": {}}  # saved before drift_problems and report existed
    same = {"eval": {"drift_problems": 0, "limit": 5}, "output": {"report": True}}
    assert recipe_differences(old, same, defaults=defaults) == []
    changed = {"eval": {"drift_problems": 8, "limit": 5}, "output": {"report": True}}
    assert recipe_differences(old, changed, defaults=defaults) == [
        ("eval.drift_problems", "<unset>", 8)
    ]
    assert recipe_differences(old, same) != []  # without defaults every new key differs
