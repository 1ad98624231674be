"""Rollout throughput: rasft-mlx's rollout engine vs `mlx_lm.batch_generate`, side by side.

K samples of each prompt, same sampler settings, on a random Qwen2.5-shaped model (tiny shapes
with --quick) or, with --model, a real one on synthetic-task prompts in its chat template (a real
model's peaked next-token distributions are what the engine's candidate top-p is for; random
weights give nearly flat ones, where it falls back to the full sort). "engine (full sort)" is the
engine with mlx-lm's full-vocabulary top-p, to show that part on its own. batch_generate is run with its defaults (completion batch 32, prefill batch 8) and
at its best settings for the batch (completion batch = all sequences, large prefill batch). No
sample stops early (the stop token is outside the vocabulary), so every method generates the same
number of tokens; tok/s is generated tokens over wall time, prefill included.

    python benchmarks/rollouts.py --quick                  # CPU, < 5 minutes
    python benchmarks/rollouts.py --device gpu             # Qwen2.5-0.5B shapes
    python benchmarks/rollouts.py --quick --model builtin:smollm2-135m --prompts 8 24
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import numpy as np
from common import SHAPES, machine_info, random_model, use_device

from rasft_mlx.generation.engine import EngineSettings, generate_rows


class NullTokenizer:
    """What batch_generate needs from a tokenizer: stop ids that never occur, and a decode."""

    def __init__(self, stop: int):
        self.eos_token_ids = {stop}

    def decode(self, ids) -> str:
        return ""


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Prompts of 3/4 to all of `length` tokens (mixed lengths exercise padding)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, 3 * length // 4), length + 1, size=count)
    return [rng.integers(0, vocab, size=int(n)).tolist() for n in lengths]


def chat_prompts(tokenizer, count: int, seed: int) -> list[list[int]]:
    """Synthetic word problems in the model's chat template, as the rollouts of a run see them."""
    from rasft_mlx.data.encoding import encode_prompt
    from rasft_mlx.data.synthetic import generate_problems
    from rasft_mlx.recipe.config import DEFAULT_SYSTEM_PROMPT

    problems = generate_problems(count, seed=seed, min_level=1, max_level=2)
    return [encode_prompt(tokenizer, p.question, DEFAULT_SYSTEM_PROMPT) for p in problems]


def run_engine(model, prompts, k, args, stop, candidates=None):
    settings = EngineSettings(
        max_new_tokens=args.new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        max_rows=args.max_rows or len(prompts) * k,
        top_p_candidates=candidates,
    )
    started = time.perf_counter()
    results, stats = generate_rows(model, prompts, k, settings, [stop], seed=0)
    seconds = time.perf_counter() - started
    tokens = sum(len(s.token_ids) for r in results for s in r)
    return tokens, seconds, {"prefill_s": round(stats.prefill_seconds, 3)}


def run_batch_generate(model, prompts, k, args, stop, completion_batch, prefill_batch):
    from mlx_lm.generate import batch_generate
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    repeated = [p for p in prompts for _ in range(k)]
    processors = None
    if args.repetition_penalty != 1.0:
        processors = make_logits_processors(repetition_penalty=args.repetition_penalty)
    mx.random.seed(0)
    started = time.perf_counter()
    response = batch_generate(
        model,
        NullTokenizer(stop),
        repeated,
        max_tokens=args.new_tokens,
        sampler=make_sampler(temp=args.temperature, top_p=args.top_p),
        logits_processors=processors,
        completion_batch_size=completion_batch,
        prefill_batch_size=prefill_batch,
        return_token_ids=True,
    )
    seconds = time.perf_counter() - started
    tokens = sum(len(ids) for ids in response.token_ids)
    return tokens, seconds, {"completion_batch": completion_batch, "prefill_batch": prefill_batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes for the CPU")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None)
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None)
    parser.add_argument("--model", default=None, help="a real model (path, Hub id, builtin:NAME)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--prompts", type=int, nargs="+", default=None, help="batch sizes")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--max-rows", type=int, default=0, help="engine batch cap (0 = all)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds (median)")
    parser.add_argument(
        "--defaults-up-to", type=int, default=None, help="run batch_generate's defaults up to here"
    )
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    device = args.device or ("cpu" if args.quick else "gpu")
    use_device(device)
    shape = args.shape or ("tiny" if args.quick else "qwen2.5-0.5b")
    dtype = args.dtype or "float32"
    args.prompt_len = args.prompt_len or (32 if args.quick else 128)
    args.new_tokens = args.new_tokens or (32 if args.quick else 128)
    batch_sizes = args.prompts or ([4, 16] if args.quick else [16, 64, 256])
    defaults_up_to = args.defaults_up_to or (16 if args.quick else 64)

    if args.model:
        from rasft_mlx.models.loading import load_model
        from rasft_mlx.recipe.config import ModelConfig

        loaded = load_model(ModelConfig(path=args.model, dtype=dtype))
        model, tokenizer, shape = loaded.model, loaded.tokenizer, args.model
        vocab = model.args.vocab_size

        def make_prompts(count: int, seed: int) -> list[list[int]]:
            return chat_prompts(tokenizer, count, seed)
    else:
        model, config = random_model(shape, getattr(mx, dtype))
        vocab = config["vocab_size"]

        def make_prompts(count: int, seed: int) -> list[list[int]]:
            return random_prompts(count, args.prompt_len, vocab, seed)

    stop = vocab  # never sampled: every method generates the same token count
    warm = make_prompts(2, seed=99)
    run_engine(model, warm, 2, args, stop)
    run_batch_generate(model, warm, 2, args, stop, 4, 4)

    rows = []
    print(
        f"{shape} {dtype} on {device}: K={args.k}, prompts of <= {args.prompt_len} tokens, "
        f"{args.new_tokens} new tokens, T={args.temperature} top-p={args.top_p} "
        f"rep={args.repetition_penalty}"
    )
    header = f"{'prompts':>7} {'seqs':>5} {'method':<28} {'tokens':>7} {'seconds':>8} {'tok/s':>9}"
    print(header + f" {'vs best':>8} {'vs dflt':>8}")
    for count in batch_sizes:
        prompts = make_prompts(count, seed=count)
        sequences = count * args.k
        methods = [("engine", partial(run_engine, model, prompts, args.k, args, stop))]
        if 0 < args.top_p < 1 and args.temperature > 0:
            methods.append(
                ("engine (full sort)", partial(run_engine, model, prompts, args.k, args, stop, 0))
            )
        best = sequences, min(sequences, 64)
        methods.append(
            (
                f"batch_generate best ({best[0]}/{best[1]})",
                partial(run_batch_generate, model, prompts, args.k, args, stop, *best),
            )
        )
        if count <= defaults_up_to:
            methods.append(
                (
                    "batch_generate defaults",
                    partial(run_batch_generate, model, prompts, args.k, args, stop, 32, 8),
                )
            )
        runs: dict[str, list] = {name: [] for name, _ in methods}
        for _ in range(args.repeats):  # interleaved, so drifting load hits every method alike
            for name, run in methods:
                runs[name].append(run())
        measured = {}
        for name, _ in methods:
            tokens, seconds, extra = sorted(runs[name], key=lambda r: r[1])[len(runs[name]) // 2]
            measured[name] = tokens / seconds
            rows.append(
                {
                    "prompts": count,
                    "sequences": sequences,
                    "method": name,
                    "tokens": tokens,
                    "seconds": round(seconds, 3),
                    "tokens_per_second": round(tokens / seconds, 1),
                    **extra,
                }
            )
        best_rate = measured[next(name for name, _ in methods if name.startswith("batch_g"))]
        default_rate = measured.get("batch_generate defaults")
        for row in rows[-len(methods) :]:
            rate = row["tokens_per_second"]
            row["vs_best"] = round(rate / best_rate, 2)
            row["vs_defaults"] = round(rate / default_rate, 2) if default_rate else None
            vs_default = f"{row['vs_defaults']:>7.2f}x" if default_rate else f"{'-':>8}"
            print(
                f"{count:>7} {sequences:>5} {row['method']:<28} {row['tokens']:>7} "
                f"{row['seconds']:>8.2f} {rate:>9.1f} {row['vs_best']:>7.2f}x {vs_default}"
            )

    if args.json:
        report = {
            "benchmark": "rollouts",
            **machine_info(),
            "shape": shape,
            "dtype": dtype,
            "args": vars(args),
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
