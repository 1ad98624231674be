"""One GPU check in one JSON: train-step ratio, rollouts, peak memory, 4-bit QLoRA, full fine-tune.

Each part runs in its own process under its own timeout (its peak memory is its own; a slow part
cannot eat the others' time) and the JSON is rewritten after every part. Random Qwen2.5-0.5B-shaped
bf16 weights (the GPU machine is offline); `--smoke`: tiny float32 shapes on the CPU. The parts,
their sizes and timeouts are in PARTS and in BENCHMARKS.md ("GPU check").

    source .gpu/b/activate.sh && bash benchmarks/gpu_check.sh          # GPU, < 8 minutes
    python benchmarks/gpu_check.py --smoke --json gpu_check_smoke.json  # CPU, 1-2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
from common import machine_info, random_model, use_device

RESULT_PREFIX = "GPU-CHECK-RESULT "
PROFILES = {
    "gpu": dict(device="gpu", shape="qwen2.5-0.5b", dtype="bfloat16", budget_s=400),
    "smoke": dict(device="cpu", shape="tiny", dtype="float32", budget_s=170),
}
GIB = 1 << 30


@dataclass(frozen=True)
class Part:
    name: str
    gpu: dict  # sizes and timeout_s on the GPU
    smoke: dict  # the same on the CPU


TRAIN_GPU = dict(batch=8, length=512, rank=16, steps=5)
TRAIN_SMOKE = dict(batch=2, length=32, rank=4, steps=1)
MEMORY_GPU = dict(batch=4, length=1024, rank=16, steps=3, timeout_s=40)
MEMORY_SMOKE = dict(batch=2, length=128, rank=4, steps=2)
PARTS = [
    Part("train_step", {**TRAIN_GPU, "rounds": 3, "timeout_s": 80}, {**TRAIN_SMOKE, "rounds": 2}),
    Part(
        "rollouts",
        dict(prompts=[16, 64], k=4, prompt_len=128, new_tokens=128, timeout_s=90),
        dict(prompts=[4], k=2, prompt_len=16, new_tokens=8),
    ),
    Part("memory_sft", {**MEMORY_GPU, "mode": "sft"}, {**MEMORY_SMOKE, "mode": "sft"}),
    Part("memory_rasft", {**MEMORY_GPU, "mode": "rasft"}, {**MEMORY_SMOKE, "mode": "rasft"}),
    Part(
        "memory_rasft_checkpoint",
        {**MEMORY_GPU, "mode": "rasft", "checkpoint": True},
        {**MEMORY_SMOKE, "mode": "rasft", "checkpoint": True},
    ),
    Part("qlora_4bit", {**TRAIN_GPU, "bits": 4, "timeout_s": 50}, {**TRAIN_SMOKE, "bits": 4}),
    Part("full_finetune", {**TRAIN_GPU, "timeout_s": 60}, TRAIN_SMOKE),
]
SMOKE_TIMEOUT_S = 60


# ---- the parts, each run in a worker process --------------------------------------------------


def training_batch(config: dict, sizes: dict):
    from train_step import make_sequences

    from rasft_mlx.training.batching import collate

    sequences = make_sequences(sizes["batch"], sizes["length"], config["vocab_size"])
    return sequences, collate(sequences, sizes["batch"], bucket_multiple=32)


def median_step_seconds(methods: dict, steps: int, rounds: int) -> dict[str, float]:
    """Median over interleaved rounds of each method's mean step time (two warm-up steps)."""
    for method in methods.values():
        method()
        method()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, method in methods.items():
            started = time.perf_counter()
            for _ in range(steps):
                method()
            times[name].append((time.perf_counter() - started) / steps)
    return {name: statistics.median(samples) for name, samples in times.items()}


def step_report(seconds: dict[str, float], tokens_per_step: int) -> dict:
    report = {
        name: {"ms_per_step": round(s * 1e3, 2), "tokens_per_second": round(tokens_per_step / s)}
        for name, s in seconds.items()
    }
    if "sft" in seconds and "rasft" in seconds:
        report["rasft_over_sft_time"] = round(seconds["rasft"] / seconds["sft"], 3)
    return report


def run_train_step(profile: dict, sizes: dict) -> dict:
    from train_step import MlxLmStep, RasftMlxStep

    from rasft_mlx.models.adapters import apply_adapters
    from rasft_mlx.recipe.config import LoraConfig

    model, config = random_model(profile["shape"], getattr(mx, profile["dtype"]))
    apply_adapters(model, LoraConfig(rank=sizes["rank"], scale=2.0))
    model.train()
    sequences, batch = training_batch(config, sizes)
    methods = {mode: RasftMlxStep(model, mode, batch) for mode in ("sft", "rasft")}
    tokens = mx.array([list(s.tokens) for s in sequences])
    lengths = mx.array([[s.prompt_length, sizes["length"]] for s in sequences])
    methods["mlx-lm tuner"] = MlxLmStep(model, tokens, lengths)
    seconds = median_step_seconds(methods, sizes["steps"], sizes["rounds"])
    return step_report(seconds, sizes["batch"] * sizes["length"])


def run_rollouts(profile: dict, sizes: dict) -> dict:
    from rollouts import random_prompts, run_batch_generate, run_engine

    model, config = random_model(profile["shape"], getattr(mx, profile["dtype"]))
    sampler = SimpleNamespace(
        new_tokens=sizes["new_tokens"],
        temperature=0.9,
        top_p=0.95,
        repetition_penalty=1.0,
        max_rows=0,
    )
    stop = config["vocab_size"]  # never sampled: every method generates the same token count
    k = sizes["k"]
    warm = random_prompts(2, sizes["prompt_len"], stop, seed=99)
    run_engine(model, warm, 2, sampler, stop)
    run_batch_generate(model, warm, 2, sampler, stop, 4, 4)
    rows = []
    for count in sizes["prompts"]:
        prompts = random_prompts(count, sizes["prompt_len"], stop, seed=count)
        sequences = count * k
        same = (model, prompts, k, sampler, stop)
        methods = {  # batch_generate at its best (one completion batch) and at its defaults
            "engine": partial(run_engine, *same),
            "batch_generate best": partial(
                run_batch_generate, *same, sequences, min(sequences, 64)
            ),
            "batch_generate defaults": partial(run_batch_generate, *same, 32, 8),
        }
        row = {"prompts": count, "sequences": sequences}
        for name, method in methods.items():
            tokens, seconds, _ = method()
            row[name] = round(tokens / seconds, 1)
        row["engine_over_best"] = round(row["engine"] / row["batch_generate best"], 3)
        row["engine_over_defaults"] = round(row["engine"] / row["batch_generate defaults"], 3)
        rows.append(row)
    return {"tokens_per_second": rows}


def run_memory(profile: dict, sizes: dict) -> dict:
    from grad_checkpoint import measure

    args = SimpleNamespace(**profile, **sizes)
    args.checkpoint = sizes.get("checkpoint", False)
    result = measure(args)
    return {
        "mode": result["mode"],
        "grad_checkpoint": result["grad_checkpoint"],
        "peak_gb": round(result["peak_bytes"] / GIB, 3),
        "resident_gb": round(result["resident_bytes"] / GIB, 3),
        "ms_per_step": round(result["seconds_per_step"] * 1e3, 2),
    }


def run_adapted_steps(profile: dict, sizes: dict, lora_type: str, bits: int | None) -> dict:
    """sft and rasft steps on a model that trains as `lora_type` asks, its base quantized to
    `bits` (kept quantized, as `model.dequantize: never` does) or not."""
    import mlx.nn as nn
    from train_step import RasftMlxStep

    from rasft_mlx.models.adapters import apply_adapters
    from rasft_mlx.recipe.config import LoraConfig

    model, config = random_model(profile["shape"], getattr(mx, profile["dtype"]))
    if bits:
        nn.quantize(model, group_size=64, bits=bits)
        mx.eval(model.parameters())
    apply_adapters(model, LoraConfig(type=lora_type, rank=sizes["rank"], scale=2.0))
    model.train()
    _, batch = training_batch(config, sizes)
    methods = {mode: RasftMlxStep(model, mode, batch) for mode in ("sft", "rasft")}
    seconds = median_step_seconds(methods, sizes["steps"], rounds=1)
    report = step_report(seconds, sizes["batch"] * sizes["length"])
    trainable = sum(v.size for _, v in nn.utils.tree_flatten(model.trainable_parameters()))
    report["trained_parameters"] = int(trainable)
    return report


WORKERS = {
    "train_step": run_train_step,
    "rollouts": run_rollouts,
    "memory_sft": run_memory,
    "memory_rasft": run_memory,
    "memory_rasft_checkpoint": run_memory,
    "qlora_4bit": lambda p, s: run_adapted_steps(p, s, "lora", s["bits"]),
    "full_finetune": lambda p, s: run_adapted_steps(p, s, "full", None),
}


def worker(name: str, profile: dict, sizes: dict) -> None:
    use_device(profile["device"])
    started = time.perf_counter()
    result = WORKERS[name](profile, sizes)
    result["part_seconds"] = round(time.perf_counter() - started, 2)
    result["process_peak_gb"] = round(mx.get_peak_memory() / GIB, 3)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---- the driver ---------------------------------------------------------------------------------


def part_sizes(part: Part, profile_name: str) -> tuple[dict, float]:
    """The part's sizes in this profile, and its planned timeout."""
    sizes = dict(part.gpu if profile_name == "gpu" else part.smoke)
    return sizes, sizes.pop("timeout_s", SMOKE_TIMEOUT_S)


def run_part(part: Part, profile_name: str, timeout_s: float) -> dict:
    sizes, _ = part_sizes(part, profile_name)
    command = [sys.executable, __file__, "--worker", part.name, "--profile", profile_name]
    entry = {"sizes": sizes, "timeout_s": round(timeout_s, 1)}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode(errors="replace") if expired.stderr else ""
        entry.update(status="timeout", error=stderr[-2000:])
    else:
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if done.returncode == 0 and lines:
            entry.update(status="ok", result=json.loads(lines[-1][len(RESULT_PREFIX) :]))
        else:
            entry.update(status="failed", exit_code=done.returncode, error=done.stderr[-2000:])
    entry["wall_seconds"] = round(time.perf_counter() - started, 2)
    return entry


def headline(name: str, entry: dict) -> str:
    """The part's main figures, on one line."""
    result = entry.get("result")
    if result is None:
        lines = (entry.get("error") or "").strip().splitlines()
        return lines[-1][:80] if lines else ""
    if name == "rollouts":
        return "; ".join(
            f"{r['sequences']} seqs: engine {r['engine']:,.0f} tok/s, "
            f"{r['engine_over_best']:.2f}x best, {r['engine_over_defaults']:.2f}x defaults"
            for r in result["tokens_per_second"]
        )
    if name.startswith("memory"):
        return f"peak {result['peak_gb']:.3f} GiB, {result['ms_per_step']:,.1f} ms/step"
    steps = [
        f"{method} {figures['ms_per_step']:,.1f} ms"
        for method, figures in result.items()
        if isinstance(figures, dict)
    ]
    ratio = result.get("rasft_over_sft_time")
    return ", ".join(steps) + (f"; rasft/sft {ratio:.3f}x" if ratio else "")


def comparisons(parts: dict) -> dict:
    """Figures across parts: rasft vs sft peak memory, and what gradient checkpointing saves."""
    peak = {
        name: entry["result"]["peak_gb"]
        for name, entry in parts.items()
        if name.startswith("memory") and entry.get("status") == "ok"
    }
    out = {}
    if {"memory_sft", "memory_rasft"} <= set(peak):
        out["rasft_over_sft_peak"] = round(peak["memory_rasft"] / peak["memory_sft"], 3)
    if {"memory_rasft", "memory_rasft_checkpoint"} <= set(peak):
        saved = 1 - peak["memory_rasft_checkpoint"] / peak["memory_rasft"]
        out["grad_checkpoint_peak_reduction"] = round(saved, 3)
    return out


def write_report(path: Path | None, report: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, path)


def drive(args: argparse.Namespace) -> dict:
    profile = PROFILES[args.profile]
    budget_s = args.budget if args.budget is not None else profile["budget_s"]
    use_device(profile["device"])
    report = {
        "benchmark": "gpu_check",
        "profile": args.profile,
        **profile,
        "budget_s": budget_s,
        "complete": False,
        "parts": {},
        "machine": machine_info(),
    }
    selected = [p for p in PARTS if not args.parts or p.name in args.parts]
    deadline = time.monotonic() + budget_s
    json_path = Path(args.json) if args.json else None
    try:
        for part in selected:
            timeout_s = min(part_sizes(part, args.profile)[1], deadline - time.monotonic())
            if timeout_s < 5:
                report["parts"][part.name] = {"status": "skipped", "error": "budget spent"}
                continue
            print(f"{part.name}: running (timeout {timeout_s:.0f} s)", flush=True)
            report["parts"][part.name] = {"status": "stopped", "timeout_s": round(timeout_s, 1)}
            report["parts"][part.name] = entry = run_part(part, args.profile, timeout_s)
            print(f"{part.name}: {entry['status']} in {entry['wall_seconds']:.1f} s", flush=True)
            report["comparisons"] = comparisons(report["parts"])
            write_report(json_path, report)
        report["complete"] = True
    finally:
        write_report(json_path, report)
    return report


def print_table(report: dict) -> None:
    print(
        f"\n{report['shape']} {report['dtype']} on {report['device']} "
        f"({report['machine'].get('device')}), budget {report['budget_s']} s"
    )
    print(f"{'part':<24} {'status':<10} {'wall s':>7} {'peak GiB':>9}  figures")
    for name, entry in report["parts"].items():
        result = entry.get("result", {})
        peak = result.get("peak_gb", result.get("process_peak_gb"))
        peak_text = f"{peak:>9.3f}" if peak is not None else f"{'-':>9}"
        wall = entry.get("wall_seconds")
        wall_text = f"{wall:>7.1f}" if wall is not None else f"{'-':>7}"
        print(f"{name:<24} {entry['status']:<10} {wall_text} {peak_text}  {headline(name, entry)}")
    for key, value in report.get("comparisons", {}).items():
        print(f"{key}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    parser.add_argument("--smoke", action="store_true", help="same as --profile smoke (CPU)")
    parser.add_argument("--parts", nargs="+", choices=[p.name for p in PARTS], default=None)
    parser.add_argument("--budget", type=float, default=None, help="seconds for all the parts")
    parser.add_argument("--json", default=None, help="rewritten after every part")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.profile = "smoke"
    if args.worker:
        part = next(p for p in PARTS if p.name == args.worker)
        worker(part.name, PROFILES[args.profile], part_sizes(part, args.profile)[0])
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the JSON is written on the way out
    print_table(drive(args))


if __name__ == "__main__":
    main()
