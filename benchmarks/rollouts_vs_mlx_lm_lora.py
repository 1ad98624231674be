"""Rollouts head to head: rasft-mlx's rollout engine vs mlx-lm-lora's GRPO generation.

The same prompts, K samples each, the same sampler (temperature 0.9, top-p 0.95; no top-k, min-p
or repetition penalty) and the same number of new tokens, timed side by side in one process, in
interleaved rounds. rasft-mlx goes through `generate_completions` with the sampling settings a
run's rollouts use (`rasft/rollouts.py`, `RolloutConfig` defaults but repetition penalty 1.0).
mlx-lm-lora is not reimplemented: its own `generate_grpo` (`mlx_lm_lora/trainer/grpo_trainer.py`,
the function its GRPO training step calls for completions) is imported from each wheel given
with --mlx-lm-lora and called as `train_grpo` calls it, on this env's mlx-lm, with batch_size =
all the prompts (one GRPO step's batch) and no end-of-answer stop string. Versions differ:
3.x calls `mlx_lm.batch_generate` on the prompts repeated K times (no prompt cache; batch_generate's
default completion batch 32 / prefill batch 8); 5.x prefills each prompt once and forks that
cache for its K samples, then runs mlx-lm's `BatchGenerator` with at most batch_size (= prompts)
sequences decoding together.

Equal work: no sample stops early (every tokenizer's EOS set is replaced by one id outside the
vocabulary), so every method generates prompts x K x new-tokens tokens; tok/s is those tokens
over wall time, prefill and decoding of the texts included.

    pip download mlx-lm-lora==5.10.2 mlx-lm-lora==3.1.3 --no-deps -d /tmp/mlxlora   # wheels
    python benchmarks/rollouts_vs_mlx_lm_lora.py --mlx-lm-lora /tmp/mlxlora/*.whl --tiny
    python benchmarks/rollouts_vs_mlx_lm_lora.py --mlx-lm-lora /tmp/mlxlora/*.whl \\
        --prompts 8 16 --k 4 --new-tokens 32 --json benchmarks/results/rollouts_vs_mlx_lm_lora.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import types
import zipfile
from pathlib import Path

import mlx.core as mx
from common import machine_info, random_model, use_device
from rollouts import chat_prompts, random_prompts

from rasft_mlx.generation.completions import generate_completions
from rasft_mlx.rasft.rollouts import sampling_settings
from rasft_mlx.recipe.config import RolloutConfig

RASFT = "rasft-mlx engine"


class NeverStopTokenizer:
    """The model's tokenizer with its EOS set replaced by an id no model can sample."""

    def __init__(self, tokenizer, stop_id: int):
        self._tokenizer = tokenizer
        self.eos_token_ids = {stop_id}
        self.eos_token_id = stop_id

    def decode(self, ids, **kwargs) -> str:
        return self._tokenizer.decode(list(ids), **kwargs) if self._tokenizer else ""

    def encode(self, text, **kwargs) -> list[int]:
        return self._tokenizer.encode(text, **kwargs) if self._tokenizer else []


def import_generate_grpo(source: Path, alias: str, unpack_into: Path):
    """`generate_grpo` and the version of the mlx-lm-lora in `source` (a wheel or an unpacked
    one), imported under `alias` so that several versions sit side by side. The package's
    `__init__` is skipped; only the trainer modules and what they import are loaded."""
    if source.suffix == ".whl":
        root = unpack_into / alias
        with zipfile.ZipFile(source) as wheel:
            wheel.extractall(root)
    else:
        root = source
    package_dir = root / "mlx_lm_lora"
    if not package_dir.is_dir():
        raise SystemExit(f"{source}: no mlx_lm_lora package in it")
    package = types.ModuleType(alias)
    package.__path__ = [str(package_dir)]
    sys.modules[alias] = package
    version = importlib.import_module(f"{alias}._version").__version__
    trainer = importlib.import_module(f"{alias}.trainer.grpo_trainer")
    return version, trainer.generate_grpo


def run_rasft(model, tokenizer, prompts, args) -> int:
    config = RolloutConfig(
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=1.0,
        max_new_tokens=args.new_tokens,
    )
    repeated = [prompt for prompt in prompts for _ in range(config.k)]
    completions, _ = generate_completions(
        model, tokenizer, repeated, sampling_settings(config), seed=0, label="rollouts"
    )
    return sum(len(c.token_ids) for c in completions)


def run_mlx_lm_lora(generate_grpo, returns_ids, model, tokenizer, prompts, args) -> int | None:
    """One GRPO step's generation; its token count where it returns the sampled ids (5.x; 3.x
    re-encodes the decoded texts, which need not give back the same tokens)."""
    mx.random.seed(0)
    completions, _, _ = generate_grpo(
        model=model,
        tokenizer=tokenizer,
        prompt_tokens=[list(p) for p in prompts],
        max_tokens=args.new_tokens,
        group_size=args.k,
        batch_size=args.lora_batch_size or len(prompts),
        end_token="",
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=0,
        min_p=0.0,
    )
    mx.eval(completions)
    return sum(c.size for c in completions) if returns_ids else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--mlx-lm-lora", type=Path, nargs="+", required=True, help="mlx-lm-lora wheels or dirs"
    )
    parser.add_argument("--tiny", action="store_true", help="random tiny Qwen2 weights")
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--prompts", type=int, nargs="+", default=None)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--prompt-len", type=int, default=32, help="--tiny's prompt length")
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument(
        "--lora-batch-size", type=int, default=0, help="mlx-lm-lora batch_size (0 = all prompts)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    use_device(args.device)
    batch_sizes = args.prompts or ([4, 8] if args.tiny else [8, 16])
    args.new_tokens = args.new_tokens or (16 if args.tiny else 32)

    if args.tiny:
        model, config = random_model("tiny", mx.float32)
        model_name, vocab, tokenizer = "tiny (random)", config["vocab_size"], None

        def make_prompts(count: int, seed: int) -> list[list[int]]:
            return random_prompts(count, args.prompt_len, vocab, seed)
    else:
        from rasft_mlx.models.loading import load_model
        from rasft_mlx.recipe.config import ModelConfig

        loaded = load_model(ModelConfig(path=args.model, dtype="float32"))
        model, tokenizer = loaded.model, loaded.tokenizer
        model_name, vocab = args.model, model.args.vocab_size

        def make_prompts(count: int, seed: int) -> list[list[int]]:
            return chat_prompts(tokenizer, count, seed)

    never_stop = NeverStopTokenizer(tokenizer, stop_id=vocab)
    with tempfile.TemporaryDirectory() as unpacked:
        methods = {RASFT: lambda prompts: run_rasft(model, never_stop, prompts, args)}
        for index, source in enumerate(args.mlx_lm_lora):
            version, generate_grpo = import_generate_grpo(
                source, f"mlx_lm_lora_{index}", Path(unpacked)
            )
            returns_ids = int(version.split(".")[0]) >= 5

            def run(prompts, generate_grpo=generate_grpo, returns_ids=returns_ids):
                return run_mlx_lm_lora(generate_grpo, returns_ids, model, never_stop, prompts, args)

            methods[f"mlx-lm-lora {version}"] = run

        started = time.perf_counter()
        timed_tokens, args.new_tokens = args.new_tokens, 4  # a short warm-up
        warm_prompts = make_prompts(2, seed=99)
        for run in methods.values():
            run(warm_prompts)
        args.new_tokens = timed_tokens

        print(
            f"{model_name} float32 on {args.device}: K={args.k}, {args.new_tokens} new tokens, "
            f"T={args.temperature} top-p={args.top_p}, no early stops"
        )
        names = list(methods)
        print(
            f"{'prompts':>7} {'K':>2} {'tokens':>6} "
            + " ".join(f"{name + ' tok/s':>25}" for name in names)
            + " "
            + " ".join(f"{'vs ' + name[len('mlx-lm-lora ') :]:>9}" for name in names[1:])
        )
        rows = []
        for count in batch_sizes:
            prompts = make_prompts(count, seed=count)
            expected = count * args.k * args.new_tokens
            seconds: dict[str, list[float]] = {name: [] for name in names}
            for round_index in range(args.rounds):  # alternating order, so load drift hits all
                order = names if round_index % 2 == 0 else names[::-1]
                for name in order:
                    begun = time.perf_counter()
                    generated = methods[name](prompts)
                    seconds[name].append(time.perf_counter() - begun)
                    if generated is not None and generated != expected:
                        raise SystemExit(f"{name}: {generated} tokens, expected {expected}")
            median = {name: sorted(s)[len(s) // 2] for name, s in seconds.items()}
            rate = {name: expected / median[name] for name in names}
            row = {
                "prompts": count,
                "k": args.k,
                "sequences": count * args.k,
                "new_tokens": args.new_tokens,
                "tokens": expected,
                "seconds": {name: [round(s, 3) for s in seconds[name]] for name in names},
                "tokens_per_second": {name: round(rate[name], 1) for name in names},
                "rasft_speedup": {name: round(rate[RASFT] / rate[name], 2) for name in names[1:]},
            }
            rows.append(row)
            print(
                f"{count:>7} {args.k:>2} {expected:>6} "
                + " ".join(f"{rate[name]:>25.1f}" for name in names)
                + " "
                + " ".join(f"{row['rasft_speedup'][name]:>8.2f}x" for name in names[1:])
            )
        wall_seconds = time.perf_counter() - started
        print(f"wall time {wall_seconds:.0f} s")

    if args.json:
        report = {
            "benchmark": "rollouts_vs_mlx_lm_lora",
            **machine_info(),
            "model": model_name,
            "dtype": "float32",
            "methods": names,
            "args": {**vars(args), "mlx_lm_lora": [str(p) for p in args.mlx_lm_lora]},
            "rows": rows,
            "wall_seconds": round(wall_seconds, 1),
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
