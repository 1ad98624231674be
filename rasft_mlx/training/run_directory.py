"""A run directory: creating it, checking a resumed run's recipe, and its metrics log."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import yaml
from rich.console import Console

from rasft_mlx.recipe.config import Recipe, recipe_to_dict, save_recipe
from rasft_mlx.training.checkpoint import (
    Checkpoint,
    list_checkpoints,
    load_latest,
    recipe_differences,
    remove_checkpoints,
    remove_newer_than,
)


class TrainingError(RuntimeError):
    """A run that cannot start or continue, with the reason."""


def prepare_run_dir(
    run_dir: Path,
    recipe: Recipe,
    console: Console,
    resume: bool | str = False,
    force: bool = False,
) -> Checkpoint | None:
    """Create the run dir and save the recipe; with resume, the checkpoint to continue from.

    resume True: a run dir without a loadable checkpoint is an error (nothing is written);
    "auto": resume when there is one, else start fresh, saying which.
    """
    if resume is True and not list_checkpoints(run_dir):
        raise TrainingError(
            f"--resume: no checkpoint to resume in {run_dir} (a different output.name or --out?); "
            "start without --resume, or pass --auto-resume to start fresh when there is none"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrainingError(f"output.dir: cannot write to {run_dir}: {error}") from error
    checkpoint = None
    if resume:
        check_saved_recipe(run_dir, recipe, console, force)
        checkpoint, skipped = load_latest(run_dir)
        for reason in skipped:
            console.print(f"[yellow]skipping an unloadable checkpoint[/yellow]: {reason}")
        if checkpoint is None and resume is True:
            raise TrainingError(f"--resume: no loadable checkpoint in {run_dir}")
        if checkpoint is None:
            console.print(f"no checkpoint in {run_dir}: starting a new run")
            remove_checkpoints(run_dir)
            MetricsLog(run_dir / "metrics.jsonl").truncate(0)
        else:
            console.print(f"resuming from {checkpoint.path}")
            remove_newer_than(run_dir, checkpoint.step)
    else:
        existing = list_checkpoints(run_dir)
        if existing and not force:
            raise TrainingError(
                f"{run_dir} already holds a run with checkpoints (newest {existing[0].name}): "
                "pass --resume to continue it, or --force to start over and delete them"
            )
        if existing:
            console.print(f"--force: deleting the checkpoints and metrics in {run_dir}")
            remove_checkpoints(run_dir)
            MetricsLog(run_dir / "metrics.jsonl").truncate(0)
    try:
        save_recipe(recipe, run_dir / "recipe.yaml")
    except OSError as error:
        raise TrainingError(f"output.dir: cannot write to {run_dir}: {error}") from error
    return checkpoint


def check_saved_recipe(run_dir: Path, recipe: Recipe, console: Console, force: bool) -> None:
    """Refuse to resume with a recipe that differs from the run's saved one, unless forced."""
    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        return
    try:
        old = yaml.safe_load(saved.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise TrainingError(f"{saved}: cannot read the run's saved recipe: {error}") from error
    new = yaml.safe_load(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    defaults = yaml.safe_load(yaml.safe_dump(recipe_to_dict(Recipe()), sort_keys=False))
    differences = recipe_differences(old, new, defaults=defaults)
    if not differences:
        return
    lines = "\n".join(f"  {key}: {a!r} -> {b!r}" for key, a, b in differences)
    if not force:
        raise TrainingError(
            f"{run_dir} was trained with a different recipe ({saved} -> given):\n{lines}\n"
            "resume with the same recipe, or pass --force to resume with the new one"
        )
    console.print(f"[yellow]--force: resuming with a changed recipe[/yellow]:\n{lines}")


class MetricsLog:
    """Appends one JSON record per line to metrics.jsonl, and hands it to each sink (trackers).

    A sink is anything with write(record); one that raises is switched off with a warning, so
    a tracker's failure never stops training.
    """

    def __init__(self, path: Path, sinks=()):
        self.path = path
        self.sinks = list(sinks)

    def truncate(self, size: int | None) -> None:
        """Drop records written after a checkpoint (size None: keep everything)."""
        if size is not None and self.path.exists() and self.path.stat().st_size > size:
            with open(self.path, "r+b") as f:
                f.truncate(size)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for sink in list(self.sinks):
            try:
                sink.write(record)
            except Exception as error:
                warnings.warn(
                    f"{type(sink).__name__} failed and gets no more metrics: {error}", stacklevel=2
                )
                self.sinks.remove(sink)
