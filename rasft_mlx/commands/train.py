"""The training run: load data and model, adapt, pick the sequence source, run the loop."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from rich.console import Console
from rich.text import Text

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.console.progress import PhaseInterrupted, attached
from rasft_mlx.data.encoding import encode_prompt
from rasft_mlx.evaluation.evaluate import HeldOutEvaluation, ValidationPassAt1
from rasft_mlx.evaluation.extra_sets import (
    drift_from_start,
    evaluate_extra_sets,
    load_extra_sets,
)
from rasft_mlx.models.adapters import (
    apply_adapters,
    total_parameter_count,
    trainable_parameter_count,
)
from rasft_mlx.models.checkpointing import checkpoint_layers
from rasft_mlx.models.loading import load_model
from rasft_mlx.models.numerics import slow_numerics_warning
from rasft_mlx.rasft.gauges import total_rollout_cost
from rasft_mlx.rasft.routing import expected_rollout_problems
from rasft_mlx.recipe.config import ROLLOUT_MODES, Recipe, recipe_to_dict
from rasft_mlx.reporting.run_report import REPORT_FILE, write_report_quietly
from rasft_mlx.reporting.trackers import check_installed, tracking
from rasft_mlx.runtime.fileio import atomic_write_text
from rasft_mlx.runtime.peer_watchdog import start_watchdog
from rasft_mlx.runtime.provenance import software_versions
from rasft_mlx.training.checkpoint import checkpoints_dir
from rasft_mlx.training.loop import TrainingLoop, TrainResult
from rasft_mlx.training.memory_estimate import check_memory, estimate_run_memory
from rasft_mlx.training.run_data import encode_training_data, load_run_sets
from rasft_mlx.training.run_directory import MetricsLog, TrainingError, prepare_run_dir
from rasft_mlx.training.shared_run import rank_run_dir, share_checkpoint
from rasft_mlx.training.step_plan import ExpertSource, SequenceSource
from rasft_mlx.training.stop_signals import StopSignals, TrainingInterrupted
from rasft_mlx.training.validation import Validation, remove_best


def run_training(
    recipe: Recipe,
    run_dir: Path,
    console: Console | None = None,
    *,
    resume: bool | str = False,
    force: bool = False,
    stop_after: int | None = None,
    drift_answers: Path | None = None,
    shared_rollouts: Path | None = None,
) -> TrainResult:
    """Everything `rasft-mlx train` does, callable from tests.

    resume: continue from the run dir's newest loadable checkpoint (refused when the saved recipe
    differs, unless force; an error when there is none; "auto": start fresh then). force: resume despite a changed recipe, or start over in a run dir
    that has checkpoints. stop_after: a test hook that interrupts the run after that step.
    SIGINT/SIGTERM stop at the next step or chunk of a long phase, write a checkpoint and raise
    TrainingInterrupted; long phases report progress on `console`.

    drift_answers: a file that keeps the starting model's answers for the drift measurement
    across runs of the same model and settings (compare passes one per comparison).
    shared_rollouts: a directory where refreshes keep their samples for a later run whose draw has
    the same inputs (`rasft/shared_rollouts.py`; compare passes one per comparison).

    Under `mlx.launch` (several ranks) it is one run: rank 0 alone prints and writes `run_dir`
    and feeds the trackers; a rank that dies ends the others (peer_watchdog.py).
    """
    console = console or Console()
    watchdog = start_watchdog()
    if not distributed.is_main():
        console = Console(quiet=True)
    try:
        with rank_run_dir(run_dir) as own_dir, StopSignals(console) as signals, attached(console):
            result = _run_training(
                recipe,
                own_dir,
                console,
                resume,
                force,
                stop_after,
                signals,
                drift_answers=drift_answers,
                shared_rollouts=shared_rollouts,
            )
    except TrainingInterrupted as stopped:
        if watchdog is not None:  # every rank stopped at the same step
            watchdog.finish()
        if own_dir != run_dir:  # this rank's copy was scratch: name the one rank 0 wrote
            stopped.checkpoint = checkpoints_dir(run_dir) / stopped.checkpoint.name
        raise
    if watchdog is not None:
        watchdog.finish()
    return result


def refuse_if_too_big(recipe: Recipe, loaded, sequences, test_problems) -> None:
    """Stop before the run dir is touched when the memory estimate exceeds the machine's."""
    system = recipe.data.system_prompt
    prompts = [
        encode_prompt(loaded.tokenizer, p.question, system)
        for p in test_problems[: recipe.eval.limit]
    ]
    rollout_problems = 0
    if recipe.training.mode in ROLLOUT_MODES:
        rollout_problems = expected_rollout_problems(len(sequences), recipe.rasft)
    sizing = estimate_run_memory(recipe, loaded, sequences, prompts, rollout_problems)
    problem = check_memory(sizing.memory, sizing.machine_memory)
    if problem is not None:
        raise TrainingError(problem)


@dataclass
class _Run:
    """What a run trains on and writes to, once the data, model and run dir are ready."""

    recipe: Recipe
    run_dir: Path
    console: Console
    loaded: object
    train_problems: list
    test_problems: list
    extra_sets: list
    sequences: list
    encoding: object
    metrics: MetricsLog
    checkpoint: object
    drift_answers: Path | None = None
    validation_problems: list = ()
    shared_rollouts: Path | None = None


def _run_training(
    recipe,
    run_dir,
    console,
    resume,
    force,
    stop_after,
    signals,
    drift_answers: Path | None = None,
    shared_rollouts: Path | None = None,
) -> TrainResult:
    check_installed(recipe.output.report_to)  # before the model loads
    mx.random.seed(recipe.training.seed)
    sets = load_run_sets(recipe)
    train_problems, test_problems = sets.train, sets.test
    extra_sets = load_extra_sets(recipe)
    loaded = load_model(recipe.model)
    apply_adapters(loaded.model, recipe.lora)
    if recipe.training.grad_checkpoint:
        checkpoint_layers(loaded.model)
    console.print(
        f"model {recipe.model.path}: {total_parameter_count(loaded.model) / 1e6:.1f}M parameters, "
        f"{trainable_parameter_count(loaded.model) / 1e6:.2f}M trainable ({recipe.lora.type})"
    )
    slow = slow_numerics_warning(loaded.model)
    if slow:
        console.print(Text.assemble(("warning: ", "bold yellow"), slow), soft_wrap=True)
    sequences, encoding = encode_training_data(loaded.tokenizer, train_problems, recipe)
    if encoding.skipped_too_long:
        console.print(
            f"skipped {encoding.skipped_too_long} rows longer than {recipe.data.max_seq_len} tokens"
        )
    if not (resume or force):
        refuse_if_too_big(recipe, loaded, sequences, test_problems)
    checkpoint = None
    if distributed.is_main():
        checkpoint = prepare_run_dir(run_dir, recipe, console, resume=resume, force=force)
    checkpoint = share_checkpoint(checkpoint, run_dir)
    if distributed.distributed():
        console.print(f"one run over {distributed.world_size()} processes (rank 0 writes)")
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    metrics.truncate(checkpoint.state["metrics_bytes"] if checkpoint is not None else None)
    metrics.write(
        {"event": "process", "resumed": checkpoint is not None, "software": software_versions()}
    )
    run = _Run(
        recipe=recipe,
        run_dir=run_dir,
        console=console,
        loaded=loaded,
        train_problems=train_problems,
        test_problems=test_problems,
        extra_sets=extra_sets,
        sequences=sequences,
        encoding=encoding,
        metrics=metrics,
        checkpoint=checkpoint,
        drift_answers=drift_answers,
        validation_problems=sets.validation,
        shared_rollouts=shared_rollouts,
    )
    trackers = recipe.output.report_to if distributed.is_main() else ()
    with tracking(metrics, trackers, run_dir, recipe_to_dict(recipe)):
        result = _train(run, stop_after, signals)
    if recipe.output.report and distributed.is_main() and write_report_quietly(run_dir, console):
        console.print(f"report: {run_dir / REPORT_FILE}")
    return result


def _train(run: _Run, stop_after, signals) -> TrainResult:
    """The loop, the final extra evaluations and drift, then summary.json."""
    recipe, run_dir, console, loaded, metrics = (
        run.recipe,
        run.run_dir,
        run.console,
        run.loaded,
        run.metrics,
    )
    run_started = time.perf_counter()
    timings: Counter = Counter()
    source: SequenceSource = ExpertSource(run.sequences)
    if recipe.training.mode in ROLLOUT_MODES:
        from rasft_mlx.rasft.refresh import RasftSource

        source = RasftSource(
            loaded,
            recipe,
            run.train_problems,
            run.sequences,
            run_dir,
            console,
            metrics,
            shared_rollouts=run.shared_rollouts,
        )
        timings = source.timings
    writes_report = recipe.output.report and distributed.is_main()
    on_epoch_end = (lambda: write_report_quietly(run_dir, console)) if writes_report else None
    validation = _validation(run)
    loop = TrainingLoop(
        loaded,
        recipe,
        source,
        run_dir,
        console,
        HeldOutEvaluation(loaded, recipe, run.test_problems, run_dir, metrics),
        metrics,
        timings,
        stop_after,
        on_epoch_end=on_epoch_end,
        validation=validation,
    )
    if run.checkpoint is not None:
        loop.restore(run.checkpoint)
    else:
        remove_best(run_dir)
        loop.start_fresh()
        if recipe.eval.before_training and run.extra_sets:
            evaluate_extra_sets(loaded, recipe, run.extra_sets, run_dir, "start", metrics, timings)
    result = loop.run(signals)
    extra = {"eval_extra_before_training": _started_extra(run)}
    try:
        if run.extra_sets:
            extra["eval_extra"] = evaluate_extra_sets(
                loaded, recipe, run.extra_sets, run_dir, "final", metrics, timings
            )
        extra["drift"] = drift_from_start(
            loaded, recipe, run.test_problems, metrics, timings, run.drift_answers
        )
    except PhaseInterrupted as stopped:
        # No summary.json: a run without its extra sets must not pass for a finished one (compare
        # would take it); the last checkpoint is the finished training, so --resume redoes them.
        console.print(f"stopped during {stopped}: --resume redoes the final evaluations")
        raise signals.interruption(result.steps, loop.last_checkpoint) from None
    total_seconds = time.perf_counter() - run_started
    timings["other"] = max(total_seconds - sum(timings.values()), 0.0)
    summary = {
        "mode": recipe.training.mode,
        "steps": result.steps,
        "trained_tokens": result.trained_tokens,
        "final_loss": result.final_loss,
        "train_seconds": round(result.seconds, 2),
        "total_seconds": round(total_seconds, 2),
        "skipped_too_long": run.encoding.skipped_too_long,
        "start_adapter": _start_adapter_record(loaded),
        "software": software_versions(),
        "eval": result.eval_summary.as_dict() if result.eval_summary else None,
        "wall_time_split_seconds": {k: round(v, 2) for k, v in timings.items()},
        "rollout_cost": total_rollout_cost(_refresh_costs(run_dir / "metrics.jsonl")),
        **{key: value for key, value in extra.items() if value},
    }
    if validation is not None:
        summary["validation"] = validation.last
        if validation.best() is not None:
            summary["best"] = validation.best()
    before = run_dir / "eval-epoch-0-summary.json"
    if before.is_file():
        summary["eval_before_training"] = json.loads(before.read_text())
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


def _refresh_costs(metrics_path: Path) -> list[dict]:
    if not metrics_path.is_file():
        return []
    records = (json.loads(line) for line in metrics_path.read_text().splitlines() if line)
    return [r["cost"] for r in records if r.get("event") == "refresh" and r.get("cost")]


def _validation(run: _Run) -> Validation | None:
    """eval.val_every's validation: the validation demos encoded, the pass@1 hook when asked."""
    recipe = run.recipe
    if not recipe.eval.val_every:
        return None
    tokenizer, problems = run.loaded.tokenizer, list(run.validation_problems)
    sequences, encoding = encode_training_data(tokenizer, problems, recipe, what="validation")
    skipped = f", {encoding.skipped_too_long} too long skipped" * bool(encoding.skipped_too_long)
    run.console.print(
        f"validation every {recipe.eval.val_every} steps: {len(sequences)} problems{skipped}"
    )
    pass_at_1 = None
    if recipe.eval.val_pass_at_1_problems:
        pass_at_1 = ValidationPassAt1(run.loaded, recipe, problems)
    return Validation(run.loaded, recipe, sequences, run.run_dir, run.metrics, pass_at_1)


def _start_adapter_record(loaded) -> dict | None:
    start = loaded.start_adapter
    if start is None:
        return None
    return {"path": str(start.directory), "sha256": start.digest, "rank": start.rank}


def _started_extra(run: _Run) -> dict:
    """The extra sets' evaluations of the starting model (files of this or an earlier session)."""
    found = {}
    for name, _ in run.extra_sets:
        path = run.run_dir / f"eval-start-{name}-summary.json"
        if path.is_file():
            found[name] = json.loads(path.read_text())
    return found


__all__ = [
    "ExpertSource",
    "SequenceSource",
    "TrainResult",
    "TrainingError",
    "TrainingInterrupted",
    "run_training",
]
