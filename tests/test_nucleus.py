"""The candidate top-p sampler keeps mlx-lm's nucleus exactly and draws from its distribution; the
candidate temperature sampler (top-p 1) draws from the whole softmax."""

import mlx.core as mx
import numpy as np
import pytest
from chi_square import assert_fits
from mlx_lm.sample_utils import apply_top_p, make_sampler

from rasft_mlx.generation.nucleus import candidate_nucleus, make_rollout_sampler, normalise


def peaked_to_flat_logits(rows: int = 48, vocab: int = 2048, seed: int = 0) -> mx.array:
    """Rows from nearly flat (the nucleus spans most of the vocabulary) to very peaked."""
    rng = np.random.default_rng(seed)
    sharpness = np.linspace(0.3, 15.0, rows)[:, None]
    return mx.array((rng.normal(size=(rows, vocab)) * sharpness).astype(np.float32))


def kept_by_mlx_lm(logits: mx.array, top_p: float) -> np.ndarray:
    return np.isfinite(np.array(apply_top_p(normalise(logits), top_p)))


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_covered_rows_keep_mlx_lm_nucleus_with_its_log_probs(top_p):
    logits = peaked_to_flat_logits()
    token_ids, masked, covered = candidate_nucleus(logits, top_p, 64)
    covered = np.array(covered)
    assert 0 < covered.sum() < len(covered), "rows on both sides of the candidates' reach"
    expected_kept = kept_by_mlx_lm(logits, top_p)
    expected_logprobs = np.array(normalise(logits))
    token_ids, masked = np.array(token_ids), np.array(masked)
    for row in np.flatnonzero(covered):
        kept = token_ids[row][np.isfinite(masked[row])]
        assert sorted(kept.tolist()) == np.flatnonzero(expected_kept[row]).tolist()
        finite = np.isfinite(masked[row])
        np.testing.assert_array_equal(
            masked[row][finite], expected_logprobs[row][token_ids[row][finite]]
        )
        assert np.all(np.diff(expected_logprobs[row][token_ids[row]]) >= 0), "ascending"


def test_covered_is_the_candidates_mass():
    logits = peaked_to_flat_logits()
    _, _, covered = candidate_nucleus(logits, 0.9, 64)
    top_mass = np.sort(np.exp(np.array(normalise(logits))), axis=-1)[:, -64:].sum(axis=-1)
    np.testing.assert_array_equal(np.array(covered), top_mass >= 0.9)


def test_a_peaked_row_keeps_its_hand_computed_nucleus():
    probs = np.full(400, 0.02 / 396)
    probs[[7, 3, 200, 50]] = [0.6, 0.25, 0.1, 0.03]
    logits = mx.array(np.log(probs)[None].astype(np.float32))
    token_ids, masked, covered = candidate_nucleus(logits, 0.9, 8)
    assert covered.item()
    kept = np.array(token_ids)[0][np.isfinite(np.array(masked)[0])]
    assert sorted(kept.tolist()) == [3, 7, 200]  # 0.6 + 0.25 < 0.9 <= 0.6 + 0.25 + 0.1


def test_a_cutoff_on_the_lowest_candidate_is_not_covered():
    """With the nucleus needing every candidate, tokens tied with the last one could lie outside."""
    probs = np.full(100, 0.01 / 97)
    probs[[1, 2, 3]] = [0.5, 0.3, 0.19]
    logits = mx.array(np.log(probs)[None].astype(np.float32))
    assert candidate_nucleus(logits, 0.98, 4)[2].item()  # needs 3 of the 4
    assert not candidate_nucleus(logits, 0.98, 3)[2].item()  # needs all 3: the boundary


def test_draws_follow_the_nucleus_distribution_on_both_paths():
    """A batch with a peaked row (drawn among the candidates) and a flat one (mlx-lm's full sort),
    each repeated: token counts match softmax(logprobs / T) over mlx-lm's nucleus."""
    logits = peaked_to_flat_logits(rows=48, vocab=600, seed=5)
    peaked, flat = logits[8], logits[2]  # nucleus of 49 tokens; of 391
    temperature, top_p, repeats = 0.7, 0.9, 3000
    _, _, covered = candidate_nucleus(mx.stack([peaked, flat]), top_p, 64)
    assert covered.tolist() == [True, False]
    batch = mx.concatenate([mx.repeat(peaked[None], repeats, 0), mx.repeat(flat[None], 7, 0)])
    mx.random.seed(11)
    sampler = make_rollout_sampler(temperature, top_p, 64)
    drawn = np.concatenate([np.array(sampler(batch)) for _ in range(3)])
    assert sampler.full_sort_steps_left == 0 and sampler.rows_full_sort == 21
    drawn = drawn.reshape(3, -1)
    for row, draws in ((peaked, drawn[:, :repeats].ravel()), (flat, drawn[:, repeats:].ravel())):
        logprobs = np.array(normalise(row[None]))[0]
        kept = kept_by_mlx_lm(row[None], top_p)[0]
        counts = np.bincount(draws, minlength=len(logprobs))
        assert counts[~kept].sum() == 0, "nothing outside the nucleus"
        if len(draws) > 100:
            weights = np.where(kept, np.exp((logprobs - logprobs.max()) / temperature), 0.0)
            assert_fits(counts, weights / weights.sum())


def test_greedy_and_plain_temperature_without_candidates_draw_as_mlx_lm():
    logits = peaked_to_flat_logits(rows=4)
    greedy = make_rollout_sampler(0.0, 0.95, 64)
    assert mx.array_equal(greedy(logits), mx.argmax(logits, axis=-1)).item()
    mx.random.seed(2)
    a = make_rollout_sampler(0.8, 1.0, 0)(logits)
    mx.random.seed(2)
    assert mx.array_equal(a, make_sampler(temp=0.8)(normalise(logits))).item()


def test_temperature_draws_follow_the_softmax_and_mlx_lm_draws():
    """Top-p 1 with candidates on: the draws of mlx-lm's sampler from the same seed (the
    same Gumbel noise; only a near tie could round differently), from softmax(logits / T)."""
    logits = peaked_to_flat_logits(rows=48, vocab=600, seed=5)
    temperature, repeats = 0.7, 4000
    sampler = make_rollout_sampler(temperature, 1.0, 64)
    mx.random.seed(4)
    a = sampler(logits)
    mx.random.seed(4)
    assert mx.array_equal(a, make_sampler(temp=temperature)(normalise(logits))).item()
    row = logits[4]
    probs = np.array(mx.softmax(row.astype(mx.float32) / temperature))
    draws = np.array(sampler(mx.repeat(row[None], repeats, 0)))
    assert_fits(np.bincount(draws, minlength=len(probs)), probs)
