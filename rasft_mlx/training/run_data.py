"""A run's data: the train, test and validation problems of a recipe, and the encoded sequences."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rasft_mlx.data.encoding import encode_expert_sequences
from rasft_mlx.data.problem import Problem
from rasft_mlx.data.sources import load_problems, resolve_source
from rasft_mlx.recipe.config import Recipe
from rasft_mlx.recipe.dataset_config import validation_is_test
from rasft_mlx.training.run_directory import TrainingError

HOLD_OUT_STREAM = 0x7A11D  # the hold-out's own random stream, apart from every other use of seed


@dataclass(frozen=True)
class RunSets:
    train: list[Problem]  # without the held-out validation problems
    test: list[Problem]
    validation: list[Problem]  # empty when validation is off


def load_run_sets(recipe: Recipe) -> RunSets:
    """The recipe's problems: train, test, and the validation set (`data.validation`, or
    `data.validation_fraction` of the train problems, held out and not trained on)."""
    data = recipe.data
    reason = validation_is_test(data, resolve_source)  # named benchmarks resolved too
    if reason:
        raise TrainingError(reason)
    synthetic = asdict(data.synthetic)
    common = {"fmt": data.format, "synthetic": synthetic, "grader": data.grader}
    train = load_problems(data.train, limit=data.max_train, split="train", **common)
    test = load_problems(data.test, limit=data.max_test, split="test", **common)
    validation: list[Problem] = []
    if data.validation is not None:
        validation = load_problems(data.validation, split="validation", **common)
    elif data.validation_fraction > 0:
        train, validation = hold_out(train, data.validation_fraction, recipe.training.seed)
    return RunSets(train, test, validation)


def load_run_data(recipe: Recipe) -> tuple[list[Problem], list[Problem]]:
    """The problems trained on (the held-out validation fraction removed) and the test problems."""
    sets = load_run_sets(recipe)
    return sets.train, sets.test


def hold_out(problems: list[Problem], fraction: float, seed: int):
    """(kept, held out): round(fraction * n) problems (at least one) drawn by `seed`, both in
    their data order; the same problems, seed and fraction always hold out the same ones."""
    count = max(1, round(fraction * len(problems)))
    if count >= len(problems):
        raise TrainingError(
            f"data.validation_fraction: holding out {count} of {len(problems)} train problems "
            "leaves none to train on; lower it or use more train problems"
        )
    rng = np.random.default_rng([seed, HOLD_OUT_STREAM])
    chosen = set(rng.choice(len(problems), size=count, replace=False).tolist())
    kept = [p for i, p in enumerate(problems) if i not in chosen]
    return kept, [p for i, p in enumerate(problems) if i in chosen]


def encode_training_data(tokenizer, problems: list[Problem], recipe: Recipe, what="training"):
    """The expert sequences and the encoding report; refuses data where every row is too long."""
    data = recipe.data
    sequences, report = encode_expert_sequences(
        tokenizer, problems, data.system_prompt, data.max_seq_len
    )
    if not sequences:
        raise TrainingError(
            f"data.max_seq_len: all {report.skipped_too_long} {what} rows are longer than "
            f"{data.max_seq_len} tokens"
        )
    return sequences, report
