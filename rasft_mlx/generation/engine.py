"""Rollout engine: many samples per prompt with one shared prefill and a lean batched decode loop.

Each distinct prompt is prefilled once (all prompts of a chunk together, right-padded and then
rolled into a left-padded `BatchKVCache`, as mlx-lm's batch generator does), the cache rows are
replicated once per sample, and all samples then decode together: model call, batched
repetition penalty, mlx-lm's sampling rule, `mx.async_eval` pipelining, and a done-mask check every
few steps (one step behind, so the device never waits on Python). Rows that finished are dropped
from the batch when enough of them have, so long tails do not pay for finished samples.

Sampling follows mlx-lm's rule: the sampler sees `logits - logsumexp(logits)` and draws as
`mlx_lm.sample_utils.make_sampler(temp, top_p)` does from MLX's global random state (seed it with
`seed`); on the CPU its top-p draws among the top candidates instead of sorting the vocabulary,
the same distribution, not the same draws (`nucleus.py`). The repetition penalty is
`make_repetition_penalty`'s rule (sign-aware multiplicative) applied to all rows at once, over the
last 20 tokens of prompt + completion (scope "window", mlx-lm's) or over every token of both
(scope "all", vLLM's). Order per step: penalty on the logits, then top-p on the untempered
distribution, then a draw at temperature T among the kept tokens (mlx-lm's order; vLLM divides by
T before its top-p cut).
Generated ids exclude the stop token; a sample with no stop token within `max_new_tokens` is
truncated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from rasft_mlx.console.progress import check
from rasft_mlx.generation.nucleus import default_candidates, make_rollout_sampler

REPETITION_CONTEXT = 20  # mlx-lm's default repetition_context_size


@dataclass(frozen=True)
class EngineSettings:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    repetition_scope: str = "window"  # "window": mlx-lm's last 20 tokens; "all": vLLM's
    max_rows: int = 256  # sequences decoded together (prompts x samples)
    prefill_tokens: int = 8192  # prompt tokens per prefill call (all rows of a chunk together)
    check_every: int = 4  # decode steps between done-mask checks
    compact_fraction: float = 0.25  # drop finished rows once this share of the batch is done
    top_p_candidates: int | None = None  # nucleus.py; None: on for the CPU, off for a GPU


@dataclass(frozen=True)
class Sample:
    token_ids: tuple[int, ...]
    truncated: bool


@dataclass
class EngineStats:
    prompts: int = 0
    rows: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    chunks: int = 0
    compactions: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds


def supports_model(model) -> bool:
    """The engine batches plain KV caches; other cache kinds (rotating, SSM state) fall back."""
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    return all(type(c) is KVCache for c in make_prompt_cache(model))


def make_batch_cache(model, rows: int) -> list:
    from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

    return [BatchKVCache([0] * rows) for _ in make_prompt_cache(model)]


def penalize_repetition(logits: mx.array, context: mx.array, penalty: float) -> mx.array:
    """mlx-lm's repetition penalty for every row at once: `context` is (rows, n) token ids."""
    selected = mx.take_along_axis(logits, context, axis=-1)
    selected = mx.where(selected < 0, selected * penalty, selected / penalty)
    return mx.put_along_axis(logits, context, selected, axis=-1)


def initial_context(prompts: list[list[int]], size: int = REPETITION_CONTEXT) -> np.ndarray:
    """The last `size` tokens of each prompt, left-filled with its last token (a set, so repeats
    change nothing)."""
    context = np.empty((len(prompts), size), dtype=np.int32)
    for row, prompt in enumerate(prompts):
        tail = prompt[-size:]
        context[row, : size - len(tail)] = tail[-1]
        context[row, size - len(tail) :] = tail
    return context


def penalize_seen(logits: mx.array, seen: mx.array, penalty: float) -> mx.array:
    """vLLM's repetition penalty: every token id seen in the prompt or the output so far (a
    (rows, vocab) mask) has its logit divided by the penalty when positive, multiplied when not."""
    penalized = mx.where(logits < 0, logits * penalty, logits / penalty)
    return mx.where(seen, penalized, logits)


class RepetitionPenalty:
    """The penalty's per-row state: mlx-lm's window of the last 20 tokens (scope "window") or
    every prompt and output token (scope "all", as vLLM); applied before sampling."""

    def __init__(self, prompts: list[list[int]], index: mx.array, penalty: float, scope: str):
        self.penalty, self.scope = penalty, scope
        self.prompts, self.index = prompts, index
        self.state = mx.array(initial_context(prompts))[index] if scope == "window" else None

    def apply(self, logits: mx.array) -> mx.array:
        if self.scope == "window":
            return penalize_repetition(logits, self.state, self.penalty)
        if self.state is None:  # built at the first step, once the vocabulary size is known
            seen = np.zeros((len(self.prompts), logits.shape[-1]), dtype=np.bool_)
            for row, prompt in enumerate(self.prompts):
                seen[row, prompt] = True
            self.state = mx.array(seen)[self.index]
        return penalize_seen(logits, self.state, self.penalty)

    def update(self, y: mx.array) -> None:
        if self.scope == "window":
            self.state = mx.concatenate([self.state[:, 1:], y[:, None].astype(mx.int32)], axis=1)
        else:
            marks = mx.ones((y.shape[0], 1), dtype=mx.bool_)
            self.state = mx.put_along_axis(self.state, y[:, None].astype(mx.int32), marks, axis=-1)

    def keep(self, index: mx.array) -> None:
        self.state = self.state[index]


def prefill(model, prompts: list[list[int]], token_budget: int) -> list:
    """Batched KV cache holding each prompt but its last token, left-padded."""
    rows = len(prompts)
    cache = make_batch_cache(model, rows)
    bodies = [p[:-1] for p in prompts]
    lengths = [len(b) for b in bodies]
    width = max(lengths)
    if width == 0:
        return cache
    padding = [width - n for n in lengths]
    tokens = mx.array([b + [0] * (width - len(b)) for b in bodies])
    if max(padding) > 0:
        for c in cache:
            c.prepare(lengths=lengths, right_padding=padding)
    step = max(1, token_budget // rows)
    for start in range(0, width, step):
        # Only the cache is evaluated: the logits of the prompt positions are never computed.
        model(tokens[:, start : start + step], cache=cache)
        mx.eval([c.state for c in cache])
    if max(padding) > 0:
        for c in cache:
            c.finalize()
        mx.eval([c.state for c in cache])
    return cache


def _decode_chunk(
    model,
    prompts: list[list[int]],
    row_prompt: list[int],
    settings: EngineSettings,
    eos: mx.array,
    sampler,
    stats: EngineStats,
    reporter=None,
) -> list[Sample]:
    """All rows of one chunk: `row_prompt[r]` is the index in `prompts` that row r continues.
    `reporter` (progress.PhaseReporter) hears of finished rows and tokens every few steps; a
    stop request raises progress.PhaseInterrupted there."""
    started = time.perf_counter()
    cache = prefill(model, prompts, settings.prefill_tokens)
    index = mx.array(row_prompt)
    for c in cache:
        c.filter(index)  # one cache row per sample, sharing its prompt's prefill
    rows = len(row_prompt)
    y = mx.array([prompts[p][-1] for p in row_prompt], dtype=mx.uint32)
    penalty = None
    if settings.repetition_penalty != 1.0:
        penalty = RepetitionPenalty(
            prompts, index, settings.repetition_penalty, settings.repetition_scope
        )
    mx.eval(y, [c.state for c in cache], penalty.state if penalty else None)
    stats.prefill_seconds += time.perf_counter() - started
    stats.prompt_tokens += sum(len(p) for p in prompts)

    started = time.perf_counter()
    limit = settings.max_new_tokens
    # Segments of the output: (original row ids, first step, per-step token arrays).
    active = np.arange(rows)
    segments: list[tuple[np.ndarray, int, list[mx.array]]] = [(active, 0, [])]
    done = mx.zeros((rows,), dtype=mx.bool_)
    pending = None  # the done mask of an earlier step, read while later steps run
    reported = reported_step = 0  # rows and steps already reported
    for step in range(limit):
        logits = model(y[:, None], cache=cache)[:, -1, :]
        if penalty is not None:
            logits = penalty.apply(logits)
        y = sampler(logits).astype(mx.uint32)
        if penalty is not None:
            penalty.update(y)
        done = done | (y[:, None] == eos[None]).any(axis=-1)
        segments[-1][2].append(y)
        mx.async_eval(y, done)
        if step + 1 == limit:
            break
        if pending is not None:
            flags = np.array(pending)  # waits for an earlier step only
            pending = None
            finished = int(flags.sum())
            check("generation")
            if reporter is not None:
                done_now = rows - len(active) + finished
                reporter.advance(
                    done_now - reported,
                    (step + 1 - reported_step) * len(active),
                    (done_now - reported) * (limit - step - 1),
                )
                reported, reported_step = done_now, step + 1
            if finished == len(active):
                break
            if finished >= max(1, int(settings.compact_fraction * len(active))):
                keep = np.flatnonzero(~flags)
                keep_index = mx.array(keep)
                for c in cache:
                    c.filter(keep_index)
                y, done = y[keep_index], done[keep_index]
                if penalty is not None:
                    penalty.keep(keep_index)
                active = active[keep]
                segments.append((active, step + 1, []))
                stats.compactions += 1
                mx.clear_cache()
        if (step + 1) % settings.check_every == 0:
            pending = done
    stats.decode_steps += step + 1
    if reporter is not None:
        reporter.advance(rows - reported, (step + 1 - reported_step) * len(active))

    table = np.full((rows, limit), -1, dtype=np.int64)
    for ids, first, steps in segments:
        if steps:
            table[ids, first : first + len(steps)] = np.array(mx.stack(steps, axis=1))
    stats.decode_seconds += time.perf_counter() - started

    eos_ids = set(np.array(eos).tolist())
    samples = []
    for row in table:
        ids = []
        stopped = False
        for token in row.tolist():
            if token < 0:
                break
            if token in eos_ids:
                stopped = True
                break
            ids.append(token)
        samples.append(Sample(tuple(ids), not stopped))
        stats.generated_tokens += len(ids)
    return samples


def plan_chunks(
    prompts: list[list[int]], counts: list[int], max_rows: int
) -> list[list[tuple[int, int]]]:
    """Chunks of (prompt index, samples) with at most max_rows samples each, longest prompts
    first so prompts of similar length share a chunk (less padding)."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    chunks: list[list[tuple[int, int]]] = [[]]
    room = max_rows
    for i in order:
        left = counts[i]
        while left > 0:
            if room == 0:
                chunks.append([])
                room = max_rows
            take = min(left, room)
            chunks[-1].append((i, take))
            room -= take
            left -= take
    return [c for c in chunks if c]


def generate_rows(
    model,
    prompts: list[list[int]],
    counts: list[int] | int,
    settings: EngineSettings,
    eos_token_ids,
    seed: int | None = None,
    reporter=None,
) -> tuple[list[list[Sample]], EngineStats]:
    """`counts[i]` samples of prompt i (its prefill computed once per chunk); returns the samples
    of each prompt, in prompt order. `reporter`: see `_decode_chunk`."""
    if isinstance(counts, int):
        counts = [counts] * len(prompts)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt")
    if seed is not None:
        mx.random.seed(seed)
    candidates = settings.top_p_candidates
    candidates = default_candidates() if candidates is None else candidates
    sampler = make_rollout_sampler(settings.temperature, settings.top_p, candidates)
    eos = mx.array(sorted(set(eos_token_ids)), dtype=mx.uint32)
    stats = EngineStats(prompts=len(prompts), rows=sum(counts))
    results: list[list[Sample]] = [[] for _ in prompts]
    for chunk in plan_chunks(prompts, counts, max(1, settings.max_rows)):
        unique = [prompts[i] for i, _ in chunk]
        row_prompt = [j for j, (_, n) in enumerate(chunk) for _ in range(n)]
        check("generation")
        samples = _decode_chunk(model, unique, row_prompt, settings, eos, sampler, stats, reporter)
        for sample, j in zip(samples, row_prompt, strict=True):
            results[chunk[j][0]].append(sample)
        stats.chunks += 1
    return results, stats
