"""The candidate top-p sampler masks and draws exactly as mlx-lm's full-sort sampler."""

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.sample_utils import apply_top_p, make_sampler

from rasft_mlx.nucleus import apply_top_p_fast, make_rollout_sampler, top_p_cutoff


def log_probs(rows: int = 48, vocab: int = 2048, seed: int = 0) -> mx.array:
    """Rows from nearly flat (the nucleus spans most of the vocabulary) to very peaked."""
    rng = np.random.default_rng(seed)
    sharpness = np.linspace(0.3, 15.0, rows)[:, None]
    logits = mx.array((rng.normal(size=(rows, vocab)) * sharpness).astype(np.float32))
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_masks_equal_mlx_lm_on_both_paths(top_p):
    logprobs = log_probs()
    _, exact = top_p_cutoff(logprobs, top_p, 64)
    exact = np.array(exact)
    assert 0 < exact.sum() < len(exact), "both the candidate path and the fallback run"
    expected = apply_top_p(logprobs, top_p)
    masked, fallbacks = apply_top_p_fast(logprobs, top_p, 64)
    assert fallbacks == int((~exact).sum())
    assert mx.array_equal(masked, expected).item()


def test_exact_flag_is_the_candidates_mass():
    logprobs = log_probs()
    _, exact = top_p_cutoff(logprobs, 0.9, 64)
    top_mass = np.sort(np.exp(np.array(logprobs)), axis=-1)[:, -64:].sum(axis=-1)
    np.testing.assert_array_equal(np.array(exact), top_mass >= 0.9)


def test_a_peaked_row_keeps_its_hand_computed_nucleus():
    probs = np.full(400, 0.02 / 396)
    probs[[7, 3, 200, 50]] = [0.6, 0.25, 0.1, 0.03]
    logprobs = mx.array(np.log(probs)[None].astype(np.float32))
    kept = np.flatnonzero(np.isfinite(np.array(apply_top_p_fast(logprobs, 0.9, 8)[0])[0]))
    assert sorted(kept.tolist()) == [3, 7, 200]  # 0.6 + 0.25 < 0.9 <= 0.6 + 0.25 + 0.1


def test_seeded_draws_equal_mlx_lm_sampler():
    logprobs = log_probs(seed=1)
    mx.random.seed(9)
    expected = [make_sampler(temp=0.9, top_p=0.95)(logprobs) for _ in range(4)]
    mx.random.seed(9)
    sampler = make_rollout_sampler(0.9, 0.95, 64)
    drawn = [sampler(logprobs) for _ in range(4)]
    for a, b in zip(expected, drawn, strict=True):
        assert mx.array_equal(a, b).item()


def test_greedy_and_plain_temperature_keep_mlx_lm_sampler():
    logprobs = log_probs(rows=4)
    greedy = make_rollout_sampler(0.0, 0.95, 64)
    assert mx.array_equal(greedy(logprobs), mx.argmax(logprobs, axis=-1)).item()
    mx.random.seed(2)
    a = make_rollout_sampler(0.8, 1.0, 64)(logprobs)
    mx.random.seed(2)
    assert mx.array_equal(a, make_sampler(temp=0.8)(logprobs)).item()


def test_flat_batches_switch_to_the_full_sort_and_draw_the_same():
    flat = log_probs(rows=8, vocab=1024, seed=3) * 0.01
    flat = flat - mx.logsumexp(flat, axis=-1, keepdims=True)
    sampler = make_rollout_sampler(1.0, 0.9, 64)
    reference = make_sampler(temp=1.0, top_p=0.9)
    for step in range(3):
        mx.random.seed(step)
        a = sampler(flat)
        mx.random.seed(step)
        assert mx.array_equal(a, reference(flat)).item()
        assert sampler.full_sort_steps_left == sampler.RETRY_AFTER - step
