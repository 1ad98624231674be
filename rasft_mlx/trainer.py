"""The training run: load data and model, adapt, pick the sequence source, run the loop."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx
from rich.console import Console

from .config import Recipe
from .data import load_problems
from .encoding import encode_expert_sequences
from .fileio import atomic_write_text
from .models import (
    apply_adapters,
    load_model,
    total_parameter_count,
    trainable_parameter_count,
)
from .problem import Problem
from .run_directory import MetricsLog, TrainingError, prepare_run_dir
from .step_plan import ExpertSource, SequenceSource
from .stop_signals import StopSignals, TrainingInterrupted
from .training_loop import TrainingLoop, TrainResult


def load_run_data(recipe: Recipe) -> tuple[list[Problem], list[Problem]]:
    data = recipe.data
    synthetic = asdict(data.synthetic)
    train = load_problems(
        data.train, fmt=data.format, limit=data.max_train, split="train", synthetic=synthetic
    )
    test = load_problems(
        data.test, fmt=data.format, limit=data.max_test, split="test", synthetic=synthetic
    )
    return train, test


def encode_training_data(tokenizer, problems: list[Problem], recipe: Recipe):
    """The expert sequences and the encoding report; refuses data where every row is too long."""
    data = recipe.data
    sequences, report = encode_expert_sequences(
        tokenizer, problems, data.system_prompt, data.max_seq_len
    )
    if not sequences:
        raise TrainingError(
            f"data.max_seq_len: all {report.skipped_too_long} training rows are longer than "
            f"{data.max_seq_len} tokens"
        )
    return sequences, report


def run_training(
    recipe: Recipe,
    run_dir: Path,
    console: Console | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Everything `rasft-mlx train` does, callable from tests.

    resume: continue from the run dir's newest loadable checkpoint (refused when the saved recipe
    differs, unless force). force: resume despite a changed recipe, or start over in a run dir
    that has checkpoints. stop_after: a test hook that interrupts the run after that step.
    SIGINT/SIGTERM finish the current step, write a checkpoint and raise TrainingInterrupted.
    """
    console = console or Console()
    with StopSignals(console) as signals:
        return _run_training(recipe, run_dir, console, resume, force, stop_after, signals)


def refuse_if_too_big(recipe: Recipe, loaded) -> None:
    """Stop before the run dir is touched when the memory estimate exceeds the machine's."""
    from .plan import build_plan, check_memory

    problem = check_memory(build_plan(recipe, loaded=loaded))
    if problem is not None:
        raise TrainingError(problem)


def _run_training(recipe, run_dir, console, resume, force, stop_after, signals) -> TrainResult:
    mx.random.seed(recipe.training.seed)
    train_problems, test_problems = load_run_data(recipe)
    loaded = load_model(recipe.model)
    apply_adapters(loaded.model, recipe.lora)
    console.print(
        f"model {recipe.model.path}: {total_parameter_count(loaded.model) / 1e6:.1f}M parameters, "
        f"{trainable_parameter_count(loaded.model) / 1e6:.2f}M trainable ({recipe.lora.type})"
    )
    sequences, report = encode_training_data(loaded.tokenizer, train_problems, recipe)
    if report.skipped_too_long:
        console.print(
            f"skipped {report.skipped_too_long} rows longer than {recipe.data.max_seq_len} tokens"
        )
    if not (resume or force):
        refuse_if_too_big(recipe, loaded)
    checkpoint = prepare_run_dir(run_dir, recipe, console, resume=resume, force=force)
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    metrics.truncate(checkpoint.state["metrics_bytes"] if checkpoint is not None else None)
    run_started = time.perf_counter()
    timings: Counter = Counter()
    source: SequenceSource = ExpertSource(sequences)
    if recipe.training.mode == "rasft":
        from .rasft import RasftSource

        source = RasftSource(loaded, recipe, train_problems, sequences, run_dir, console, metrics)
        timings = source.timings
    loop = TrainingLoop(
        loaded, recipe, source, run_dir, console, test_problems, metrics, timings, stop_after
    )
    if checkpoint is not None:
        loop.restore(checkpoint)
    else:
        loop.start_fresh()
    result = loop.run(signals)
    total_seconds = time.perf_counter() - run_started
    timings["other"] = max(total_seconds - sum(timings.values()), 0.0)
    summary = {
        "mode": recipe.training.mode,
        "steps": result.steps,
        "trained_tokens": result.trained_tokens,
        "final_loss": result.final_loss,
        "train_seconds": round(result.seconds, 2),
        "total_seconds": round(total_seconds, 2),
        "skipped_too_long": report.skipped_too_long,
        "eval": result.eval_summary.as_dict() if result.eval_summary else None,
        "wall_time_split_seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    before = run_dir / "eval-epoch-0-summary.json"
    if before.is_file():
        summary["eval_before_training"] = json.loads(before.read_text())
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


__all__ = [
    "ExpertSource",
    "SequenceSource",
    "TrainResult",
    "TrainingError",
    "TrainingInterrupted",
    "load_run_data",
    "run_training",
]
