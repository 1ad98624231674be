"""Gradient checkpointing (`training.grad_checkpoint`): peak memory and step time, with and without.

The same random Qwen2.5-shaped model with LoRA on every layer, the same B x L batch (the first
quarter of each row is prompt) and AdamW, trained by rasft-mlx's compiled step (sft and rasft
losses). Each configuration runs in its own process, so MLX's peak allocation is that
configuration's alone; the steps are timed after two warm-up steps (compilation) and the median
is reported. The issue's goal: peak memory down by at least 40 % at no more than 35 % more step
time. The gradients with and without are equal (tests/test_grad_checkpoint.py).

    python benchmarks/grad_checkpoint.py --quick          # CPU, SmolLM2-135M shape, B2 x L1024
    python benchmarks/grad_checkpoint.py --device gpu     # Qwen2.5-0.5B shape, B4 x L1024, bf16
    python benchmarks/grad_checkpoint.py --quick --type full --modes sft   # every weight trained
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
from common import random_model, use_device

from rasft_mlx.models.adapters import apply_adapters
from rasft_mlx.models.checkpointing import checkpoint_layers
from rasft_mlx.recipe.config import LoraConfig
from rasft_mlx.training.batching import collate
from rasft_mlx.training.losses import LossSettings
from rasft_mlx.training.train_step import CompiledTrainStep

MODES = ("sft", "rasft")


def measure(args: argparse.Namespace) -> dict:
    """One configuration, in this process: peak MLX memory and seconds per step."""
    from train_step import make_sequences

    use_device(args.device)
    model, config = random_model(args.shape, getattr(mx, args.dtype))
    # full: every weight trained but the embeddings and head (mlx-lm's full fine-tune), so the
    # backward computes weight gradients too: the arithmetic a recompute is measured against.
    apply_adapters(
        model, LoraConfig(type=args.type, rank=args.rank, scale=2.0, train_embeddings=False)
    )
    if args.checkpoint:
        checkpoint_layers(model)
    model.train()
    sequences = make_sequences(args.batch, args.length, config["vocab_size"])
    batch = collate(sequences, args.batch, bucket_multiple=32)
    step = CompiledTrainStep(model, optim.AdamW(1e-5), LossSettings(args.mode), grad_clip=1.0)
    for _ in range(2):
        step([batch])
    mx.eval(model.parameters())
    weights_bytes = mx.get_active_memory()
    mx.reset_peak_memory()
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step([batch])
        times.append(time.perf_counter() - started)
    return {
        "mode": args.mode,
        "grad_checkpoint": args.checkpoint,
        "peak_bytes": mx.get_peak_memory(),
        "resident_bytes": weights_bytes,
        "seconds_per_step": statistics.median(times),
        "steps": [round(t, 4) for t in times],
    }


def run_worker(args: argparse.Namespace, mode: str, checkpoint: bool) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--mode",
        mode,
        "--device",
        args.device,
        "--shape",
        args.shape,
        "--dtype",
        args.dtype,
        "--batch",
        str(args.batch),
        "--length",
        str(args.length),
        "--rank",
        str(args.rank),
        "--type",
        args.type,
        "--steps",
        str(args.steps),
    ] + (["--checkpoint"] if checkpoint else [])
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="SmolLM2-135M shape on the CPU")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None)
    parser.add_argument("--shape", default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--type", choices=("lora", "full"), default="lora", help="lora.type")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="sft", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = args.device or ("cpu" if args.quick else "gpu")
    args.shape = args.shape or ("smollm2-135m" if args.quick else "qwen2.5-0.5b")
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.batch = args.batch or (2 if args.quick else 4)
    if args.worker:
        print(json.dumps(measure(args)))
        return

    rows = []
    for mode in args.modes:  # interleaved: off, on per mode, so load hits both alike
        off = run_worker(args, mode, checkpoint=False)
        on = run_worker(args, mode, checkpoint=True)
        rows.append(
            {
                "mode": mode,
                "off": off,
                "on": on,
                "peak_reduction": 1.0 - on["peak_bytes"] / off["peak_bytes"],
                "activation_reduction": 1.0
                - (on["peak_bytes"] - on["resident_bytes"])
                / (off["peak_bytes"] - off["resident_bytes"]),
                "time_ratio": on["seconds_per_step"] / off["seconds_per_step"],
            }
        )
    trained = f"LoRA r{args.rank} all layers" if args.type == "lora" else "full fine-tune"
    print(
        f"{args.shape} {args.dtype} on {args.device}: {trained}, "
        f"B{args.batch} x L{args.length}, median of {args.steps} steps, a process each"
    )
    print(
        f"{'mode':<6} {'peak GB off':>12} {'peak GB on':>11} {'reduction':>10} "
        f"{'above weights':>14} {'s/step off':>11} {'s/step on':>10} {'time x':>7}"
    )
    for row in rows:
        print(
            f"{row['mode']:<6} {row['off']['peak_bytes'] / 1e9:>12.3f} "
            f"{row['on']['peak_bytes'] / 1e9:>11.3f} {row['peak_reduction']:>9.1%} "
            f"{-row['activation_reduction']:>13.1%} "
            f"{row['off']['seconds_per_step']:>11.2f} {row['on']['seconds_per_step']:>10.2f} "
            f"{row['time_ratio']:>6.2f}x"
        )
    print("above weights: the change in peak memory beyond the weights and optimizer state")
    print("goal: peak memory down >= 40 % at <= 1.35x the step time")
    if args.json:
        from common import machine_info

        report = {"benchmark": "grad_checkpoint", **machine_info(), "args": vars(args)}
        report["rows"] = rows
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
