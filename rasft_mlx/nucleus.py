"""Top-p (nucleus) sampling without sorting the whole vocabulary, same draws as mlx-lm's sampler.

mlx-lm's `apply_top_p` sorts every row's full vocabulary at every decode step; on a CPU that sort
costs more than the model's own decode step (measured: 96 rows x 49,152 tokens, 445 ms to sort,
36 ms for a top-256). The nucleus usually sits inside a row's few most likely tokens, so this
sampler takes the top `candidates` log-probs (`mx.topk`), sorts only those, and finds the same
cut-off value mlx-lm would: with ascending order, the kept tokens are those at or above the first
position whose mass above it falls below `top_p x total`. That is exact whenever the candidates
hold at least `top_p` of the mass, because every position below them is dropped either way; rows
where they do not fall back to mlx-lm's own `apply_top_p` (and when most rows of a step did, the
next steps use it directly: nearly flat distributions gain nothing from candidates). The masked
log-probs, hence the draws from MLX's random state, are the same as `make_sampler(temp, top_p)`'s.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

NUCLEUS_CANDIDATES = 256


def top_p_cutoff(logprobs: mx.array, top_p: float, candidates: int) -> tuple[mx.array, mx.array]:
    """Per-row cut-off log-prob from the top `candidates` tokens, and whether it is exact.

    `logprobs` must be normalised (log-softmax): the total mass is taken as 1 rather than summed
    over the vocabulary (a full pass of `exp`, as costly here as the top-k). mlx-lm sums it in
    float32, so a row whose nucleus boundary sits within float rounding (~1e-6) of top_p could
    keep one token more or fewer; no such row has come up in the tests' comparisons.
    Returns (cutoff [rows, 1], exact [rows]); tokens with log-prob below the cut-off are dropped.
    """
    top = mx.sort(mx.topk(logprobs, candidates, axis=-1), axis=-1)
    probs = mx.exp(top.astype(mx.float32))
    mass_above = mx.cumsum(probs, axis=-1, reverse=True, inclusive=False)
    needed = top_p  # the total mass is 1: the rows are log-softmax outputs
    exact = (mass_above[:, :1] + probs[:, :1] >= needed)[:, 0]
    dropped = (mass_above >= needed).sum(axis=-1, keepdims=True)
    return mx.take_along_axis(top, dropped, axis=-1), exact


def apply_top_p_fast(logprobs: mx.array, top_p: float, candidates: int) -> tuple[mx.array, int]:
    """`mlx_lm.sample_utils.apply_top_p` for a [rows, vocab] batch, sorting only candidates.

    Returns the masked log-probs and how many rows needed the full sort.
    """
    from mlx_lm.sample_utils import apply_top_p

    if logprobs.shape[-1] <= candidates:
        return apply_top_p(logprobs, top_p), logprobs.shape[0]
    cutoff, exact = top_p_cutoff(logprobs, top_p, candidates)
    masked = mx.where(logprobs < cutoff, -float("inf"), logprobs)
    exact = np.array(exact)
    if not exact.all():  # mlx-lm's own full sort for the rows the candidates do not cover
        rows = mx.array(np.flatnonzero(~exact))
        masked[rows] = apply_top_p(logprobs[rows], top_p)
    return masked, int((~exact).sum())


class CandidateTopPSampler:
    """Draws as `make_sampler(temperature, top_p)`; after a step where most rows needed the full
    sort (flat distributions: an untrained or random model), it sorts in full directly for
    `RETRY_AFTER` steps rather than pay for both, then tries the candidates again."""

    RETRY_AFTER = 16

    def __init__(self, temperature: float, top_p: float, candidates: int):
        self.temperature, self.top_p, self.candidates = temperature, top_p, candidates
        self.full_sort_steps_left = 0

    def __call__(self, logprobs: mx.array) -> mx.array:
        from mlx_lm.sample_utils import apply_top_p, categorical_sampling

        if self.full_sort_steps_left > 0:
            self.full_sort_steps_left -= 1
            masked = apply_top_p(logprobs, self.top_p)
        else:
            masked, fallbacks = apply_top_p_fast(logprobs, self.top_p, self.candidates)
            if 2 * fallbacks > logprobs.shape[0]:
                self.full_sort_steps_left = self.RETRY_AFTER
        return categorical_sampling(masked, self.temperature)


def make_rollout_sampler(temperature: float, top_p: float, candidates: int):
    """mlx-lm's `make_sampler(temperature, top_p)`, with the candidate top-p when candidates > 0."""
    from mlx_lm.sample_utils import make_sampler

    if temperature == 0 or not 0 < top_p < 1 or candidates <= 0:
        return make_sampler(temp=temperature, top_p=top_p)
    return CandidateTopPSampler(temperature, top_p, candidates)


def default_candidates() -> int:
    """On by default on the CPU, where the full sort dominates decoding; off on a GPU, where its
    per-step host check (which rows fall back) would stall the pipelined decode loop, unmeasured."""
    return NUCLEUS_CANDIDATES if mx.default_device().type == mx.DeviceType.cpu else 0
