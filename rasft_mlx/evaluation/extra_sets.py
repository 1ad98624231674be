"""Evaluations beside the per-epoch one: the recipe's extra test sets (`eval.extra_sets`, e.g.
an out-of-distribution set) and the drift from the starting model (`eval.drift_problems`)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.data.problem import Problem
from rasft_mlx.data.sources import SYNTHETIC_SOURCES, load_problems
from rasft_mlx.evaluation.drift import (
    answers_identity,
    load_answers,
    measure_drift,
    reference_answers,
    save_answers,
)
from rasft_mlx.evaluation.evaluate import evaluate_and_write
from rasft_mlx.models.start_adapter import start_identity
from rasft_mlx.recipe.config import Recipe, recipe_to_dict
from rasft_mlx.training.run_directory import MetricsLog

DRIFT_BATCH = 16


def extra_set_name(source: str) -> str:
    return source if source in SYNTHETIC_SOURCES else Path(source).stem


def load_extra_sets(recipe: Recipe) -> list[tuple[str, list[Problem]]]:
    """(name, problems) of every `eval.extra_sets` source, read like data.test."""
    data = recipe.data
    return [
        (
            extra_set_name(source),
            load_problems(
                source,
                fmt=data.format,
                split="test",
                synthetic=asdict(data.synthetic),
                grader=data.grader,
            ),
        )
        for source in recipe.eval.extra_sets
    ]


def evaluate_extra_sets(
    loaded,
    recipe: Recipe,
    sets: list[tuple[str, list[Problem]]],
    run_dir: Path,
    stage: str,
    metrics: MetricsLog,
    timings: Counter,
) -> dict[str, dict]:
    """Evaluate each set as the held-out set is evaluated; write eval-STAGE-NAME files and an
    `eval_extra` metrics record per set; return {name: summary}."""
    summaries = {}
    for name, problems in sets:
        started = time.perf_counter()
        summary = evaluate_and_write(loaded, recipe, problems, run_dir, f"eval-{stage}-{name}")
        metrics.write({"event": "eval_extra", "set": name, "stage": stage, **summary.as_dict()})
        summaries[name] = summary.as_dict()
        timings["eval"] += time.perf_counter() - started
    return summaries


def drift_from_start(
    loaded,
    recipe: Recipe,
    test_problems: list[Problem],
    metrics: MetricsLog,
    timings: Counter,
    answers_file: Path | None = None,
) -> dict | None:
    """Drift on the starting model's greedy answers to the first `eval.drift_problems` test
    problems (answers at eval.max_new_tokens), or None when switched off. `answers_file` keeps
    those answers for the next run with the same model and settings (single process only)."""
    count = recipe.eval.drift_problems
    if not count:
        return None
    started = time.perf_counter()
    problems = test_problems[:count]
    settings = (recipe.data.system_prompt, recipe.eval.max_new_tokens, recipe.eval.batch_size)
    if distributed.distributed():
        answers_file = None
    model = {**recipe_to_dict(recipe)["model"], **start_identity(recipe.model.adapter)}
    identity = answers_identity(model, problems, *settings)
    sequences = load_answers(answers_file, identity) if answers_file is not None else None
    reused = sequences is not None
    if sequences is None:
        sequences = reference_answers(loaded.model, loaded.tokenizer, problems, *settings)
        if answers_file is not None:
            save_answers(answers_file, identity, sequences)
    report = measure_drift(loaded.model, sequences, DRIFT_BATCH)
    metrics.write({"event": "drift", "answers_reused": reused, **report.as_dict()})
    timings["drift"] += time.perf_counter() - started
    return report.as_dict()
