"""The training run: load, adapt, train epoch by epoch on a sequence source, save, evaluate."""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from rich.console import Console

from .batching import collate, plan_batches
from .config import Recipe, save_recipe
from .data import load_problems
from .display import TrainingDisplay
from .encoding import TrainingSequence, encode_expert_sequences
from .evaluate import EvalSummary, evaluate_problems, write_eval_outputs
from .fileio import atomic_write_text
from .losses import LossSettings
from .models import (
    LoadedModel,
    apply_adapters,
    load_model,
    save_adapters,
    total_parameter_count,
    trainable_parameter_count,
)
from .problem import Problem
from .train_step import CompiledTrainStep, build_lr_schedule


class TrainingError(RuntimeError):
    """A run that cannot start or continue, with the reason."""


class SequenceSource(Protocol):
    """Supplies each epoch's training sequences (the RASFT refresh plugs in here)."""

    def epoch_sequences(self, epoch: int) -> list[TrainingSequence]: ...

    def refreshed_sequences(self, step: int, progress: float) -> list[TrainingSequence] | None:
        """New sequences after optimizer step `step`, or None to keep the current queue."""
        ...


@dataclass
class ExpertSource:
    """SFT-family modes: the expert demos, weight 1, every epoch."""

    sequences: list[TrainingSequence]

    def epoch_sequences(self, epoch: int) -> list[TrainingSequence]:
        return self.sequences

    def refreshed_sequences(self, step: int, progress: float) -> list[TrainingSequence] | None:
        return None


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    trained_tokens: int
    final_loss: float
    seconds: float
    eval_summary: EvalSummary | None


def loss_settings(recipe: Recipe) -> LossSettings:
    return LossSettings(
        mode=recipe.training.mode,
        kl_lambda=recipe.training.kl_lambda,
        profit_threshold=recipe.training.profit_threshold,
        dft_factor=recipe.training.dft_factor,
        ratio_min=recipe.rasft.ratio_min,
        ratio_max=recipe.rasft.ratio_max,
    )


def peak_memory_gb() -> float:
    """MLX's peak allocation, or the process's peak RSS where MLX does not track it (CPU)."""
    mlx_peak = mx.get_peak_memory()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    return max(mlx_peak, rss_bytes) / 1e9


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


def steps_per_epoch(sequence_count: int, recipe: Recipe) -> int:
    batches = math.ceil(sequence_count / recipe.training.batch_size)
    return math.ceil(batches / recipe.training.grad_accumulation)


def prepare_run_dir(run_dir: Path, recipe: Recipe) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, run_dir / "recipe.yaml")
    except OSError as error:
        raise TrainingError(f"output.dir: cannot write to {run_dir}: {error}") from error


class MetricsLog:
    """Appends one JSON record per line to metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def planned_steps(first_epoch_sequences: int, recipe: Recipe) -> int:
    """Steps for the LR schedule; RASFT epochs vary in size, so the first epoch is the estimate."""
    planned = steps_per_epoch(first_epoch_sequences, recipe) * recipe.training.epochs
    if recipe.training.max_steps is not None:
        planned = min(planned, recipe.training.max_steps)
    return max(planned, 1)


def step_groups(sequences, training, rng) -> list[list[list[int]]]:
    """Index batches grouped per optimizer step (grad_accumulation micro-batches each)."""
    batches = plan_batches([len(s.tokens) for s in sequences], training.batch_size, rng)
    size = training.grad_accumulation
    return [batches[i : i + size] for i in range(0, len(batches), size)]


def train_epochs(
    loaded: LoadedModel,
    recipe: Recipe,
    source: SequenceSource,
    run_dir: Path,
    console: Console,
    test_problems: list[Problem],
    metrics: MetricsLog,
    timings: Counter,
) -> TrainResult:
    """The loop: batches -> compiled step -> metrics; adapters saved and evaluated per epoch."""
    training = recipe.training
    rng = np.random.default_rng(training.seed)
    sequences = source.epoch_sequences(0)
    planned = planned_steps(len(sequences), recipe)
    max_steps = training.max_steps if training.max_steps is not None else float("inf")
    console.print(
        f"{len(sequences)} training sequences in epoch 1, {len(test_problems)} test problems, "
        f"about {planned} optimizer steps ({training.mode})"
    )
    schedule = build_lr_schedule(training, planned)
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=training.weight_decay)
    step_fn = CompiledTrainStep(loaded.model, optimizer, loss_settings(recipe), training.grad_clip)
    step, trained_tokens, loss = 0, 0, float("nan")
    summary = None
    started = time.perf_counter()
    with TrainingDisplay(console, planned, training.log_every) as display:
        for epoch in range(training.epochs):
            if epoch > 0:
                sequences = source.epoch_sequences(epoch)
            train_started = time.perf_counter()
            groups = step_groups(sequences, training, rng)
            position = 0
            while position < len(groups) and step < max_steps:
                group = groups[position]
                position += 1
                micro = [
                    collate(
                        [sequences[i] for i in idx], training.batch_size, training.bucket_multiple
                    )
                    for idx in group
                ]
                step_started = time.perf_counter()
                learning_rate = float(schedule(step))
                result = step_fn(micro)
                loss, tokens, grad_norm = result.loss, result.tokens, result.grad_norm
                step += 1
                trained_tokens += tokens
                if not math.isfinite(loss) or not math.isfinite(grad_norm):
                    ids = sorted({pid for b in micro for pid in b.problem_ids})
                    raise TrainingError(
                        f"non-finite loss {loss} / grad norm {grad_norm} at step {step}; "
                        f"batch problem ids: {', '.join(ids)}"
                    )
                elapsed = time.perf_counter() - step_started
                input_tokens = sum(b.input_token_count for b in micro)
                total_elapsed = time.perf_counter() - started
                record = {
                    "event": "step",
                    "step": step,
                    "epoch": epoch,
                    "loss": loss,
                    "learning_rate": learning_rate,
                    "grad_norm": grad_norm,
                    "ratio_at_min": result.ratio_at_min / max(result.sequences, 1),
                    "ratio_at_max": result.ratio_at_max / max(result.sequences, 1),
                    "trained_tokens": tokens,
                    "tokens_per_second": input_tokens / elapsed if elapsed > 0 else 0.0,
                    "peak_memory_gb": peak_memory_gb(),
                    "elapsed_seconds": total_elapsed,
                    "eta_seconds": total_elapsed / step * max(planned - step, 0),
                }
                metrics.write(record)
                display.step(step, record)
                if position == len(groups) or step >= max_steps:
                    continue
                refresh_started = time.perf_counter()
                refreshed = source.refreshed_sequences(step, progress=step / planned)
                if refreshed is not None:
                    sequences = refreshed
                    groups = step_groups(sequences, training, rng)[: len(groups) - position]
                    position = 0
                    train_started += time.perf_counter() - refresh_started
            timings["train"] += time.perf_counter() - train_started
            save_adapters(loaded.model, recipe.lora, recipe.model.path, run_dir / "adapters")
            last_epoch = epoch == training.epochs - 1 or step >= max_steps
            if test_problems and (training.eval_every_epoch or last_epoch):
                eval_started = time.perf_counter()
                summary = evaluate_and_record(
                    loaded, recipe, test_problems, run_dir, epoch, metrics
                )
                timings["eval"] += time.perf_counter() - eval_started
                display.message(
                    f"epoch {epoch + 1}: eval pass@1 {summary.pass_at_1:.3f} "
                    f"on {summary.problems} problems"
                )
            if step >= max_steps:
                break
    return TrainResult(run_dir, step, trained_tokens, loss, time.perf_counter() - started, summary)


def evaluate_and_record(
    loaded: LoadedModel,
    recipe: Recipe,
    problems: list[Problem],
    run_dir: Path,
    epoch: int,
    metrics: MetricsLog,
) -> EvalSummary:
    records, summary = evaluate_problems(
        loaded.model,
        loaded.tokenizer,
        problems,
        recipe.eval,
        recipe.data.system_prompt,
        seed=recipe.training.seed,
    )
    write_eval_outputs(records, summary, run_dir, name=f"eval-epoch-{epoch + 1}")
    metrics.write({"event": "eval", "epoch": epoch, **summary.as_dict()})
    return summary


def run_training(recipe: Recipe, run_dir: Path, console: Console | None = None) -> TrainResult:
    """Everything `rasft-mlx train` does, callable from tests."""
    console = console or Console()
    mx.random.seed(recipe.training.seed)
    train_problems, test_problems = load_run_data(recipe)
    prepare_run_dir(run_dir, recipe)
    loaded = load_model(recipe.model)
    apply_adapters(loaded.model, recipe.lora)
    console.print(
        f"model {recipe.model.path}: {total_parameter_count(loaded.model) / 1e6:.1f}M parameters, "
        f"{trainable_parameter_count(loaded.model) / 1e6:.2f}M trainable ({recipe.lora.type})"
    )
    sequences, report = encode_expert_sequences(
        loaded.tokenizer, train_problems, recipe.data.system_prompt, recipe.data.max_seq_len
    )
    if not sequences:
        raise TrainingError(
            f"data.max_seq_len: all {report.skipped_too_long} training rows are longer than "
            f"{recipe.data.max_seq_len} tokens"
        )
    if report.skipped_too_long:
        console.print(
            f"skipped {report.skipped_too_long} rows longer than {recipe.data.max_seq_len} tokens"
        )
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    run_started = time.perf_counter()
    timings: Counter = Counter()
    source: SequenceSource = ExpertSource(sequences)
    if recipe.training.mode == "rasft":
        from .rasft import RasftSource

        source = RasftSource(loaded, recipe, train_problems, sequences, run_dir, console, metrics)
        timings = source.timings
    result = train_epochs(loaded, recipe, source, run_dir, console, test_problems, metrics, timings)
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
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result
