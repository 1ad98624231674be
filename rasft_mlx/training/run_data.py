"""A run's data: the train and test problems of a recipe, and the encoded expert sequences."""

from __future__ import annotations

from dataclasses import asdict

from rasft_mlx.data.encoding import encode_expert_sequences
from rasft_mlx.data.problem import Problem
from rasft_mlx.data.sources import load_problems
from rasft_mlx.recipe.config import Recipe
from rasft_mlx.training.run_directory import TrainingError


def load_run_data(recipe: Recipe) -> tuple[list[Problem], list[Problem]]:
    data = recipe.data
    synthetic = asdict(data.synthetic)
    common = {"fmt": data.format, "synthetic": synthetic, "grader": data.grader}
    train = load_problems(data.train, limit=data.max_train, split="train", **common)
    test = load_problems(data.test, limit=data.max_test, split="test", **common)
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
