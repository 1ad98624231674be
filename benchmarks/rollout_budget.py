"""The demo-sized rollout budget (`rollout.max_new_tokens_per_demo_token`) on a recipe's first
refresh: its rollouts with the budget off and at each factor, on the recipe's model and sampler.

The requests are the first refresh's: the problems `rasft.selection` picks first (its random
stream seeded as the run seeds it), K samples of each, the refresh's seed, `max_new_tokens` and
sampler, the decode batch sized once from free memory and kept for every arm. Each arm reports
the tokens generated, those spent on truncated rows (cut before their answer: they train
nothing), wall time, truncated rows and rows with a verified-correct answer. Samples are drawn,
so once a budget cuts a row the batch's later draws differ: compare counts, not rows. Times are
noisy on a loaded machine; the token counts are not.

    python benchmarks/rollout_budget.py                      # the quickstart (a trained start)
    python benchmarks/rollout_budget.py --factors 1.25 1.5 2 3 --json out.json
    python benchmarks/rollout_budget.py --set model.adapter=null   # the bare model
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import machine_info

from rasft_mlx.data.encoding import encode_prompt
from rasft_mlx.generation.completions import rank_seed
from rasft_mlx.models.adapters import apply_adapters
from rasft_mlx.models.loading import load_model
from rasft_mlx.rasft.rollouts import generate_samples, rollout_limit, verify_samples
from rasft_mlx.rasft.routing import select_fraction
from rasft_mlx.recipe.config import load_recipe
from rasft_mlx.runtime.memory import auto_decode_rows
from rasft_mlx.training.run_data import encode_training_data, load_run_sets

ROOT = Path(__file__).resolve().parents[1]


def first_refresh_problems(recipe, problems, demos):
    """The problems the first refresh rolls out, in its order (`selection`: all or fraction)."""
    ids = sorted(demos)
    if recipe.rasft.selection == "fraction":
        rng = np.random.default_rng(recipe.training.seed + 17)  # RasftSource.rng
        ids = select_fraction(ids, recipe.rasft.selection_fraction, rng)
    elif recipe.rasft.selection != "all":
        raise SystemExit(
            "nll_band selection needs the policy's NLL: use a recipe with all or fraction"
        )
    by_id = {p.id: p for p in problems}
    return [by_id[i] for i in ids]


def run_arm(loaded, problems, prompts, demos, config, seed, grade_truncated) -> dict:
    started = time.perf_counter()
    samples, stats = generate_samples(
        loaded.model, loaded.tokenizer, problems, prompts, config, seed, "rollouts", demos
    )
    seconds = time.perf_counter() - started
    rows = [(p, c) for p in problems for c in samples[p.id]]
    verified = {p.id: verify_samples(p, samples[p.id], grade_truncated) for p in problems}
    limits = [rollout_limit(config, demos[p.id].response_length) for p in problems]
    return {
        "factor": config.max_new_tokens_per_demo_token,
        "rows": len(rows),
        "token_budget": config.k * sum(limits),
        "tokens_generated": stats.generated_tokens,
        "tokens_on_truncated_rows": sum(len(c.token_ids) for _, c in rows if c.truncated),
        "truncated_rows": sum(c.truncated for _, c in rows),
        "correct_rows": sum(r.correct for group in verified.values() for r in group),
        "problems_with_a_correct_row": sum(any(r.correct for r in g) for g in verified.values()),
        "seconds": round(seconds, 2),
        "tokens_per_second": round(stats.generated_tokens / seconds, 1),
        "limits": {"min": min(limits), "median": float(np.median(limits)), "max": max(limits)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"))
    parser.add_argument("--factors", type=float, nargs="+", default=[1.5, 2.0])
    parser.add_argument("--set", action="append", default=[], help="recipe override KEY=VALUE")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, args.set)
    started = time.perf_counter()
    loaded = load_model(recipe.model)
    apply_adapters(loaded.model, recipe.lora)  # fresh adapters add zero: the base policy
    load_seconds = time.perf_counter() - started
    train = load_run_sets(recipe).train
    sequences, _ = encode_training_data(loaded.tokenizer, train, recipe)
    demos = {s.problem_id: s for s in sequences}
    problems = first_refresh_problems(recipe, train, demos)
    system = recipe.data.system_prompt
    prompts = {p.id: encode_prompt(loaded.tokenizer, p.question, system) for p in problems}
    rollout = recipe.rollout
    if not rollout.batch_size:  # sized once, so that every arm decodes in the same batches
        context = max(len(prompts[p.id]) for p in problems) + rollout.max_new_tokens
        rollout = replace(rollout, batch_size=auto_decode_rows(loaded.model, context))
    seed = rank_seed(recipe.training.seed * 1000 + 1)  # refresh 1's seed
    demo_tokens = [demos[p.id].response_length for p in problems]
    print(
        f"{args.recipe}: {len(problems)} problems x K {rollout.k}, max_new_tokens "
        f"{rollout.max_new_tokens}, decode batch {rollout.batch_size}; demo response tokens "
        f"min {min(demo_tokens)} median {np.median(demo_tokens):.0f} max {max(demo_tokens)}; "
        f"model loaded in {load_seconds:.1f} s"
    )
    warm = replace(rollout, max_new_tokens=4, max_new_tokens_per_demo_token=0.0)
    run_arm(loaded, problems[:2], prompts, demos, warm, seed, False)  # first-call costs

    arms = []
    for factor in [0.0, *args.factors]:
        config = replace(rollout, max_new_tokens_per_demo_token=factor)
        arms.append(
            run_arm(loaded, problems, prompts, demos, config, seed, recipe.rasft.grade_truncated)
        )
    base = arms[0]
    header = "factor | limit min/med/max | tokens (x off) | on truncated | s (x off) | truncated | correct"
    print(header)
    for arm in arms:
        limits = arm["limits"]
        print(
            f"{arm['factor'] or 'off':>6} | {limits['min']}/{limits['median']:.0f}/{limits['max']} | "
            f"{arm['tokens_generated']} ({arm['tokens_generated'] / base['tokens_generated']:.2f})"
            f" | {arm['tokens_on_truncated_rows']} | {arm['seconds']:.1f} "
            f"({arm['seconds'] / base['seconds']:.2f}) | {arm['truncated_rows']}/{arm['rows']} | "
            f"{arm['correct_rows']} ({arm['problems_with_a_correct_row']} problems)"
        )
    if args.json:
        result = {
            "recipe": args.recipe,
            "overrides": args.set,
            "problems": len(problems),
            "k": rollout.k,
            "max_new_tokens": rollout.max_new_tokens,
            "decode_batch": rollout.batch_size,
            "demo_response_tokens": {
                "min": min(demo_tokens),
                "median": float(np.median(demo_tokens)),
                "max": max(demo_tokens),
            },
            "arms": arms,
            "machine": machine_info(),
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
