"""The CPU's exp: MLX's against numpy's and a float32 polynomial, and what a faster one would buy.

MLX's CPU exp is a Cephes polynomial evaluated with `fma`; the x86 Linux wheel targets generic
x86-64, so every `fma` is a libm call. Part 1 times one exp over 2M float32 values (and SiLU's
sigmoid, attention's softmax) in MLX, in numpy, and as `poly_exp` below: a degree-7 series for
2^f in plain multiply-adds, compiled by `mx.compile` into one loop (a few ulps, not MLX's bits).
Part 2 (--passes) swaps `poly_exp` into the model family's SiLU and attention and times the
reference pass (`response_logprobs`, 1 lane and the default lanes) and a sampled refresh's decode
with and without it. Not used by rasft-mlx: a faster exp changes the arithmetic, and part 2 says
what it would save (BENCHMARKS.md, "The CPU's exp").

    python benchmarks/cpu_exp.py             # part 1, seconds
    python benchmarks/cpu_exp.py --passes    # and part 2, ~15 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from common import best_of, machine_info

ROOT = Path(__file__).resolve().parents[1]
LOG2_E = 1.4426950408889634
SERIES = tuple(math.log(2) ** k / math.factorial(k) for k in range(8))


def _poly_exp(x):
    scaled = mx.clip(x * LOG2_E, -130.0, 130.0)
    whole = mx.minimum(mx.floor(scaled + 0.5), 127.0)
    fraction = scaled - whole
    series = SERIES[-1]
    for coefficient in reversed(SERIES[:-1]):
        series = series * fraction + coefficient
    power = mx.view(mx.left_shift(whole.astype(mx.int32) + 127, 23), mx.float32)
    result = mx.where(x < -87.33654, 0.0, series * power)
    return mx.where(x > 88.72283, math.inf, result)


poly_exp = mx.compile(_poly_exp)


@mx.compile
def poly_swiglu(gate, x):
    return gate / (1.0 + _poly_exp(-gate)) * x


@mx.compile
def _normalised(scores, peak):
    weights = _poly_exp(scores - peak)
    return weights / weights.sum(axis=-1, keepdims=True)


def poly_attention(queries, keys, values, cache=None, scale=1.0, mask=None, sinks=None):
    batch, q_heads, length, dim = queries.shape
    kv_heads, keys_length = keys.shape[1], keys.shape[2]
    group = q_heads // kv_heads
    grouped = (scale * queries).reshape(batch, kv_heads, group, length, dim)
    scores = grouped @ keys[:, :, None].swapaxes(-1, -2)
    if isinstance(mask, str):
        offset = keys_length - length
        mask = mx.arange(offset, offset + length)[:, None] >= mx.arange(keys_length)[None]
    if mask is not None:
        if mask.ndim == 4:
            mask = mask[:, :, None] if mask.shape[1] == 1 else mask.reshape(scores.shape)
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    weights = _normalised(scores, mx.max(scores, axis=-1, keepdims=True))
    return (weights @ values[:, :, None]).reshape(batch, q_heads, length, dim)


@contextmanager
def poly_math(model, enabled: bool):
    module = sys.modules[type(model).__module__]
    saved = {"swiglu": module.swiglu, "sdpa": module.scaled_dot_product_attention}
    if enabled:
        module.swiglu, module.scaled_dot_product_attention = poly_swiglu, poly_attention
    try:
        yield
    finally:
        module.swiglu, module.scaled_dot_product_attention = saved["swiglu"], saved["sdpa"]


def ops_part() -> list[dict]:
    values = mx.random.normal((1280, 1536)) * 10
    other = mx.random.normal((1280, 1536))
    scores = mx.random.normal((8, 9, 160, 160))
    host = np.array(values)
    mx.eval(values, other, scores)
    reference = np.exp(host.astype(np.float64))
    finite = (reference > 1.2e-38) & (reference < 3.0e38)

    def error(result) -> float:
        got = np.array(result).astype(np.float64)[finite]
        return float((np.abs(got - reference[finite]) / reference[finite]).max())

    rows = [
        ("exp, MLX", lambda: mx.eval(mx.exp(values)), error(mx.exp(values))),
        ("exp, numpy", lambda: np.exp(host), error(np.exp(host))),
        ("exp, poly_exp", lambda: mx.eval(poly_exp(values)), error(poly_exp(values))),
        ("multiply, MLX", lambda: mx.eval(values * other), None),
        ("silu(g) * x, MLX", lambda: mx.eval(nn.silu(values) * other), None),
        ("silu(g) * x, poly", lambda: mx.eval(poly_swiglu(values, other)), None),
        ("softmax 8x9x160x160, MLX", lambda: mx.eval(mx.softmax(scores, axis=-1)), None),
        (
            "softmax 8x9x160x160, poly",
            lambda: mx.eval(_normalised(scores, scores.max(axis=-1, keepdims=True))),
            None,
        ),
    ]
    out = []
    print(f"{'op (2M float32 values)':<28} {'ms':>7} {'ns/value':>9} {'max rel err':>12}")
    for name, function, err in rows:
        seconds = best_of(function, 7)
        count = scores.size if "softmax" in name else values.size
        out.append({"op": name, "ms": round(seconds * 1e3, 2), "max_rel_error": err})
        shown = f"{err:.1e}" if err is not None else "-"
        print(f"{name:<28} {seconds * 1e3:>7.1f} {seconds / count * 1e9:>9.2f} {shown:>12}")
    return out


def passes_part(rounds: int, report: dict, write) -> list[dict]:
    from reference_pass import demo_sequences

    from rasft_mlx.generation.completions import SamplingSettings, generate_completions
    from rasft_mlx.models.adapters import apply_adapters, reference_policy
    from rasft_mlx.models.loading import load_model
    from rasft_mlx.rasft.reference import response_logprobs
    from rasft_mlx.recipe.config import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    loaded = load_model(recipe.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    apply_adapters(model, recipe.lora)
    sequences = demo_sequences(recipe, tokenizer, 92)
    batch = recipe.training.batch_size, recipe.training.bucket_multiple
    prompts = [list(s.tokens[: s.prompt_length]) for s in sequences[:48] for _ in range(4)]
    sampling = SamplingSettings(96, temperature=1.0, top_p=0.95, repetition_penalty=1.1)
    tasks = {
        "reference pass, 92 sequences, 1 lane": lambda: response_logprobs(
            model, sequences, *batch, lanes=1
        ),
        "reference pass, 92 sequences, lanes": lambda: response_logprobs(model, sequences, *batch),
        "refresh decode, 48 x 4 samples": lambda: generate_completions(
            model, tokenizer, prompts, sampling, seed=0
        ),
    }
    out = []
    print(f"\n{'pass':<40} {'MLX exp s':>10} {'poly s':>8} {'speedup':>8}")
    for name, task in tasks.items():
        times = {False: [], True: []}
        context = reference_policy(model) if name.startswith("reference") else poly_math(model, 0)
        with context:
            for enabled in (False, True):  # warm-up: kernels compiled
                with poly_math(model, enabled):
                    task()
            for _ in range(rounds):
                for enabled in (False, True):
                    with poly_math(model, enabled):
                        started = time.perf_counter()
                        task()
                        times[enabled].append(time.perf_counter() - started)
        plain, poly = min(times[False]), min(times[True])
        out.append({"pass": name, "mlx_exp_s": round(plain, 2), "poly_exp_s": round(poly, 2)})
        print(f"{name:<40} {plain:>10.1f} {poly:>8.1f} {plain / poly:>7.2f}x", flush=True)
        write(report | {"passes": out})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passes", action="store_true", help="also part 2 (~15 minutes)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "cpu_exp.json"))
    args = parser.parse_args()
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(report: dict) -> None:  # after each part, so a cut-short run keeps what it measured
        path.write_text(json.dumps(report, indent=2) + "\n")

    report = {"benchmark": "cpu_exp", **machine_info(), "ops": ops_part()}
    write(report)
    if args.passes:
        report["passes"] = passes_part(args.rounds, report, write)


if __name__ == "__main__":
    main()
