"""Compare training modes over seeds: same model, data, step budget and evaluation for each.

`run_compare` trains one run per (mode, seed) in `OUT/<mode>-seed<seed>/` with the trainer,
evaluates the base model once (`OUT/base/`; the first run keeps the starting model's drift
answers in `OUT/drift-answers.json` for the others, and each refresh keeps its samples in
`OUT/shared-rollouts/`, so an arm whose draw has the same inputs, e.g. rasft's first refresh
after rft's from the same start and seed, reads them instead of decoding:
`rasft/shared_rollouts.py`), and writes `OUT/results.json`, `OUT/results.md` and the page
`OUT/compare.html` after every run (`compare_results` aggregates, `compare_report` renders,
`reporting/compare_page` draws), so partial results are readable while a comparison goes on. A
run dir that already holds a finished run (its `summary.json`) is reused; one with checkpoints
but no summary is resumed; so running the same command again continues an interrupted
comparison.

The budget rule (`budget="steps"`, the default): every mode is capped at the same number of
optimizer steps, `training.max_steps = epochs x steps per epoch of the expert demos alone` (or
the recipe's own `max_steps` when that is smaller). SFT-family modes are unaffected (that is their
natural length); RASFT, whose epochs also hold the correct rollouts it adds, stops at the same step
count, i.e. the same number of batches, with fewer passes over the demos. Trained (loss) tokens
still differ a little per mode, since rollouts and demos differ in length: they are reported per
run and per mode. `budget="epochs"` instead runs every mode for the recipe's epochs (unmatched;
RASFT then trains on more batches).

Variants (`compare_arms`): arms with recipes of their own, `--variant LABEL=RECIPE.yaml`, trained
in `OUT/<label>-seed<seed>/` with the same seeds and step cap, and paired with every other arm.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import yaml
from rich.console import Console

from rasft_mlx.console.progress import PhaseInterrupted
from rasft_mlx.experiments.compare_arms import (
    VARIANT_FILE,
    Arm,
    CompareError,
    check_variants,
    mode_arms,
    plain_recipe,
    variant_cap,
)
from rasft_mlx.experiments.compare_base import (
    RECIPE_FILE,
    BaseReuseError,
    base_model_results,
    free_memory,
)
from rasft_mlx.experiments.compare_report import write_results
from rasft_mlx.experiments.compare_results import Budget, build_results, collect_run
from rasft_mlx.recipe.config import MODES, Recipe, save_recipe
from rasft_mlx.reporting.compare_page import (
    COMPARE_FILE,
    compare_charts,
    write_compare_figures,
    write_compare_report,
)
from rasft_mlx.training.checkpoint import list_checkpoints, recipe_differences
from rasft_mlx.training.step_plan import steps_per_epoch
from rasft_mlx.training.stop_signals import interruptible

BUDGETS = ("steps", "epochs")
DRIFT_ANSWERS_FILE = "drift-answers.json"  # the starting model's answers, shared by the runs
SHARED_ROLLOUTS_DIR = "shared-rollouts"  # refreshes' samples, for runs whose draw matches


class CompareInterrupted(Exception):
    """SIGINT/SIGTERM during the base model's evaluation; nothing of it was kept."""

    def __init__(self, during: str, exit_code: int):
        super().__init__(f"interrupted during {during}")
        self.during = during
        self.exit_code = exit_code


def parse_modes(text: str) -> tuple[str, ...]:
    """`sft,dft,rasft` -> ('sft', 'dft', 'rasft'), checked against the known modes."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes:
        raise CompareError("--modes: give at least one mode, e.g. --modes sft,dft,rasft")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise CompareError(
            f"--modes: unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}"
        )
    if len(set(modes)) != len(modes):
        raise CompareError(f"--modes: a mode is listed twice in {text!r}")
    return modes


def command_line(recipe: Path, options: dict) -> str:
    """The `rasft-mlx compare` command that continues a comparison (results.json's `command`):
    every option given, a list once per item; the defaults of budget and quick left out."""
    words = ["rasft-mlx", "compare", str(recipe)]
    for name, value in options.items():
        if value is None or value is False or (name == "budget" and value == "steps"):
            continue
        if value is True:
            words.append(f"--{name}")
        else:
            items = value if isinstance(value, list | tuple) else [value]
            words += [f"--{name}={item}" for item in items]
    return shlex.join(words)


def run_recipe(recipe: Recipe, mode: str, seed: int, max_steps: int | None) -> Recipe:
    """The recipe of one run: its mode, its seed (LoRA init and batch order), the budget cap.

    eval.before_training is switched off: LoRA starts as the identity (B = 0), so every run would
    repeat the base-model eval that the comparison does once.
    """
    training = replace(recipe.training, mode=mode, seed=seed, max_steps=max_steps)
    evaluation = replace(recipe.eval, before_training=False)
    return replace(recipe, training=training, eval=evaluation)


def run_dir_name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def _differences_text(saved: Path, recipe: Recipe) -> str | None:
    try:
        old = yaml.safe_load(saved.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise CompareError(f"{saved}: cannot read the saved recipe: {error}") from error
    differences = recipe_differences(old, plain_recipe(recipe), defaults=plain_recipe(Recipe()))
    if not differences:
        return None
    return "\n".join(f"  {key}: {a!r} -> {b!r}" for key, a, b in differences)


def check_compare_dir(out_dir: Path, recipe: Recipe) -> None:
    """Save the comparison's recipe, or refuse a compare dir that was made with another one."""
    saved = out_dir / RECIPE_FILE
    if saved.is_file():
        lines = _differences_text(saved, recipe)
        if lines:
            raise CompareError(
                f"{out_dir} holds a comparison made with a different recipe ({saved} -> given):\n"
                f"{lines}\nrun it with the same recipe and --set options to continue it, or pass "
                "another --out for a new comparison"
            )
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, saved)


def check_variant_recipes(out_dir: Path, variants: Sequence[Arm]) -> None:
    """Save each variant's recipe (`compare-variant-LABEL.yaml`), or refuse a compare dir whose
    variant of that label was made with another one; all are checked before any is saved."""
    for arm in variants:
        saved = out_dir / VARIANT_FILE.format(label=arm.name)
        lines = _differences_text(saved, arm.recipe) if saved.is_file() else None
        if lines:
            raise CompareError(
                f"{out_dir} holds the variant {arm.name!r} made with a different recipe ({saved} "
                f"-> {arm.source}):\n{lines}\nrun it with the same recipe and --set options to "
                "continue it, or give the changed variant another label (or another --out)"
            )
    for arm in variants:
        saved = out_dir / VARIANT_FILE.format(label=arm.name)
        if not saved.is_file():
            save_recipe(arm.recipe, saved)


def plan_budget(recipe: Recipe, expert_sequences: int, rule: str) -> Budget:
    if rule not in BUDGETS:
        raise CompareError(f"--budget: must be one of {', '.join(BUDGETS)}, got {rule!r}")
    per_epoch = steps_per_epoch(expert_sequences, recipe)
    own_cap = recipe.training.max_steps
    if rule == "steps":
        cap = per_epoch * recipe.training.epochs
        cap = min(cap, own_cap) if own_cap is not None else cap
    else:
        cap = own_cap
    return Budget(rule, cap, expert_sequences, per_epoch, recipe.training.epochs)


# ---------------------------------------------------------------------------------------------
# One run: reuse, resume or train.
# ---------------------------------------------------------------------------------------------


def _run_one(recipe: Recipe, run_dir: Path, console: Console, out_dir: Path) -> str:
    """Train (or resume) one run unless it already finished; returns 'reused' or 'trained'."""
    from rasft_mlx.commands.train import run_training

    if (run_dir / "summary.json").is_file():
        saved = run_dir / "recipe.yaml"
        lines = _differences_text(saved, recipe) if saved.is_file() else None
        if lines:
            raise CompareError(
                f"{run_dir} holds a finished run with a different recipe:\n{lines}\n"
                "pass another --out for a new comparison (or delete that run dir to redo it)"
            )
        return "reused"
    started = (run_dir / "recipe.yaml").is_file() or bool(list_checkpoints(run_dir))
    resume = "auto" if started else False
    shared = {
        "drift_answers": out_dir / DRIFT_ANSWERS_FILE,
        "shared_rollouts": out_dir / SHARED_ROLLOUTS_DIR,
    }
    run_training(recipe, run_dir, console, resume=resume, **shared)
    free_memory()
    return "trained"


# ---------------------------------------------------------------------------------------------
# The comparison.
# ---------------------------------------------------------------------------------------------


def run_compare(
    recipe: Recipe,
    out_dir: Path,
    modes: Sequence[str] = ("sft", "dft", "rasft"),
    seeds: int = 3,
    console: Console | None = None,
    *,
    budget: str = "steps",
    recipe_source: str = "<recipe>",
    command: str | None = None,
    base_from: Path | None = None,
    variants: Sequence[Arm] = (),
) -> dict:
    """Train every (arm, seed) run (seeds: training.seed, +1, ...), evaluate, write results.

    The arms are the modes, then the `variants` (`compare_arms.load_variants`), each trained with
    its own recipe, the same seeds and the same step cap. Runs go seed by seed (all arms of seed s
    before seed s+1), so a partial comparison already compares the arms. `base_from`: another
    compare dir whose base-model evaluation is reused when it evaluated the same model, settings
    and test problems (`compare_base`). Returns the results dict that results.json holds.
    """
    console = console or Console()
    modes = tuple(modes)
    for mode in modes:
        if mode not in MODES:
            raise CompareError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if not modes:
        raise CompareError("give at least one mode: the first is the reference")
    if seeds < 1:
        raise CompareError(f"--seeds must be >= 1, got {seeds}")
    if budget not in BUDGETS:
        raise CompareError(f"--budget: must be one of {', '.join(BUDGETS)}, got {budget!r}")
    check_variants(recipe, recipe_source, variants)
    arms = [*mode_arms(recipe, modes, recipe_source), *variants]
    seed_list = [recipe.training.seed + i for i in range(seeds)]
    out_dir = Path(out_dir)
    check_compare_dir(out_dir, recipe)
    check_variant_recipes(out_dir, variants)
    try:
        with interruptible(console) as signals:
            base = base_model_results(recipe, out_dir, console, base_from)
    except BaseReuseError as error:
        raise CompareError(str(error)) from error
    except (PhaseInterrupted, KeyboardInterrupt) as stopped:
        during = str(stopped) if isinstance(stopped, PhaseInterrupted) else "loading"
        raise CompareInterrupted(
            f"the base model's evaluation ({during})", signals.exit_code
        ) from None
    plan = plan_budget(recipe, base["expert_sequences"], budget)
    console.print(f"[bold]budget[/bold] ({plan.rule}): {plan.describe(recipe)}", soft_wrap=True)

    runs: list[dict] = []

    def results() -> dict:
        listed = [arm.describe(recipe) for arm in arms]
        made = build_results(recipe, recipe_source, out_dir, listed, seed_list, plan, base, runs)
        return {"command": command, **made}

    total = len(arms) * len(seed_list)
    for seed in seed_list:
        for arm in arms:
            run_dir = out_dir / run_dir_name(arm.name, seed)
            what = arm.name if arm.name == arm.mode else f"{arm.name} ({arm.mode}, {arm.source})"
            console.rule(f"[bold]{what}[/bold] seed {seed} ({len(runs) + 1}/{total}) -> {run_dir}")
            cap = (
                variant_cap(plan.rule, plan.max_steps, arm.recipe)
                if arm.variant
                else plan.max_steps
            )
            one = run_recipe(arm.recipe, arm.mode, seed, cap)
            status = _run_one(one, run_dir, console, out_dir)
            if status == "reused":
                console.print(f"reusing the finished run in {run_dir}")
            runs.append(collect_run(run_dir, arm.mode, seed, status, arm=arm.name))
            write_outputs(out_dir, results(), console)
    return results()


def write_outputs(out_dir: Path, results: dict, console: Console) -> None:
    """results.json, results.md with its figures (OUT/figures/*.svg) and compare.html. The
    figures and the page are drawn after the tables are safe: a drawing failure warns and the
    comparison goes on."""
    try:
        charts = compare_charts(results)
        figures = write_compare_figures(out_dir, charts)
    except Exception as error:
        console.print(f"[yellow]warning[/yellow]: could not draw the figures: {error}")
        charts, figures = None, []
    write_results(out_dir, results, figures)
    try:
        write_compare_report(out_dir, results, charts)
    except Exception as error:
        console.print(
            f"[yellow]warning[/yellow]: could not write {out_dir / COMPARE_FILE}: {error}"
        )
