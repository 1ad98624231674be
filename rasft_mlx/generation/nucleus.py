"""Rollout samplers: mlx-lm's sampling rule, a top-p (nucleus) sampler that never sorts the
whole vocabulary, and a temperature sampler (top-p 1) with no log-sum-exp pass.

mlx-lm's `apply_top_p` sorts every row's full vocabulary at every decode step, then draws with a
Gumbel pass over the full vocabulary; on a CPU those passes cost about twice the model's own
decode step (96 rows x 49,152 tokens, measured: sort ~400 ms, draw ~45 ms, model ~200 ms). The
nucleus nearly always sits inside a row's few hundred most likely tokens (SmolLM2-135M at
T = 1, top-p 0.95: 99.7 % of rows within the top 1,024), so `CandidateTopPSampler` takes the top
`candidates` tokens (`mx.argpartition`, one pass, the log-sum-exp computed beside it on a second
stream), finds mlx-lm's cut-off among them (kept: log-prob >= the first sorted position whose
mass above it falls below top_p) and draws among the kept candidates with temperature. That is
the same distribution as `make_sampler(temp, top_p)` whenever the candidates hold top_p of the
mass, because every token below them is dropped either way; rows where they do not are drawn by
mlx-lm's own full-sort sampler. The draws are statistically, not bit-for-bit, mlx-lm's (another
Gumbel pass over fewer tokens); tests check the kept sets exactly and the draws by chi-square.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

NUCLEUS_CANDIDATES = 1024
_side_streams: dict[str, mx.Stream] = {}


def side_stream() -> mx.Stream:
    """A second stream on the default device, made once (each CPU stream is a thread)."""
    device = mx.default_device()
    key = str(device)
    if key not in _side_streams:
        _side_streams[key] = mx.new_stream(device)
    return _side_streams[key]


def normalise(logits: mx.array) -> mx.array:
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


@dataclass
class Proposal:
    """A step's draws before the host has looked at them: `covered` (None: nothing to check) says
    which rows a candidate sampler decided; `logits` serve the full sort of the others."""

    drawn: mx.array
    covered: mx.array | None = None
    logits: mx.array | None = None


def propose(sampler, logits: mx.array) -> Proposal:
    """Any sampler's draw as a proposal (only the candidate sampler has rows to settle)."""
    if isinstance(sampler, CandidateTopPSampler):
        return sampler.propose(logits)
    return Proposal(sampler(logits))


def settle(sampler, proposal: Proposal) -> mx.array:
    if isinstance(sampler, CandidateTopPSampler):
        return sampler.settle(proposal)
    return proposal.drawn


class MlxLmSampler:
    """`make_sampler(temp, top_p)` on the log-probs of raw logits, as mlx-lm's generators call it."""

    def __init__(self, temperature: float, top_p: float):
        from mlx_lm.sample_utils import make_sampler

        self.greedy = temperature == 0
        self.draw = make_sampler(temp=temperature, top_p=top_p)

    def __call__(self, logits: mx.array) -> mx.array:
        if self.greedy:  # argmax of the logits is the argmax of the log-probs: skip the exp pass
            return mx.argmax(logits, axis=-1)
        return self.draw(normalise(logits))


def candidate_nucleus(
    logits: mx.array, top_p: float, candidates: int, lse_stream=None
) -> tuple[mx.array, mx.array, mx.array]:
    """Each row's top `candidates` tokens in ascending log-prob order, their log-probs with those
    outside the nucleus set to -inf, and whether the candidates decide the nucleus exactly.

    The total mass is taken as 1 (log-probs are normalised) where mlx-lm sums it in float32, so a
    row whose nucleus boundary sits within float rounding (~1e-6) of top_p could keep one token
    more or fewer. A row is not `covered` when its candidates hold less than top_p of the mass,
    or when the cut-off is the lowest candidate (tokens tied with it could sit outside).
    Returns (token_ids [rows, candidates], masked log-probs [rows, candidates], covered [rows]).
    """
    vocab = logits.shape[-1]
    if lse_stream is None:
        log_total = mx.logsumexp(logits, axis=-1, keepdims=True)
    else:
        with mx.stream(lse_stream):
            log_total = mx.logsumexp(logits, axis=-1, keepdims=True)
    top_ids = mx.argpartition(logits, vocab - candidates, axis=-1)[:, vocab - candidates :]
    top = mx.take_along_axis(logits, top_ids, axis=-1)
    order = mx.argsort(top, axis=-1)
    token_ids = mx.take_along_axis(top_ids, order, axis=-1)
    logprobs = mx.take_along_axis(top, order, axis=-1) - log_total
    probs = mx.exp(logprobs.astype(mx.float32))
    mass_above = mx.cumsum(probs, axis=-1, reverse=True, inclusive=False)
    dropped = (mass_above >= top_p).sum(axis=-1, keepdims=True)
    cutoff = mx.take_along_axis(logprobs, dropped, axis=-1)
    covered = (mass_above[:, 0] + probs[:, 0] >= top_p) & (dropped[:, 0] > 0)
    return token_ids, mx.where(logprobs < cutoff, -float("inf"), logprobs), covered


class CandidateTopPSampler:
    """Draws as `make_sampler(temperature, top_p)` in distribution; after a step where most rows
    were not covered (flat distributions: an untrained or random model), it sorts in full for
    `RETRY_AFTER` steps rather than pay for both, then tries the candidates again. Reads which
    rows are covered on the host every step (cheap on a CPU; it would stall a GPU's pipeline)."""

    RETRY_AFTER = 16

    def __init__(self, temperature: float, top_p: float, candidates: int):
        self.temperature, self.top_p, self.candidates = temperature, top_p, candidates
        self.full_sort = MlxLmSampler(temperature, top_p)
        self.side_stream = side_stream()
        self.full_sort_steps_left = 0
        self.rows_drawn = 0
        self.rows_full_sort = 0

    def __call__(self, logits: mx.array) -> mx.array:
        return self.settle(self.propose(logits))

    def propose(self, logits: mx.array) -> Proposal:
        """The draw among the candidates, not yet evaluated, and which rows they decide; the
        decode lanes evaluate every lane's proposal together before any `settle`."""
        rows = logits.shape[0]
        self.rows_drawn += rows
        if self.full_sort_steps_left > 0 or logits.shape[-1] <= self.candidates:
            self.full_sort_steps_left = max(0, self.full_sort_steps_left - 1)
            self.rows_full_sort += rows
            return Proposal(self.full_sort(logits))
        token_ids, masked, covered = candidate_nucleus(
            logits, self.top_p, self.candidates, self.side_stream
        )
        choice = mx.random.categorical(masked * (1.0 / self.temperature))
        drawn = mx.take_along_axis(token_ids, choice[:, None], axis=-1)[:, 0]
        return Proposal(drawn, covered, logits)

    def settle(self, proposal: Proposal) -> mx.array:
        """The proposal's draws, with the rows its candidates did not decide drawn by the full
        sort (reads `covered` on the host)."""
        drawn = proposal.drawn
        if proposal.covered is None:
            return drawn
        rows = drawn.shape[0]
        uncovered = np.flatnonzero(~np.array(proposal.covered))
        if len(uncovered):
            self.rows_full_sort += len(uncovered)
            rows_left = mx.array(uncovered)
            drawn[rows_left] = self.full_sort(proposal.logits[rows_left]).astype(drawn.dtype)
            if 2 * len(uncovered) > rows:
                self.full_sort_steps_left = self.RETRY_AFTER
        return drawn


class TemperatureSampler:
    """Temperature alone (top-p 1): mlx-lm's draw, `mx.random.categorical(x / T)`, on the raw
    logits instead of the log-probs. Softmax does not see a row's constant shift, so the
    distribution is the same, and from the same seed so are the draws (the same Gumbel noise)
    but where rounding the shifted logits changes a near tie; it skips the log-sum-exp pass over
    the vocabulary, about half of the sampler's time on a CPU (128 rows x 49,152 tokens: ~100
    of ~220 ms)."""

    def __init__(self, temperature: float):
        self.scale = 1.0 / temperature

    def __call__(self, logits: mx.array) -> mx.array:
        return mx.random.categorical(logits * self.scale)


def make_rollout_sampler(temperature: float, top_p: float, candidates: int):
    """A sampler of raw logits: mlx-lm's rule; when candidates > 0, the candidate top-p, or at
    top-p 1 the temperature draw without the log-sum-exp (`TemperatureSampler`). candidates 0:
    mlx-lm's own draws, bit for bit."""
    if temperature == 0 or not 0 < top_p <= 1 or candidates <= 0:
        return MlxLmSampler(temperature, top_p)
    if top_p == 1:
        return TemperatureSampler(temperature)
    return CandidateTopPSampler(temperature, top_p, candidates)


def default_candidates() -> int:
    """On by default on the CPU, where the full sort dominates decoding; off on a GPU, where its
    per-step host check (which rows fall back) would stall the pipelined decode loop, unmeasured."""
    return NUCLEUS_CANDIDATES if mx.default_device().type == mx.DeviceType.cpu else 0
