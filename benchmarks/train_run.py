"""Whole training runs as benchmarks: one recipe, each run in its own process, peak memory and split.

A run's peak memory only means something in a fresh process (MLX's peak counter and the RSS
high-water mark never go down), so `measure_run` starts `python benchmarks/train_run.py RECIPE
RUN_DIR`, which trains with `rasft_mlx.commands.train.run_training` and prints one JSON line: MLX's peak
allocation, the process's peak RSS, the wall-time split from the run's summary.json, and the load
time the trainer's own split leaves out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

BUILTIN_MODEL = "builtin:smollm2-135m"
RESULT_PREFIX = "BENCHMARK-RESULT "


def benchmark_recipe(mode: str, *, quick: bool, model: str | None = None, seed: int = 0) -> dict:
    """The recipe of one benchmark run: the synthetic task, one epoch, eval at its end.

    quick: SmolLM2-135M on the CPU (a couple of minutes per run). Otherwise sized for a GPU or a
    Mac: Qwen2.5-0.5B-Instruct from the Hub unless `model` names another.
    """
    if quick:
        sizes = dict(n_train=24, n_test=16, batch=8, k=2, new_tokens=64, rollout_batch=48)
    else:
        sizes = dict(n_train=256, n_test=128, batch=8, k=4, new_tokens=256, rollout_batch=256)
    return {
        "model": {"path": model or (BUILTIN_MODEL if quick else "Qwen/Qwen2.5-0.5B-Instruct")},
        "data": {
            "train": "synthetic",
            "test": "synthetic",
            "synthetic": {
                "seed": 0,
                "n_train": sizes["n_train"],
                "n_test": sizes["n_test"],
                "min_level": 1,
                "max_level": 2,
            },
            "max_seq_len": 128 + sizes["new_tokens"] * 2,
        },
        "lora": {"rank": 8 if quick else 16, "scale": 2.0},
        "training": {
            "mode": mode,
            "epochs": 1,
            "batch_size": sizes["batch"],
            "learning_rate": 5.0e-4,
            "warmup_steps": 1,
            "seed": seed,
            "dft_factor": False,
            "eval_every_epoch": True,
            "log_every": 1,
        },
        "rollout": {
            "k": sizes["k"],
            "max_new_tokens": sizes["new_tokens"],
            "batch_size": sizes["rollout_batch"],
        },
        "rasft": {"selection": "all"},
        "eval": {"max_new_tokens": sizes["new_tokens"], "batch_size": sizes["n_test"]},
        "output": {"name": f"benchmark-{mode}"},
    }


def measure_run(recipe: dict, run_dir: Path, device: str) -> dict:
    """Train `recipe` in a fresh process in `run_dir`; its peak memory, split and wall time."""
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = run_dir.parent / f"{run_dir.name}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, str(recipe_path), str(run_dir), device],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"benchmark run in {run_dir} failed (exit {done.returncode})")
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result["process_seconds"] = wall
    return result


def _child(recipe_path: str, run_dir: str, device: str) -> None:
    import mlx.core as mx
    from rich.console import Console

    from rasft_mlx.commands.train import run_training
    from rasft_mlx.recipe.config import load_recipe
    from rasft_mlx.runtime.memory import peak_rss_bytes

    mx.set_default_device(mx.cpu if device == "cpu" else mx.gpu)
    started = time.perf_counter()
    run_training(load_recipe(recipe_path), Path(run_dir), Console(quiet=True), force=True)
    seconds = time.perf_counter() - started
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    result = {
        "mlx_peak_bytes": mx.get_peak_memory(),
        "rss_peak_bytes": peak_rss_bytes(),
        "run_seconds": seconds,
        "summary": summary,
    }
    print(RESULT_PREFIX + json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    _child(*sys.argv[1:4])
