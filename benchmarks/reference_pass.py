"""Reference pass: RASFT's reference log-probs in one lane against decode lanes, side by side.

`rasft.reference.response_logprobs` over a recipe's encoded demos (repeated to --sequences, as
a refresh's demos plus trained rollouts), the reference policy (adapters off), the training
batch size: once on one stream (`lanes=1`, as before stop 44) and once in the default lanes
(two CPU streams on a 2-core machine, one BLAS thread each), interleaved for --rounds rounds.
Prints the table, the largest difference between the two passes' log-probs, and writes JSON.
`--measure drift` times `evaluation.drift.measure_drift` (policy and reference forwards, the KL
over the vocabulary) the same way, on the demos as the answers, at its batch of 16.

    python benchmarks/reference_pass.py                     # the quickstart's shape, ~2 minutes
    python benchmarks/reference_pass.py --recipe recipes/staged.yaml --sequences 300
    python benchmarks/reference_pass.py --measure drift --recipe recipes/staged.yaml --sequences 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import mlx.core as mx
import numpy as np
from common import machine_info

from rasft_mlx.data.encoding import encode_expert_sequences
from rasft_mlx.evaluation.drift import measure_drift
from rasft_mlx.evaluation.extra_sets import DRIFT_BATCH
from rasft_mlx.generation.lanes import default_lanes
from rasft_mlx.models.adapters import adapter_modules, apply_adapters, reference_policy
from rasft_mlx.models.loading import load_model
from rasft_mlx.rasft.reference import response_logprobs
from rasft_mlx.recipe.config import load_recipe
from rasft_mlx.training.run_data import load_run_sets

ROOT = Path(__file__).resolve().parents[1]


def demo_sequences(recipe, tokenizer, count: int):
    data = recipe.data
    problems = load_run_sets(recipe).train
    sequences, _ = encode_expert_sequences(
        tokenizer, problems, data.system_prompt, data.max_seq_len
    )
    return [sequences[i % len(sequences)] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"))
    parser.add_argument("--sequences", type=int, default=92, help="the quickstart's: 48 + 44")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--measure", choices=["reference", "drift"], default="reference")
    parser.add_argument("--json", help="default: benchmarks/results/{reference_pass,drift}.json")
    args = parser.parse_args()
    if args.json is None:
        name = "reference_pass" if args.measure == "reference" else "drift"
        args.json = str(ROOT / "benchmarks" / "results" / f"{name}.json")
    recipe = load_recipe(args.recipe)
    loaded = load_model(recipe.model)
    model = loaded.model
    apply_adapters(model, recipe.lora)
    sequences = demo_sequences(recipe, loaded.tokenizer, args.sequences)
    batch = recipe.training.batch_size, recipe.training.bucket_multiple
    lanes = default_lanes(model)
    arms = {"1 lane": 1, f"{lanes} lanes": lanes}
    times = {name: [] for name in arms}
    values = {}
    if args.measure == "drift":
        batch = DRIFT_BATCH, 32
        mx.random.seed(0)  # a policy away from the reference, so the KL is not 0
        for _, module in adapter_modules(model):
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.01

        def measure(subset, count=None):
            report = measure_drift(model, subset, *batch, lanes=count)
            return [np.array([report.kl_ref_policy, report.nll_increase])]

        context = nullcontext()
    else:

        def measure(subset, count=None):
            return response_logprobs(model, subset, *batch, lanes=count)

        context = reference_policy(model)
    with context:
        measure(sequences[: batch[0]])  # warm-up
        for _ in range(args.rounds):
            for name, count in arms.items():
                started = time.perf_counter()
                values[name] = measure(sequences, count)
                times[name].append(time.perf_counter() - started)
    tokens = sum(len(s.tokens) for s in sequences)
    first, second = values.values()
    largest = max(float(np.abs(a - b).max()) for a, b in zip(first, second, strict=True))
    baseline = min(times["1 lane"])
    rows = []
    print(f"{len(sequences)} sequences, {tokens} tokens, batch {batch[0]}, {args.rounds} rounds")
    print(f"{'pass':<10} {'best s':>7} {'median s':>9} {'s/seq':>7} {'speedup':>8}")
    for name, measured in times.items():
        best = min(measured)
        row = {
            "pass": name,
            "best_s": round(best, 2),
            "median_s": round(statistics.median(measured), 2),
            "seconds_per_sequence": round(best / len(sequences), 3),
            "speedup": round(baseline / best, 2),
        }
        rows.append(row)
        print(
            f"{name:<10} {best:>7.1f} {row['median_s']:>9.1f} "
            f"{row['seconds_per_sequence']:>7.3f} {row['speedup']:>7.2f}x"
        )
    what = "log-prob" if args.measure == "reference" else "KL and NLL-rise"
    print(f"largest |{what} difference| between the passes: {largest:.2e}")
    report = {
        "benchmark": "reference_pass" if args.measure == "reference" else "drift",
        **machine_info(),
        "args": vars(args),
        "sequences": len(sequences),
        "tokens": tokens,
        "rows": rows,
        "largest_logprob_difference": largest,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
