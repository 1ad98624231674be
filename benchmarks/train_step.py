"""Training-step throughput: rasft vs sft vs dft steps vs mlx-lm's own tuner step, side by side.

Same random Qwen2.5-shaped model with LoRA on every layer, same batch (B x L, the first quarter
of each row is prompt), same AdamW. rasft-mlx's steps project only the response positions onto
the vocabulary (`rasft_mlx/models/response_logits.py`; here 3/4 of each row); mlx-lm's projects every
position and masks the prompt afterwards, as does "sft, all positions projected" (the same
step with a window as long as the inputs). rasft uses cached reference log-probs (the design here);
`asft` runs a reference forward inside every step (the authors' design, for comparison).
mlx-lm's step is its `tuner.trainer` compiled step with `default_loss`. Methods are timed in
interleaved rounds and the median round is reported, so load from other processes hits all alike.

    python benchmarks/train_step.py --quick               # CPU, < 5 minutes
    python benchmarks/train_step.py --device gpu          # 0.5B, B8 x L512, bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from common import SHAPES, machine_info, random_model, use_device

from rasft_mlx.data.encoding import TrainingSequence
from rasft_mlx.models.adapters import apply_adapters
from rasft_mlx.recipe.config import LoraConfig
from rasft_mlx.training.batching import collate
from rasft_mlx.training.losses import LossSettings
from rasft_mlx.training.train_step import CompiledTrainStep

MODES = ("sft", "dft", "rasft", "asft")
BUCKET_MULTIPLE = 32  # the recipes' default


def make_sequences(rows: int, length: int, vocab: int, seed: int = 0) -> list[TrainingSequence]:
    rng = np.random.default_rng(seed)
    prompt = length // 4 + 1  # the response's targets are the last 3/4 of the inputs
    sequences = []
    for row in range(rows):
        tokens = tuple(rng.integers(0, vocab, size=length + 1).tolist())
        reference = -rng.uniform(0.1, 5.0, size=length + 1 - prompt).astype(np.float32)
        sequences.append(
            TrainingSequence(f"p{row}", tokens, prompt, weight=1.0, reference_logprobs=reference)
        )
    return sequences


class RasftMlxStep:
    def __init__(self, model, mode: str, batch):
        self.step = CompiledTrainStep(model, optim.AdamW(1e-5), LossSettings(mode), grad_clip=1.0)
        self.batch = batch

    def __call__(self) -> None:
        self.step([self.batch])


class MlxLmStep:
    """mlx-lm's `tuner.trainer.train` inner step (no accumulation) with its default loss."""

    def __init__(self, model, tokens: mx.array, lengths: mx.array):
        from mlx_lm.tuner.trainer import default_loss

        optimizer = optim.AdamW(1e-5)
        loss_value_and_grad = nn.value_and_grad(model, default_loss)
        state = [model.state, optimizer.state, mx.random.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def step(batch, lengths):
            (lvalue, toks), grad = loss_value_and_grad(model, batch, lengths)
            optimizer.update(model, grad)
            return lvalue, toks

        self.model, self.optimizer, self.state = model, optimizer, state
        self.step, self.tokens, self.lengths = step, tokens, lengths

    def __call__(self) -> None:
        lvalue, toks = self.step(self.tokens, self.lengths)
        mx.eval(self.state, lvalue, toks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes for the CPU")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None)
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    device = args.device or ("cpu" if args.quick else "gpu")
    use_device(device)
    shape = args.shape or ("tiny" if args.quick else "qwen2.5-0.5b")
    dtype = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    batch_size = args.batch or (4 if args.quick else 8)
    length = args.length or (128 if args.quick else 512)
    steps = args.steps or (5 if args.quick else 10)

    model, config = random_model(shape, getattr(mx, dtype))
    apply_adapters(model, LoraConfig(rank=args.rank, scale=2.0))
    model.train()
    sequences = make_sequences(batch_size, length, config["vocab_size"])
    batch = collate(sequences, batch_size, bucket_multiple=BUCKET_MULTIPLE)
    tokens = mx.array([list(s.tokens) for s in sequences])
    lengths = mx.array([[s.prompt_length, length] for s in sequences])

    methods = {mode: RasftMlxStep(model, mode, batch) for mode in args.modes}
    if "sft" in args.modes:  # the window as long as the inputs: every position projected
        every_position = collate(sequences, batch_size, bucket_multiple=length)
        methods["sft, all positions projected"] = RasftMlxStep(model, "sft", every_position)
    methods["mlx-lm tuner"] = MlxLmStep(model, tokens, lengths)
    for method in methods.values():  # compile and warm up
        method()
        method()

    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, method in methods.items():
            started = time.perf_counter()
            for _ in range(steps):
                method()
            times[name].append((time.perf_counter() - started) / steps)

    step_tokens = batch_size * length
    sft = statistics.median(times["sft"]) if "sft" in times else None
    print(
        f"{shape} {dtype} on {device}: LoRA r{args.rank} all layers, B{batch_size} x L{length}, "
        f"{steps} steps x {args.rounds} rounds (median round)"
    )
    print(f"{'step':<30} {'ms/step':>9} {'tok/s':>10} {'vs sft':>7}")
    rows = []
    for name, samples in times.items():
        seconds = statistics.median(samples)
        ratio = sft / seconds if sft else None
        rows.append(
            {
                "step": name,
                "seconds_per_step": round(seconds, 5),
                "tokens_per_second": round(step_tokens / seconds, 1),
                "vs_sft": round(ratio, 3) if ratio else None,
                "rounds": [round(s, 5) for s in samples],
            }
        )
        vs = f"{ratio:>6.3f}x" if ratio else f"{'-':>7}"
        print(f"{name:<30} {seconds * 1000:>9.1f} {step_tokens / seconds:>10.1f} {vs}")

    if args.json:
        report = {
            "benchmark": "train_step",
            **machine_info(),
            "shape": shape,
            "dtype": dtype,
            "args": vars(args),
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
