"""Compare training modes over seeds: same model, data, step budget and evaluation for each.

`run_compare` trains one run per (mode, seed) in `OUT/<mode>-seed<seed>/` with the trainer, evaluates
the base model once (`OUT/base/`), and writes `OUT/results.json` and `OUT/results.md` after every
run, so partial results are readable while a comparison goes on. A run dir that already holds a
finished run (its `summary.json`) is reused; one with checkpoints but no summary is resumed; so
running the same command again continues an interrupted comparison.

The budget rule (`budget="steps"`, the default): every mode is capped at the same number of
optimizer steps, `training.max_steps = epochs x steps per epoch of the expert demos alone` (or
the recipe's own `max_steps` when that is smaller). SFT-family modes are unaffected (that is their
natural length); RASFT, whose epochs also hold the correct rollouts it adds, stops at the same step
count, i.e. the same number of batches, with fewer passes over the demos. Trained (loss) tokens
still differ a little per mode, since rollouts and demos differ in length: they are reported per
run and per mode. `budget="epochs"` instead runs every mode for the recipe's epochs (unmatched;
RASFT then trains on more batches).
"""

from __future__ import annotations

import gc
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import mlx.core as mx
import yaml
from rich.console import Console
from rich.table import Table

from .checkpoint import list_checkpoints, recipe_differences
from .config import MODES, Recipe, recipe_to_dict, save_recipe
from .fileio import atomic_write_text

BUDGETS = ("steps", "epochs")
RECIPE_FILE = "compare-recipe.yaml"
BASE_DIR = "base"
BASE_FILE = "base.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


class CompareError(ValueError):
    """An invalid comparison request, or a compare dir made with a different recipe."""


@dataclass(frozen=True)
class Budget:
    rule: str
    max_steps: int | None
    expert_sequences: int
    steps_per_epoch: int
    epochs: int

    def describe(self, recipe: Recipe) -> str:
        t = recipe.training
        batch = f"batch {t.batch_size}" + (
            f" x {t.grad_accumulation} accumulation" if t.grad_accumulation > 1 else ""
        )
        if self.rule == "epochs":
            cap = f", capped at {self.max_steps} steps" if self.max_steps is not None else ""
            return (
                f"every mode trains for training.epochs = {self.epochs} epochs{cap} (budget "
                f"'epochs': not matched; RASFT's epochs also hold its correct rollouts, so it "
                f"trains on more batches)"
            )
        return (
            f"every mode is capped at training.max_steps = {self.max_steps} optimizer steps "
            f"= {self.epochs} epochs x {self.steps_per_epoch} steps over the "
            f"{self.expert_sequences} expert demos ({batch}); RASFT's epochs also hold its "
            f"correct rollouts, so it spends the same number of batches with fewer passes over "
            f"the demos (trained tokens per mode are in the table)"
        )


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


def quick_variant(path: Path) -> Path:
    """The `--quick` recipe of `X.yaml`: the sibling `X-quick.yaml`."""
    quick = path.with_name(f"{path.stem}-quick{path.suffix}")
    if not quick.is_file():
        raise CompareError(f"--quick: {path} has no quick variant ({quick} does not exist)")
    return quick


def run_recipe(recipe: Recipe, mode: str, seed: int, max_steps: int | None) -> Recipe:
    """The recipe of one run: its mode, its seed (LoRA init and batch order), the budget cap.

    eval.before_training is switched off: LoRA starts as the identity (B = 0), so every run would
    repeat the base-model eval that the comparison does once.
    """
    training = replace(recipe.training, mode=mode, seed=seed, max_steps=max_steps)
    evaluation = replace(recipe.eval, before_training=False)
    return replace(recipe, training=training, eval=evaluation)


def run_dir_name(mode: str, seed: int) -> str:
    return f"{mode}-seed{seed}"


def _recipe_dict(recipe: Recipe) -> dict:
    # YAML round trip, so it compares equal to a saved recipe.yaml (tuples become lists).
    return yaml.safe_load(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))


def _differences_text(saved: Path, recipe: Recipe) -> str | None:
    try:
        old = yaml.safe_load(saved.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise CompareError(f"{saved}: cannot read the saved recipe: {error}") from error
    differences = recipe_differences(old, _recipe_dict(recipe))
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


# ---------------------------------------------------------------------------------------------
# The base model: evaluated once, and the expert-sequence count that sets the step budget.
# ---------------------------------------------------------------------------------------------


def _free_memory() -> None:
    gc.collect()
    mx.clear_cache()


def base_model_results(recipe: Recipe, out_dir: Path, console: Console) -> dict:
    """Greedy eval of the base model and the number of trainable expert demos; cached on disk."""
    path = out_dir / BASE_DIR / BASE_FILE
    if path.is_file():
        cached = json.loads(path.read_text())
        console.print(f"base model: reusing {path}")
        return cached
    from .encoding import encode_expert_sequences
    from .evaluate import evaluate_problems, write_eval_outputs
    from .models import load_model
    from .trainer import TrainingError, load_run_data

    train_problems, test_problems = load_run_data(recipe)
    loaded = load_model(recipe.model)
    sequences, report = encode_expert_sequences(
        loaded.tokenizer, train_problems, recipe.data.system_prompt, recipe.data.max_seq_len
    )
    if not sequences:
        raise TrainingError(
            f"data.max_seq_len: all {report.skipped_too_long} training rows are longer than "
            f"{recipe.data.max_seq_len} tokens"
        )
    evaluation = None
    if test_problems:
        console.print(f"base model: evaluating {recipe.model.path} (greedy, no adapters)")
        records, summary = evaluate_problems(
            loaded.model,
            loaded.tokenizer,
            test_problems,
            recipe.eval,
            recipe.data.system_prompt,
            seed=recipe.training.seed,
        )
        write_eval_outputs(records, summary, out_dir / BASE_DIR, name="eval")
        evaluation = summary.as_dict()
    del loaded
    _free_memory()
    result = {
        "model": recipe.model.path,
        "train_problems": len(train_problems),
        "expert_sequences": len(sequences),
        "skipped_too_long": report.skipped_too_long,
        "eval": evaluation,
    }
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return result


def steps_per_epoch(sequence_count: int, recipe: Recipe) -> int:
    """Optimizer steps in one epoch of `sequence_count` sequences (as the trainer batches them)."""
    batches = math.ceil(sequence_count / recipe.training.batch_size)
    return math.ceil(batches / recipe.training.grad_accumulation)


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
# One run: reuse, resume or train; then read its summary and metrics.
# ---------------------------------------------------------------------------------------------


def _read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
    return records


def run_curve(records: list[dict]) -> list[dict]:
    """Held-out pass@1 after each epoch (1-based), with the step and tokens trained by then."""
    step, tokens, curve = 0, 0, []
    for record in records:
        if record.get("event") == "step":
            step = record["step"]
            tokens += record.get("trained_tokens", 0)
        elif record.get("event") == "eval" and record["epoch"] >= 0:  # -1: before training
            curve.append(
                {
                    "epoch": record["epoch"] + 1,
                    "step": step,
                    "trained_tokens": tokens,
                    "pass_at_1": record["pass_at_1"],
                }
            )
    return curve


def _refresh_rows(records: list[dict]) -> list[dict]:
    keys = (
        "refresh",
        "problems_selected",
        "rollouts_generated",
        "rollouts_trained",
        "solvability_histogram",
        "weight_routes",
        "expert_weight",
        "rollout_weight",
        "dropped",
        "ratio_clip_since_last_refresh",
    )
    return [{k: r.get(k) for k in keys} for r in records if r.get("event") == "refresh"]


def _mean_of(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get("event") == "step" and key in r]
    return statistics.fmean(values) if values else None


def collect_run(run_dir: Path, mode: str, seed: int, status: str) -> dict:
    """One finished run as a results.json entry."""
    summary = json.loads((run_dir / "summary.json").read_text())
    records = _read_metrics(run_dir)
    evaluation = summary.get("eval")
    entry = {
        "mode": mode,
        "seed": seed,
        "status": status,
        "run_dir": str(run_dir),
        "pass_at_1": evaluation["pass_at_1"] if evaluation else None,
        "avg_at_k": evaluation.get("avg_at_k") if evaluation else None,
        "steps": summary["steps"],
        "trained_tokens": summary["trained_tokens"],
        "final_loss": summary["final_loss"],
        "train_seconds": summary["train_seconds"],
        "total_seconds": summary["total_seconds"],
        "wall_time_split_seconds": summary.get("wall_time_split_seconds", {}),
        "curve": run_curve(records),
    }
    if mode == "rasft":
        entry["ratio_at_min_mean"] = _mean_of(records, "ratio_at_min")
        entry["ratio_at_max_mean"] = _mean_of(records, "ratio_at_max")
        entry["refreshes"] = _refresh_rows(records)
    return entry


def _run_one(recipe: Recipe, run_dir: Path, console: Console) -> str:
    """Train (or resume) one run unless it already finished; returns 'reused' or 'trained'."""
    from .trainer import run_training

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
    run_training(recipe, run_dir, console, resume=started)
    _free_memory()
    return "trained"


# ---------------------------------------------------------------------------------------------
# Aggregation.
# ---------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarize_mode(runs: list[dict]) -> dict:
    scored = [r["pass_at_1"] for r in runs if r["pass_at_1"] is not None]
    result: dict = {"runs": len(runs), "seeds": [r["seed"] for r in runs]}
    if scored:
        mean, std = mean_std(scored)
        result.update(
            pass_at_1_mean=mean,
            pass_at_1_std=std,
            pass_at_1_min=min(scored),
            pass_at_1_max=max(scored),
        )
    else:
        result.update(
            pass_at_1_mean=None, pass_at_1_std=None, pass_at_1_min=None, pass_at_1_max=None
        )
    avg = [r["avg_at_k"] for r in runs if r.get("avg_at_k") is not None]
    result["avg_at_k_mean"] = statistics.fmean(avg) if avg else None
    for key in ("trained_tokens", "steps", "total_seconds"):
        result[f"{key}_mean"] = statistics.fmean(r[key] for r in runs)
    result["total_seconds_sum"] = sum(r["total_seconds"] for r in runs)
    return result


def compare_to(reference: dict, other: dict) -> dict | None:
    """Difference of means and a rough rule: beyond the spread when |diff| > 2 x its std error."""
    if reference["pass_at_1_mean"] is None or other["pass_at_1_mean"] is None:
        return None
    diff = other["pass_at_1_mean"] - reference["pass_at_1_mean"]
    n_ref, n_other = len(reference["seeds"]), len(other["seeds"])
    if n_ref < 2 or n_other < 2:
        return {"difference": diff, "std_error": None, "beyond_spread": None}
    se = math.sqrt(reference["pass_at_1_std"] ** 2 / n_ref + other["pass_at_1_std"] ** 2 / n_other)
    return {"difference": diff, "std_error": se, "beyond_spread": abs(diff) > 2 * se}


def mode_curve(runs: list[dict], base_pass: float | None) -> list[dict]:
    """Mean pass@1 per epoch over the seeds (epoch 0: the base model, step 0)."""
    points = []
    if base_pass is not None:
        points.append(
            {
                "epoch": 0,
                "runs": 1,
                "step_mean": 0.0,
                "trained_tokens_mean": 0.0,
                "pass_at_1_mean": base_pass,
                "pass_at_1_std": 0.0,
            }
        )
    by_epoch: dict[int, list[dict]] = {}
    for run in runs:
        for point in run["curve"]:
            by_epoch.setdefault(point["epoch"], []).append(point)
    for epoch in sorted(by_epoch):
        group = by_epoch[epoch]
        mean, std = mean_std([p["pass_at_1"] for p in group])
        points.append(
            {
                "epoch": epoch,
                "runs": len(group),
                "step_mean": statistics.fmean(p["step"] for p in group),
                "trained_tokens_mean": statistics.fmean(p["trained_tokens"] for p in group),
                "pass_at_1_mean": mean,
                "pass_at_1_std": std,
            }
        )
    return points


def key_settings(recipe: Recipe) -> dict:
    """The settings a reader of the results needs to judge the modes (all in compare-recipe.yaml)."""
    t, r = recipe.training, recipe.rasft
    selection = r.selection + (f" {r.selection_fraction}" if r.selection == "fraction" else "")
    return {
        "training.learning_rate": t.learning_rate,
        "training.batch_size": t.batch_size
        if t.grad_accumulation == 1
        else f"{t.batch_size} x {t.grad_accumulation} accumulation",
        "lora.rank": recipe.lora.rank,
        "training.dft_factor": t.dft_factor,
        "rasft.weighting": r.weighting,
        "rasft.selection": selection,
        "rollout.k": recipe.rollout.k,
        "rollout.max_new_tokens": recipe.rollout.max_new_tokens,
    }


def build_results(
    recipe: Recipe,
    recipe_source: str,
    out_dir: Path,
    modes: Sequence[str],
    seeds: Sequence[int],
    budget: Budget,
    base: dict,
    runs: list[dict],
) -> dict:
    base_eval = base.get("eval")
    base_pass = base_eval["pass_at_1"] if base_eval else None
    summaries, curves = {}, {}
    for mode in modes:
        mode_runs = [r for r in runs if r["mode"] == mode]
        if mode_runs:
            summaries[mode] = summarize_mode(mode_runs)
            curves[mode] = mode_curve(mode_runs, base_pass)
    reference = modes[0]
    if reference in summaries:
        for mode, summary in summaries.items():
            if mode != reference:
                summary[f"vs_{reference}"] = compare_to(summaries[reference], summary)
    test_problems = base_eval["problems"] if base_eval else 0
    return {
        "recipe": recipe_source,
        "compare_dir": str(out_dir),
        "model": recipe.model.path,
        "data": {"train": recipe.data.train, "test": recipe.data.test},
        "train_problems": base["train_problems"],
        "test_problems": test_problems,
        "eval": {"greedy": True, "max_new_tokens": recipe.eval.max_new_tokens},
        "settings": key_settings(recipe),
        "modes": list(modes),
        "seeds": list(seeds),
        "budget": {
            "rule": budget.rule,
            "max_steps": budget.max_steps,
            "expert_sequences": budget.expert_sequences,
            "steps_per_epoch": budget.steps_per_epoch,
            "epochs": budget.epochs,
            "description": budget.describe(recipe),
        },
        "complete": len(runs) == len(modes) * len(seeds),
        "base": base_eval,
        "summary": summaries,
        "curves": curves,
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------
# Output: Markdown, a rich table, and the files.
# ---------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _spread(summary: dict) -> str:
    if summary["pass_at_1_mean"] is None:
        return "-"
    return f"{summary['pass_at_1_mean']:.3f} ± {summary['pass_at_1_std']:.3f}"


def _versus(summary: dict, reference: str) -> str:
    comparison = summary.get(f"vs_{reference}")
    if not comparison:
        return "-"
    text = f"{comparison['difference']:+.3f}"
    if comparison["beyond_spread"] is None:
        return text
    return text + (" (beyond spread)" if comparison["beyond_spread"] else " (within spread)")


def results_markdown(results: dict) -> str:
    modes, reference = results["modes"], results["modes"][0]
    base, summaries = results["base"], results["summary"]
    lines = [
        f"# rasft-mlx compare: `{results['recipe']}`",
        "",
        f"Model `{results['model']}`; train `{results['data']['train']}` "
        f"({results['train_problems']} problems), test `{results['data']['test']}` "
        f"({results['test_problems']} problems, greedy pass@1, "
        f"max_new_tokens {results['eval']['max_new_tokens']}); seeds "
        f"{', '.join(map(str, results['seeds']))}."
        + ("" if results["complete"] else " **Partial: some runs have not finished yet.**"),
        "",
        f"**Budget** ({results['budget']['rule']}): {results['budget']['description']}.",
        "",
        *([f"Command: `{results['command']}`", ""] if results.get("command") else []),
        "Settings: "
        + ", ".join(f"{k} {v}" for k, v in results.get("settings", {}).items())
        + " (everything else: compare-recipe.yaml).",
        "",
        f"| mode | runs | pass@1 mean ± std | min | max | vs {reference} | tokens trained "
        "| steps | wall time / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if base is not None:
        lines.append(
            f"| base model | 1 | {base['pass_at_1']:.3f} | | | | 0 | 0 "
            f"| {_duration(base['seconds'])} (eval) |"
        )
    for mode in modes:
        if mode not in summaries:
            continue
        s = summaries[mode]
        lines.append(
            f"| {mode} | {s['runs']} | {_spread(s)} | {_pct(s['pass_at_1_min'])} "
            f"| {_pct(s['pass_at_1_max'])} | {_versus(s, reference) if mode != reference else ''} "
            f"| {s['trained_tokens_mean']:,.0f} | {s['steps_mean']:.0f} "
            f"| {_duration(s['total_seconds_mean'])} |"
        )
    lines += [
        "",
        'std is the sample standard deviation over seeds. "Beyond spread" is a rough rule: the '
        "difference of means exceeds twice its standard error, sqrt(s1²/n1 + s2²/n2); with 3 "
        "seeds, read it as a hint, not a test.",
        "",
        "## Held-out pass@1 over training (mean ± std over seeds; @ mean step)",
        "",
    ]
    curves = results["curves"]
    epochs = sorted({p["epoch"] for points in curves.values() for p in points})
    lines += [
        "| epoch | " + " | ".join(m for m in modes if m in curves) + " |",
        "|---|" + "---|" * len(curves),
    ]
    for epoch in epochs:
        cells = []
        for mode in modes:
            if mode not in curves:
                continue
            point = next((p for p in curves[mode] if p["epoch"] == epoch), None)
            cells.append(
                "-"
                if point is None
                else f"{point['pass_at_1_mean']:.3f} ± {point['pass_at_1_std']:.3f} "
                f"@ {point['step_mean']:.0f}"
            )
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Epoch 0 is the base model. Under the step budget RASFT's epochs are longer (demos plus "
        "rollouts), so its later points sit at other steps; its last point is at the cap.",
        "",
        "## Runs",
        "",
        "| mode | seed | pass@1 | final loss | steps | tokens trained | wall time | run dir |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        lines.append(
            f"| {run['mode']} | {run['seed']} | {_pct(run['pass_at_1'])} "
            f"| {run['final_loss']:.4f} | {run['steps']} | {run['trained_tokens']:,} "
            f"| {_duration(run['total_seconds'])} | `{run['run_dir']}` |"
        )
    refresh_lines = []
    for run in results["runs"]:
        for row in run.get("refreshes", []):
            rollout_weight = row["rollout_weight"] or {}
            expert_weight = row["expert_weight"] or {}
            refresh_lines.append(
                f"| {run['seed']} | {row['refresh']} | {row['problems_selected']} "
                f"| {row['rollouts_generated']} | {row['rollouts_trained']} "
                f"| {row['solvability_histogram']} | {_pct(expert_weight.get('mean'))} "
                f"| {_pct(rollout_weight.get('mean'))} | {row['dropped']} |"
            )
    if refresh_lines:
        lines += [
            "",
            "## RASFT refreshes",
            "",
            "Solvability histogram: problems with 0..k correct rollouts. Weights are means over "
            "problems (expert) and trained rollouts (rollout).",
            "",
            "| seed | refresh | selected | generated | trained | solvability | expert weight "
            "| rollout weight | dropped |",
            "|---|---|---|---|---|---|---|---|---|",
            *refresh_lines,
        ]
        clipping = [
            f"seed {r['seed']}: {r['ratio_at_min_mean']:.3f} at ratio_min, "
            f"{r['ratio_at_max_mean']:.3f} at ratio_max"
            for r in results["runs"]
            if r["mode"] == "rasft" and r.get("ratio_at_min_mean") is not None
        ]
        if clipping:
            lines += ["", "Mean fraction of sequences on the ratio clip bounds per step: "]
            lines[-1] += "; ".join(clipping) + "."
    return "\n".join(lines) + "\n"


def results_table(results: dict) -> Table:
    """The console table: one row per mode (and the base model), means over seeds."""
    reference = results["modes"][0]
    title = f"compare: {results['model']} ({results['test_problems']} test problems, greedy)"
    table = Table(
        title=title if results["complete"] else title + " [partial]",
        caption=f"budget: {results['budget']['rule']}, max_steps {results['budget']['max_steps']}",
    )
    table.add_column("mode", no_wrap=True)
    table.add_column("runs", justify="right")
    table.add_column("pass@1 mean ± std", justify="right", no_wrap=True)
    table.add_column("min", justify="right")
    table.add_column("max", justify="right")
    table.add_column(f"vs {reference}", justify="right")
    table.add_column("tokens trained", justify="right", no_wrap=True)
    table.add_column("steps", justify="right")
    table.add_column("wall / run", justify="right", no_wrap=True)
    base = results["base"]
    if base is not None:
        row = ("base model", "1", f"{base['pass_at_1']:.3f}", "", "", "", "0", "0")
        table.add_row(*row, _duration(base["seconds"]))
    for mode in results["modes"]:
        s = results["summary"].get(mode)
        if s is None:
            continue
        table.add_row(
            f"[bold]{mode}[/bold]",
            str(s["runs"]),
            _spread(s),
            _pct(s["pass_at_1_min"]),
            _pct(s["pass_at_1_max"]),
            _versus(s, reference) if mode != reference else "",
            f"{s['trained_tokens_mean']:,.0f}",
            f"{s['steps_mean']:.0f}",
            _duration(s["total_seconds_mean"]),
        )
    return table


def curves_table(results: dict) -> Table:
    """Held-out pass@1 per epoch, mean over seeds, with the mean step of each point."""
    curves = results["curves"]
    table = Table(title="held-out pass@1 by epoch (mean over seeds @ step)")
    table.add_column("epoch", justify="right")
    modes = [m for m in results["modes"] if m in curves]
    for mode in modes:
        table.add_column(mode, justify="right", no_wrap=True)
    epochs = sorted({p["epoch"] for points in curves.values() for p in points})
    for epoch in epochs:
        cells = []
        for mode in modes:
            point = next((p for p in curves[mode] if p["epoch"] == epoch), None)
            cells.append(
                "-"
                if point is None
                else f"{point['pass_at_1_mean']:.3f} @ {point['step_mean']:.0f}"
            )
        table.add_row(str(epoch), *cells)
    return table


def write_results(out_dir: Path, results: dict) -> tuple[Path, Path]:
    json_path, md_path = out_dir / RESULTS_JSON, out_dir / RESULTS_MD
    atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
    atomic_write_text(md_path, results_markdown(results))
    return json_path, md_path


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
) -> dict:
    """Train every (mode, seed) run (seeds: training.seed, +1, ...), evaluate, write results.

    Runs go seed by seed (all modes of seed s before seed s+1), so a partial comparison already
    compares the modes. Returns the results dict that results.json holds.
    """
    console = console or Console()
    modes = tuple(modes)
    for mode in modes:
        if mode not in MODES:
            raise CompareError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if seeds < 1:
        raise CompareError(f"--seeds must be >= 1, got {seeds}")
    if budget not in BUDGETS:
        raise CompareError(f"--budget: must be one of {', '.join(BUDGETS)}, got {budget!r}")
    seed_list = [recipe.training.seed + i for i in range(seeds)]
    out_dir = Path(out_dir)
    check_compare_dir(out_dir, recipe)
    base = base_model_results(recipe, out_dir, console)
    plan = plan_budget(recipe, base["expert_sequences"], budget)
    console.print(f"[bold]budget[/bold] ({plan.rule}): {plan.describe(recipe)}", soft_wrap=True)

    runs: list[dict] = []

    def results() -> dict:
        made = build_results(recipe, recipe_source, out_dir, modes, seed_list, plan, base, runs)
        return {"command": command, **made}

    total = len(modes) * len(seed_list)
    for seed in seed_list:
        for mode in modes:
            run_dir = out_dir / run_dir_name(mode, seed)
            console.rule(f"[bold]{mode}[/bold] seed {seed} ({len(runs) + 1}/{total}) -> {run_dir}")
            status = _run_one(run_recipe(recipe, mode, seed, plan.max_steps), run_dir, console)
            if status == "reused":
                console.print(f"reusing the finished run in {run_dir}")
            runs.append(collect_run(run_dir, mode, seed, status))
            write_results(out_dir, results())
    return results()
