"""Rollout engine: many samples per prompt from one prefill each, continuously batched.

The prompts' shared opening (chat template, system prompt) is prefilled once and every prompt's
own tokens on top of it (`prefill.py`); the K samples of a prompt that start together share its
prefill. Rows decode together under a lean loop (`scheduler.py`): model call, batched repetition
penalty, mlx-lm's sampling rule, `mx.async_eval` pipelining, and a done-mask check every few
steps (one step behind, so the device never waits on Python). Finished rows leave the batch and
waiting rows take their places, so the batch stays full until the work runs out. On the CPU the
decode step's attention runs as MLX's own computation in fewer matmuls (`attention.py`).

Greedy rows give the tokens of mlx-lm's one-prompt loop (the tests check it on tiny models, with
stops, refills and shared prefixes): no step of a row depends on the others in its batch but
through floating-point rounding of padded attention, as in any batched decode.

Sampling follows mlx-lm's rule: the sampler sees `logits - logsumexp(logits)` and draws as
`mlx_lm.sample_utils.make_sampler(temp, top_p)` does from MLX's global random state (seed it with
`seed`: the same seed, prompts and settings give the same samples); on the CPU its top-p draws
among the top candidates instead of sorting the vocabulary, the same distribution, not the same
draws (`nucleus.py`). The repetition penalty is
`make_repetition_penalty`'s rule (sign-aware multiplicative) applied to all rows at once, over the
last 20 tokens of prompt + completion (scope "window", mlx-lm's) or over every token of both
(scope "all", vLLM's). Order per step: penalty on the logits, then top-p on the untempered
distribution, then a draw at temperature T among the kept tokens (mlx-lm's order; vLLM divides by
T before its top-p cut).
Generated ids exclude the stop token; a sample with no stop token within its limit
(`max_new_tokens`, or its prompt's own in `limits`) is truncated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from rasft_mlx.console.progress import check
from rasft_mlx.generation import scheduler
from rasft_mlx.generation.attention import decode_attention
from rasft_mlx.generation.lanes import default_lanes
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
    prefill_tokens: int = 8192  # prompt tokens per prefill call (all rows of a group together)
    check_every: int = 4  # decode steps between done-mask checks
    compact_fraction: float = 0.25  # drop finished rows once this share of the batch is done
    refill_fraction: float = 0.125  # start waiting rows once this share of max_rows is free
    top_p_candidates: int | None = None  # nucleus.py; None: on for the CPU, off for a GPU
    shared_prefix: bool = True  # prefill the prompts' common opening once (prefill.py)
    lanes: int | None = None  # rows split over CPU streams decoding at once (lanes.py); None: auto
    grouped_attention: bool = True  # the CPU's decode attention in fewer matmuls (attention.py)


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
    every prompt and output token (scope "all", as vLLM); applied before sampling. Row r
    continues `prompts[index[r]]`; `extend` appends rows, `keep` selects them."""

    def __init__(self, prompts: list[list[int]], index: mx.array, penalty: float, scope: str):
        self.penalty, self.scope = penalty, scope
        self.state: mx.array | None = None
        self.waiting: list[tuple[list[list[int]], mx.array]] = []  # "all": vocabulary unknown
        self.extend(prompts, index)

    def _rows(self, prompts: list[list[int]], index: mx.array, vocab: int) -> mx.array:
        if self.scope == "window":
            return mx.array(initial_context(prompts))[index]
        seen = np.zeros((len(prompts), vocab), dtype=np.bool_)
        for row, prompt in enumerate(prompts):
            seen[row, prompt] = True
        return mx.array(seen)[index]

    def _append(self, rows: mx.array) -> None:
        self.state = rows if self.state is None else mx.concatenate([self.state, rows])

    def extend(self, prompts: list[list[int]], index: mx.array) -> None:
        if self.scope == "window":
            self._append(self._rows(prompts, index, 0))
        elif self.state is None:  # built at the next step, once the vocabulary size is known
            self.waiting.append((prompts, index))
        else:
            self._append(self._rows(prompts, index, self.state.shape[-1]))

    def apply(self, logits: mx.array) -> mx.array:
        if self.scope == "window":
            return penalize_repetition(logits, self.state, self.penalty)
        for prompts, index in self.waiting:
            self._append(self._rows(prompts, index, logits.shape[-1]))
        self.waiting = []
        return penalize_seen(logits, self.state, self.penalty)

    def update(self, y: mx.array) -> None:
        if self.scope == "window":
            self.state = mx.concatenate([self.state[:, 1:], y[:, None].astype(mx.int32)], axis=1)
        else:
            marks = mx.ones((y.shape[0], 1), dtype=mx.bool_)
            self.state = mx.put_along_axis(self.state, y[:, None].astype(mx.int32), marks, axis=-1)

    def keep(self, index: mx.array) -> None:
        self.state = self.state[index]


def generate_rows(
    model,
    prompts: list[list[int]],
    counts: list[int] | int,
    settings: EngineSettings,
    eos_token_ids,
    seed: int | None = None,
    reporter=None,
    limits: list[int] | None = None,
) -> tuple[list[list[Sample]], EngineStats]:
    """`counts[i]` samples of prompt i, each of at most `limits[i]` new tokens (None: all of
    `settings.max_new_tokens`); returns the samples of each prompt, in prompt order.
    `reporter` (progress.PhaseReporter) hears of finished rows and tokens every few steps; a
    stop request raises progress.PhaseInterrupted."""
    if isinstance(counts, int):
        counts = [counts] * len(prompts)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt")
    if limits is not None and (len(limits) != len(prompts) or min(limits, default=1) < 1):
        raise ValueError("limits: one limit of at least 1 new token per prompt")
    if seed is not None:
        mx.random.seed(seed)
    candidates = settings.top_p_candidates
    candidates = default_candidates() if candidates is None else candidates
    sampler = make_rollout_sampler(settings.temperature, settings.top_p, candidates)
    eos_list = sorted(set(eos_token_ids))
    eos = mx.array(eos_list, dtype=mx.uint32)
    stats = EngineStats(prompts=len(prompts), rows=sum(counts))

    def make_penalty() -> RepetitionPenalty | None:
        if settings.repetition_penalty == 1.0:
            return None
        empty = mx.zeros((0,), dtype=mx.int32)
        return RepetitionPenalty([], empty, settings.repetition_penalty, settings.repetition_scope)

    lanes = default_lanes(model) if settings.lanes is None else settings.lanes
    check("generation")
    with decode_attention(model, settings.grouped_attention):
        row_prompt, rows = scheduler.decode(
            model,
            prompts,
            counts,
            settings,
            eos,
            sampler,
            make_penalty,
            stats,
            reporter,
            limits,
            lanes,
        )
    results: list[list[Sample]] = [[] for _ in prompts]
    for prompt, tokens in zip(row_prompt, rows, strict=True):
        stops = np.flatnonzero(np.isin(tokens, eos_list))
        end = int(stops[0]) if len(stops) else len(tokens)
        results[prompt].append(Sample(tuple(tokens[:end].tolist()), not len(stops)))
        stats.generated_tokens += end
    return results, stats
