"""Peak memory of a RASFT run vs an SFT run of the same recipe, each in a fresh process.

Same model, data, LoRA and batches; RASFT adds its refresh (rollouts from the live adapter, their
verification and cached reference log-probs) and trains on the correct rollouts too. Reported:
MLX's peak allocation (the figure that matters on a Mac GPU, where MLX's buffers are the memory)
and the process's peak RSS (on the CPU it also counts the Python heap, libraries and compiled
kernels). Runs alternate sft, rasft, sft, rasft ... for `--repeats` rounds.

    python benchmarks/memory.py --quick                 # CPU, SmolLM2-135M, < 5 minutes
    python benchmarks/memory.py --device gpu            # Qwen2.5-0.5B-Instruct (Hub)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import machine_info, use_device
from train_run import benchmark_recipe, measure_run

MODES = ("sft", "rasft")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="SmolLM2-135M, small sizes, CPU")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None)
    parser.add_argument("--model", default=None, help="model path or Hub id (default by size)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = args.device or ("cpu" if args.quick else "gpu")
    use_device(device)

    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="rasft-memory-") as tmp:
        for repeat in range(args.repeats):
            for mode in MODES:
                recipe = benchmark_recipe(mode, quick=args.quick, model=args.model)
                result = measure_run(recipe, Path(tmp) / f"{mode}-{repeat}", device)
                runs[mode].append(result)
    model = benchmark_recipe("sft", quick=args.quick, model=args.model)["model"]["path"]
    print(f"{model} on {device}: one epoch each, fresh process per run, {args.repeats} round(s)")
    print(f"{'run':<6} {'MLX peak GB':>12} {'RSS peak GB':>12} {'steps':>6} {'tokens':>8}")
    rows = {}
    for mode, results in runs.items():
        mlx_peak = statistics.median(r["mlx_peak_bytes"] for r in results) / 1e9
        rss_peak = statistics.median(r["rss_peak_bytes"] for r in results) / 1e9
        last = results[-1]["summary"]
        rows[mode] = {
            "mlx_peak_gb": mlx_peak,
            "rss_peak_gb": rss_peak,
            "steps": last["steps"],
            "trained_tokens": last["trained_tokens"],
        }
        print(
            f"{mode:<6} {mlx_peak:>12.3f} {rss_peak:>12.3f} {last['steps']:>6} "
            f"{last['trained_tokens']:>8}"
        )
    mlx_ratio = rows["rasft"]["mlx_peak_gb"] / rows["sft"]["mlx_peak_gb"]
    rss_ratio = rows["rasft"]["rss_peak_gb"] / rows["sft"]["rss_peak_gb"]
    print(f"rasft / sft: MLX peak {mlx_ratio:.3f}x, RSS peak {rss_ratio:.3f}x (goal <= 1.05x)")
    if args.json:
        report = {
            "benchmark": "memory",
            "model": model,
            "device": device,
            "repeats": args.repeats,
            "runs": rows,
            "rasft_over_sft_mlx_peak": mlx_ratio,
            "rasft_over_sft_rss_peak": rss_ratio,
            "recipe": benchmark_recipe("rasft", quick=args.quick, model=args.model),
            "machine": machine_info(),
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
