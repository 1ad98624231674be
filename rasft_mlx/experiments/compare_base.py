"""The base model in a comparison: evaluated once per compare dir, or reused from another one.

`base_model_results` writes `OUT/base/` (the eval files and `base.json`). With `base_from`, a
comparison takes the base model's evaluation from another compare dir instead of running it
again (minutes on a CPU), but only when everything that decides that evaluation is the same:
the model section, the evaluation settings, the system prompt and the test problems themselves
(`evaluation_identity`, compared part by part so a refusal names what differs).
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import mlx.core as mx
from rich.console import Console

from rasft_mlx.data.problem import Problem, problems_digest
from rasft_mlx.models.start_adapter import start_identity
from rasft_mlx.recipe.config import Recipe, RecipeError, load_recipe, recipe_to_dict
from rasft_mlx.runtime.fileio import atomic_write_text

BASE_DIR = "base"
BASE_FILE = "base.json"
RECIPE_FILE = "compare-recipe.yaml"
# The eval settings that change what the base model's evaluation produces (before_training,
# drift_problems and extra_sets do not: the extra sets are compared by their problems).
EVAL_KEYS = ("limit", "samples", "temperature", "top_p", "max_new_tokens", "batch_size")


class BaseReuseError(ValueError):
    """A compare dir whose base-model evaluation cannot stand for this comparison's."""


def evaluation_identity(
    recipe: Recipe, test_problems: list[Problem], extra_sets: list[tuple[str, list[Problem]]]
) -> dict[str, object]:
    """What decides the base model's evaluation, one entry per part that can differ."""
    settings = recipe_to_dict(recipe)
    identity: dict[str, object] = {
        "model": {**settings["model"], **start_identity(recipe.model.adapter)},
        "eval": {key: settings["eval"][key] for key in EVAL_KEYS},
        "data.system_prompt": recipe.data.system_prompt,
        "test set": problems_digest(test_problems),
    }
    for name, problems in extra_sets:
        identity[f"extra set {name}"] = problems_digest(problems)
    return identity


def identity_differences(ours: dict[str, object], theirs: dict[str, object]) -> list[str]:
    """The parts of two evaluation identities that differ, by name."""
    return [key for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)]


def free_memory() -> None:
    """Give MLX's cached buffers back after a model is dropped."""
    gc.collect()
    mx.clear_cache()


def _load_sets(recipe: Recipe) -> tuple[list[Problem], list[Problem], list]:
    from rasft_mlx.evaluation.extra_sets import load_extra_sets
    from rasft_mlx.training.run_data import load_run_data

    train_problems, test_problems = load_run_data(recipe)
    return train_problems, test_problems, load_extra_sets(recipe)


def _reusable_base(source: Path, identity: dict[str, object]) -> dict:
    """The other compare dir's base.json, after checking it evaluated exactly this."""
    saved_recipe, saved_base = source / RECIPE_FILE, source / BASE_DIR / BASE_FILE
    for needed in (saved_recipe, saved_base):
        if not needed.is_file():
            raise BaseReuseError(
                f"--base-from {source}: {needed} does not exist (a compare dir whose base model "
                "was evaluated holds both)"
            )
    try:
        other = load_recipe(saved_recipe)
    except RecipeError as error:
        raise BaseReuseError(f"--base-from {source}: {error}") from error
    _, test_problems, extra_sets = _load_sets(other)
    differing = identity_differences(
        identity, evaluation_identity(other, test_problems, extra_sets)
    )
    if differing:
        raise BaseReuseError(
            f"--base-from {source}: its base model was evaluated differently; these differ: "
            f"{', '.join(differing)}. Drop --base-from to evaluate the base model here."
        )
    return json.loads(saved_base.read_text())


def _copy_base_files(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name != BASE_FILE:
            shutil.copy2(path, target / path.name)


def base_model_results(
    recipe: Recipe, out_dir: Path, console: Console, base_from: Path | None = None
) -> dict:
    """Greedy eval of the base model and the number of trainable expert demos; cached on disk
    in OUT/base, or taken from `base_from`'s when it evaluated the same thing."""
    path = out_dir / BASE_DIR / BASE_FILE
    if path.is_file():
        console.print(f"base model: reusing {path}")
        return json.loads(path.read_text())
    from rasft_mlx.evaluation.evaluate import evaluate_and_write
    from rasft_mlx.models.loading import load_model
    from rasft_mlx.training.run_data import encode_training_data

    train_problems, test_problems, extra_sets = _load_sets(recipe)
    reused = None
    if base_from is not None:
        identity = evaluation_identity(recipe, test_problems, extra_sets)
        reused = _reusable_base(Path(base_from), identity)
        console.print(f"base model: reusing the evaluation in {Path(base_from) / BASE_DIR}")
    loaded = load_model(recipe.model)
    sequences, report = encode_training_data(loaded.tokenizer, train_problems, recipe)
    if reused is not None:
        del loaded
        _copy_base_files(Path(base_from) / BASE_DIR, out_dir / BASE_DIR)
        evaluation, extra = reused["eval"], reused.get("eval_extra") or {}
    else:
        evaluation = None
        if test_problems:
            start = f" + the start adapter {recipe.model.adapter}" if recipe.model.adapter else ""
            console.print(f"base model: evaluating {recipe.model.path}{start} (greedy)")
            summary = evaluate_and_write(loaded, recipe, test_problems, out_dir / BASE_DIR, "eval")
            evaluation = summary.as_dict()
        extra = {}
        for name, problems in extra_sets:
            console.print(f"base model: evaluating the extra test set {name}")
            summary = evaluate_and_write(
                loaded, recipe, problems, out_dir / BASE_DIR, f"eval-{name}"
            )
            extra[name] = summary.as_dict()
        del loaded
    free_memory()
    result = {
        "model": recipe.model.path,
        "train_problems": len(train_problems),
        "expert_sequences": len(sequences),
        "skipped_too_long": report.skipped_too_long,
        "eval": evaluation,
        "eval_extra": extra,
    }
    if reused is not None:
        result["evaluated_in"] = str(base_from)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return result
