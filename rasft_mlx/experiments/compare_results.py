"""Reading finished compare runs and aggregating them: per-run entries, per-arm means, curves.

An arm is a mode of the comparison or a variant with a recipe of its own (`compare_arms`); each run
entry names its arm (`arm`) and its training mode (`mode`), and the aggregates are keyed by arm.

Pure functions over the run dirs' `summary.json` and `metrics.jsonl` (and over the dicts built from
them), so the arithmetic is tested without training anything.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rasft_mlx.evaluation.outcomes import (
    answer_shapes,
    extra_set_outcomes,
    final_eval_file,
    final_outcomes,
)
from rasft_mlx.experiments.compare_base import BASE_DIR
from rasft_mlx.experiments.compare_signal import refresh_signal
from rasft_mlx.experiments.statistics import paired_difference
from rasft_mlx.recipe.config import ROLLOUT_MODES, Recipe
from rasft_mlx.recipe.dataset_config import source_label
from rasft_mlx.reporting.mechanism import arm_of


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
                f"'epochs': not matched; the rollout modes' (rasft, rft) epochs also hold their "
                f"correct rollouts, so they train on more batches)"
            )
        return (
            f"every mode is capped at training.max_steps = {self.max_steps} optimizer steps "
            f"= {self.epochs} epochs x {self.steps_per_epoch} steps over the "
            f"{self.expert_sequences} expert demos ({batch}); the rollout modes' (rasft, rft) "
            f"epochs also hold their correct rollouts, so they spend the same number of batches "
            f"with fewer passes over the demos (trained tokens per mode are in the table)"
        )


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
        "mechanism",
        "rollouts_reused",
    )
    return [{k: r.get(k) for k in keys} for r in records if r.get("event") == "refresh"]


def _mean_of(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get("event") == "step" and key in r]
    return statistics.fmean(values) if values else None


def paired_versus(runs: list[dict], arm: str, reference: str, extra: str | None = None):
    """The paired bootstrap difference of the arm `arm` to the arm `reference` on their final
    test outcomes (of the extra test set `extra` when given), or None when either has none."""

    def outcomes(run: dict) -> list[int]:
        return (
            run["outcomes"]
            if extra is None
            else run.get("extra", {}).get(extra, {}).get("outcomes", [])
        )

    mine = [outcomes(r) for r in runs if arm_of(r) == arm and outcomes(r)]
    theirs = [outcomes(r) for r in runs if arm_of(r) == reference and outcomes(r)]
    if not mine or not theirs or len({len(o) for o in mine + theirs}) != 1:
        return None
    return paired_difference(mine, theirs).as_dict()


def pairwise_differences(runs: list[dict], arms: Sequence[str]) -> list[dict]:
    """The paired difference of each arm to each one listed before it, other than the reference
    (arms[0], whose pairs are every summary's `paired_vs_<reference>`), on the in-distribution
    test set: e.g. rasft - rft, RASFT's weighting against the same rollouts at weight 1."""
    rows = []
    for index, versus in enumerate(arms[1:], start=2):
        for arm in arms[index:]:
            paired = paired_versus(runs, arm, versus)
            if paired is not None:
                rows.append({"arm": arm, "versus": versus, **paired})
    return rows


def collect_run(run_dir: Path, mode: str, seed: int, status: str, arm: str | None = None) -> dict:
    """One finished run as a results.json entry; `arm`: a variant's label (default: the mode)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    records = _read_metrics(run_dir)
    evaluation = summary.get("eval")
    entry = {
        "arm": arm or mode,
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
        "outcomes": final_outcomes(run_dir),
        "answer_shapes": answer_shapes(final_eval_file(run_dir)),
        "extra": {
            name: {"pass_at_1": result["pass_at_1"], "outcomes": extra_set_outcomes(run_dir, name)}
            for name, result in (summary.get("eval_extra") or {}).items()
        },
        "drift": summary.get("drift"),
        "code": run_code(records, summary),
    }
    if mode in ROLLOUT_MODES:
        entry["ratio_at_min_mean"] = _mean_of(records, "ratio_at_min")
        entry["ratio_at_max_mean"] = _mean_of(records, "ratio_at_max")
        entry["refreshes"] = _refresh_rows(records)
    return entry


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
    names = sorted({name for r in runs for name in r.get("extra", {})})
    result["extra"] = {}
    for name in names:
        mean, std = mean_std([r["extra"][name]["pass_at_1"] for r in runs if name in r["extra"]])
        result["extra"][name] = {"pass_at_1_mean": mean, "pass_at_1_std": std}
    shapes = [r["answer_shapes"] for r in runs if r.get("answer_shapes")]
    result["answer_shapes"] = (
        {key: statistics.fmean(s[key] for s in shapes) for key in shapes[0]} if shapes else None
    )
    drifts = [r["drift"] for r in runs if r.get("drift")]
    result["drift"] = None
    if drifts:
        kl_mean, kl_std = mean_std([d["kl_ref_policy"] for d in drifts])
        nll_mean, nll_std = mean_std([d["nll_increase"] for d in drifts])
        result["drift"] = {
            "kl_ref_policy_mean": kl_mean,
            "kl_ref_policy_std": kl_std,
            "nll_increase_mean": nll_mean,
            "nll_increase_std": nll_std,
            "problems": drifts[0]["problems"],
        }
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
        "rasft.ratio clip": [r.ratio_min, r.ratio_max],
        "rasft.selection": selection,
        "rollout.k": recipe.rollout.k,
        "rollout.max_new_tokens": recipe.rollout.max_new_tokens,
    }


def build_results(
    recipe: Recipe,
    recipe_source: str,
    out_dir: Path,
    arms: Sequence[dict],
    seeds: Sequence[int],
    budget: Budget,
    base: dict,
    runs: list[dict],
) -> dict:
    """results.json; `arms`: each arm's `Arm.describe()` entry, the reference (a mode) first."""
    base_eval = base.get("eval")
    base_pass = base_eval["pass_at_1"] if base_eval else None
    names = [a["arm"] for a in arms]
    summaries, curves = {}, {}
    for arm in names:
        arm_runs = [r for r in runs if arm_of(r) == arm]
        if arm_runs:
            summaries[arm] = summarize_mode(arm_runs)
            curves[arm] = mode_curve(arm_runs, base_pass)
    reference = names[0]
    if reference in summaries:
        for arm, summary in summaries.items():
            if arm != reference:
                summary[f"vs_{reference}"] = compare_to(summaries[reference], summary)
                summary[f"paired_vs_{reference}"] = paired_versus(runs, arm, reference)
                summary[f"extra_paired_vs_{reference}"] = {
                    name: paired_versus(runs, arm, reference, extra=name)
                    for name in summary["extra"]
                }
    test_problems = base_eval["problems"] if base_eval else 0
    return {
        "recipe": recipe_source,
        "compare_dir": str(out_dir),
        "model": recipe.model.path,
        "start_adapter": recipe.model.adapter,
        "data": {"train": source_label(recipe.data.train), "test": source_label(recipe.data.test)},
        "train_problems": base["train_problems"],
        "test_problems": test_problems,
        "eval": {"greedy": True, "max_new_tokens": recipe.eval.max_new_tokens},
        "settings": key_settings(recipe),
        "modes": [a["arm"] for a in arms if not a.get("variant")],
        "arms": list(arms),
        "seeds": list(seeds),
        "budget": {
            "rule": budget.rule,
            "max_steps": budget.max_steps,
            "expert_sequences": budget.expert_sequences,
            "steps_per_epoch": budget.steps_per_epoch,
            "epochs": budget.epochs,
            "description": budget.describe(recipe),
        },
        "complete": len(runs) == len(arms) * len(seeds),
        "base": base_eval,
        "base_extra": base.get("eval_extra") or {},
        "base_answer_shapes": answer_shapes(out_dir / BASE_DIR / "eval.jsonl"),
        "summary": summaries,
        "curves": curves,
        "pairwise": pairwise_differences(runs, names),
        "refresh_signal": refresh_signal(runs),
        "runs": runs,
    }


def code_label(software: dict) -> str | None:
    """A run's code in a word: the short git commit (+dirty), else the package version."""
    commit = software.get("git_commit")
    if commit:
        return commit[:7] + ("+dirty" if software.get("git_dirty") else "")
    return f"rasft-mlx {software['rasft_mlx']}" if software.get("rasft_mlx") else None


def run_code(records: list[dict], summary: dict) -> list[str]:
    """Every code version that ran part of the run (each start and resume, then the summary's),
    in order; empty for runs from before runs recorded it."""
    found = [r.get("software") or {} for r in records if r.get("event") == "process"]
    found.append(summary.get("software") or {})
    labels = [label for label in map(code_label, found) if label]
    return list(dict.fromkeys(labels))
