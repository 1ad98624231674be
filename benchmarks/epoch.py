"""Wall-time split of one RASFT epoch: rollout, verify, reference log-probs, train, eval, other.

One epoch of the benchmark recipe (refresh before it, train, held-out eval after it) in a fresh
process; the split is the trainer's own (`summary.json` -> wall_time_split_seconds), with "other"
everything in the run the named parts do not cover (data and sequence bookkeeping, checkpoints,
metrics, display). Model loading is reported on its own line, outside the epoch.

    python benchmarks/epoch.py --quick                  # CPU, SmolLM2-135M, < 5 minutes
    python benchmarks/epoch.py --device gpu             # Qwen2.5-0.5B-Instruct (Hub)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import machine_info, use_device
from train_run import benchmark_recipe, measure_run

PARTS = ("rollout", "verify", "reference", "train", "eval", "checkpoint", "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="SmolLM2-135M, small sizes, CPU")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None)
    parser.add_argument("--model", default=None, help="model path or Hub id (default by size)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = args.device or ("cpu" if args.quick else "gpu")
    use_device(device)

    recipe = benchmark_recipe("rasft", quick=args.quick, model=args.model)
    with tempfile.TemporaryDirectory(prefix="rasft-epoch-") as tmp:
        result = measure_run(recipe, Path(tmp) / "rasft", device)
    summary = result["summary"]
    split = summary["wall_time_split_seconds"]
    epoch_seconds = summary["total_seconds"]
    load_seconds = result["run_seconds"] - epoch_seconds
    print(
        f"{recipe['model']['path']} on {device}: one RASFT epoch, "
        f"{recipe['data']['synthetic']['n_train']} problems x k={recipe['rollout']['k']} "
        f"rollouts of <= {recipe['rollout']['max_new_tokens']} tokens, {summary['steps']} steps"
    )
    print(f"{'part':<11} {'seconds':>8} {'share':>7}")
    shares = {}
    for part in [*PARTS, *sorted(set(split) - set(PARTS))]:
        if part not in split:
            continue
        shares[part] = split[part] / epoch_seconds
        print(f"{part:<11} {split[part]:>8.1f} {shares[part]:>7.1%}")
    print(f"{'epoch':<11} {epoch_seconds:>8.1f} {1:>7.1%}")
    print(f"(model load {load_seconds:.1f} s, outside the epoch)")
    other = shares.get("other", 0.0)
    print(f"other = {other:.1%} of the epoch (goal < 5 %)")
    if args.json:
        report = {
            "benchmark": "epoch",
            "device": device,
            "epoch_seconds": epoch_seconds,
            "load_seconds": load_seconds,
            "split_seconds": split,
            "shares": shares,
            "steps": summary["steps"],
            "trained_tokens": summary["trained_tokens"],
            "recipe": recipe,
            "machine": machine_info(),
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
