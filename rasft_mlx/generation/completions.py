"""Batched sampling from the model in memory (live adapters included).

Models with plain KV caches go through the rollout engine (`engine.py`): the prompts' shared
opening is prefilled once, repeated prompts share one prefill, and all samples decode together,
continuously batched. Other models fall back to mlx-lm's
`batch_generate`. Both sample with mlx-lm's sampler and stop at the tokenizer's EOS ids.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import mlx.core as mx

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.console.progress import check, phase
from rasft_mlx.generation.engine import REPETITION_CONTEXT
from rasft_mlx.models.adapters import dropout_mode
from rasft_mlx.runtime.memory import auto_decode_rows

ALL_TOKENS = 1 << 30


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    repetition_scope: str = "window"  # "window": the last 20 tokens (mlx-lm); "all": vLLM's
    batch_size: int = 0  # sequences decoded together; 0 = sized from free memory (memory.py)


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    truncated: bool


@dataclass(frozen=True)
class GenerationStats:
    prompts: int
    generated_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def generate_completions(
    model,
    tokenizer,
    prompts: list[list[int]],
    settings: SamplingSettings,
    seed: int | None = None,
    label: str = "generation",
    limits: list[int] | None = None,
) -> tuple[list[Completion], GenerationStats]:
    """One completion per prompt, of at most `limits[i]` new tokens (None: all of
    `settings.max_new_tokens`); a completion that hit its limit is marked truncated.

    Identical prompts (K samples of one problem) are prefilled once; `settings.batch_size` caps
    the sequences decoded together (0: as many as fit, `memory.auto_decode_rows`, sized for
    `max_new_tokens` whatever the limits). Progress is reported as the phase `label`; a stop
    request raises progress.PhaseInterrupted.
    """
    from rasft_mlx.generation.engine import supports_model

    if not settings.batch_size and prompts:
        context = max(len(p) for p in prompts) + settings.max_new_tokens
        settings = replace(settings, batch_size=auto_decode_rows(model, context))
    if limits is None:
        limits = [settings.max_new_tokens] * len(prompts)
    generate = _engine_completions if supports_model(model) else _batch_generate_completions
    with (
        dropout_mode(model, False),
        phase(label, len(prompts), token_budget=sum(limits)) as reporter,
    ):
        return generate(model, tokenizer, prompts, settings, seed, reporter, limits)


def decode_share(prompts: list[list[int]], samples: int, batch_size: int) -> list[int]:
    """This rank's prompts (indices, ascending) when the ranks share out a decode of `samples`
    per prompt: the engine's start order (longest prompt first) cut into blocks of one batch's
    prompts, dealt to the ranks in turn, so each rank's batches hold prompts of similar lengths.
    Greedy rows decode as they would alone (`engine.py`), so the ranks' greedy tokens are one
    process's. Every prompt in one process."""
    if not distributed.distributed():
        return list(range(len(prompts)))
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    block = max(1, batch_size // max(samples, 1)) if batch_size else 1
    return sorted(order[i] for i in distributed.shard_indices(len(order), block))


def rank_seed(seed: int | None) -> int | None:
    """Each rank's own random stream (the seed itself on rank 0 and in one process)."""
    return None if seed is None else seed + 1_000_003 * distributed.rank()


def eos_ids(tokenizer) -> list[int]:
    ids = getattr(tokenizer, "eos_token_ids", None)
    return sorted(ids) if ids else [tokenizer.eos_token_id]


def _engine_completions(model, tokenizer, prompts, settings, seed, reporter=None, limits=None):
    from rasft_mlx.generation.engine import EngineSettings, generate_rows

    started = time.perf_counter()
    limits = limits or [settings.max_new_tokens] * len(prompts)
    unique: dict[tuple[tuple[int, ...], int], int] = {}  # (prompt, limit): one engine prompt
    slot = []  # (unique prompt, its n-th sample) of each input prompt
    counts: list[int] = []
    for prompt, limit in zip(prompts, limits, strict=True):
        index = unique.setdefault((tuple(prompt), limit), len(unique))
        if index == len(counts):
            counts.append(0)
        slot.append((index, counts[index]))
        counts[index] += 1
    engine = EngineSettings(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        repetition_penalty=settings.repetition_penalty,
        repetition_scope=settings.repetition_scope,
        max_rows=settings.batch_size,
    )
    samples, engine_stats = generate_rows(
        model,
        [list(p) for p, _ in unique],
        counts,
        engine,
        eos_ids(tokenizer),
        seed=seed,
        reporter=reporter,
        limits=[limit for _, limit in unique],
    )
    completions = []
    for index, n in slot:
        sample = samples[index][n]
        text = tokenizer.decode(list(sample.token_ids))
        completions.append(Completion(text, sample.token_ids, sample.truncated))
    generated = engine_stats.generated_tokens
    return completions, GenerationStats(len(prompts), generated, time.perf_counter() - started)


def _batch_generate_completions(
    model, tokenizer, prompts, settings, seed, reporter=None, limits=None
):
    from mlx_lm.generate import batch_generate
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    if seed is not None:
        mx.random.seed(seed)
    sampler = make_sampler(temp=settings.temperature, top_p=settings.top_p)
    processors = None
    if settings.repetition_penalty != 1.0:
        # mlx-lm's processor sees prompt + output; "all" widens its window past any sequence.
        context = ALL_TOKENS if settings.repetition_scope == "all" else REPETITION_CONTEXT
        processors = make_logits_processors(
            repetition_penalty=settings.repetition_penalty, repetition_context_size=context
        )
    started = time.perf_counter()
    limits = limits or [settings.max_new_tokens] * len(prompts)
    completions: list[Completion] = []
    generated = 0
    for start in range(0, len(prompts), settings.batch_size):
        chunk = prompts[start : start + settings.batch_size]
        chunk_limits = limits[start : start + settings.batch_size]
        response = batch_generate(
            model,
            tokenizer,
            chunk,
            max_tokens=chunk_limits,
            sampler=sampler,
            logits_processors=processors,
            completion_batch_size=len(chunk),
            prefill_batch_size=len(chunk),
            return_token_ids=True,
        )
        for text, ids, limit in zip(response.texts, response.token_ids, chunk_limits, strict=True):
            completions.append(Completion(text, tuple(ids), len(ids) >= limit))
            generated += len(ids)
        if reporter is not None:
            tokens = sum(len(ids) for ids in response.token_ids)
            reporter.advance(len(chunk), tokens, sum(chunk_limits) - tokens)
        check(label="generation")
    stats = GenerationStats(len(prompts), generated, time.perf_counter() - started)
    return completions, stats
