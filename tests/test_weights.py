"""Sequence weights: the authors' K = 3 table, fallbacks, the linear weighting, dedup, histogram."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from rasft_mlx.rasft.weights import (
    LINEAR_EXPERT_WEIGHT_MIN,
    LINEAR_ROLLOUT_WEIGHT_MAX,
    deduplicate_rollouts,
    linear_weights,
    no_rollout_weights,
    problem_weights,
    reference_weights,
    solvability_histogram,
    word_trigram_jaccard,
)
from rasft_mlx.recipe.config import RasftConfig

K = 3


@pytest.mark.parametrize(
    ("correct", "incorrect", "expert"),
    [(1, 0, 0.190), (1, 1, 0.236), (1, 2, 0.278), (2, 0, 0.171), (2, 1, 0.155)],
)
def test_reference_table_at_k3(correct, incorrect, expert):
    weights = reference_weights(correct, incorrect, RasftConfig(), num_sampled=K)
    assert weights.route == "weighted"
    assert weights.solvability == pytest.approx(correct / K)
    assert weights.expert_weight == pytest.approx(expert, abs=5e-4)
    assert len(weights.rollout_weights) == correct


def test_reference_rollout_weight_one_of_three_with_two_negatives():
    weights = reference_weights(1, 2, num_sampled=K)
    assert weights.rollout_weights == pytest.approx((0.0087,), abs=1e-4)


def test_reference_rollout_weight_sits_on_the_floor_otherwise():
    cfg = RasftConfig()
    floor_weight = cfg.rollout_adv_coef * cfg.rollout_adv_floor
    for correct, incorrect in [(1, 0), (1, 1), (2, 0), (2, 1)]:
        weights = reference_weights(correct, incorrect, cfg, num_sampled=K)
        assert weights.rollout_weights == pytest.approx((floor_weight,) * correct)


def test_reference_row_one_correct_none_incorrect_by_hand():
    p_hat = 1 / 3
    expert_reward = 1.0 + (1 - p_hat) * (3.0 - 1.0)
    group = [expert_reward, 1.0]
    mean = sum(group) / 2
    std = math.sqrt(sum((g - mean) ** 2 for g in group) / 2)
    z_expert = (expert_reward - mean) / (std + 1e-6)
    z_rollout = (1.0 - mean) / (std + 1e-6)
    expected_expert = math.tanh(0.4 * z_expert) * (1 / 2)
    expected_rollout = 0.25 * min(max(math.tanh(0.4 * z_rollout) * (1 / 2), 0.02), 0.15)
    weights = reference_weights(1, 0, num_sampled=3)
    assert expected_expert == pytest.approx(0.190, abs=5e-4)
    assert weights.expert_weight == pytest.approx(expected_expert)
    assert weights.rollout_weights == pytest.approx((expected_rollout,))


def test_k_defaults_to_the_graded_samples():
    """With K = k+ + k- (nothing outside the group), one correct sample alone is K/K solved:
    R_exp = r_min = pos_reward, a degenerate group (tests/test_groups.py sets K as the authors)."""
    assert reference_weights(1, 0).route == "fallback_degenerate"
    assert reference_weights(1, 1).expert_weight == pytest.approx(0.227, abs=5e-4)


def test_unsolved_falls_back_to_the_expert_alone():
    weights = reference_weights(0, 3, num_sampled=K)
    assert weights == replace(weights, expert_weight=1.0, rollout_weights=())
    assert weights.route == "fallback_unsolved"
    assert weights.solvability == 0.0


def test_fully_solved_group_is_degenerate():
    weights = reference_weights(3, 0, num_sampled=K)
    assert (weights.expert_weight, weights.rollout_weights) == (1.0, ())
    assert weights.route == "fallback_degenerate"
    assert weights.solvability == 1.0


def test_fully_solved_group_is_not_degenerate_when_rewards_differ():
    weights = reference_weights(3, 0, RasftConfig(pos_reward=0.5), num_sampled=K)
    assert weights.route == "weighted"
    assert len(weights.rollout_weights) == 3


def test_nothing_left_after_filtering():
    weights = reference_weights(0, 0, num_sampled=K)
    assert (weights.expert_weight, weights.rollout_weights, weights.route) == (
        1.0,
        (),
        "fallback_empty",
    )


def test_negatives_beyond_the_cap_do_not_enter_the_group():
    capped = reference_weights(1, 5, RasftConfig(max_negative_keep=2), num_sampled=6)
    explicit = reference_weights(1, 2, RasftConfig(max_negative_keep=2), num_sampled=6)
    assert capped == explicit


def test_more_correct_than_sampled_is_rejected():
    with pytest.raises(ValueError, match="exceeds"):
        reference_weights(4, 0, num_sampled=3)
    with pytest.raises(ValueError, match=">= 0"):
        reference_weights(-1, 0)


def test_no_rollout_weights():
    weights = no_rollout_weights()
    assert (weights.expert_weight, weights.rollout_weights, weights.route) == (
        1.0,
        (),
        "no_rollouts",
    )


def test_linear_weighting_is_monotone_and_bounded():
    k = 8
    rows = [linear_weights(correct, k) for correct in range(1, k + 1)]
    experts = [w.expert_weight for w in rows]
    rollouts = [w.rollout_weights[0] for w in rows]
    assert all(a > b for a, b in zip(experts, experts[1:], strict=False))
    assert all(a < b for a, b in zip(rollouts, rollouts[1:], strict=False))
    assert all(LINEAR_EXPERT_WEIGHT_MIN <= e <= 1.0 for e in experts)
    assert all(0.0 < r <= LINEAR_ROLLOUT_WEIGHT_MAX for r in rollouts)
    assert [len(w.rollout_weights) for w in rows] == list(range(1, k + 1))


def test_linear_fully_solved_relaxes_the_expert():
    weights = linear_weights(3, 3)
    assert weights.route == "weighted"
    assert weights.expert_weight == pytest.approx(LINEAR_EXPERT_WEIGHT_MIN)
    assert weights.rollout_weights == pytest.approx((LINEAR_ROLLOUT_WEIGHT_MAX,) * 3)


def test_linear_unsolved_and_empty():
    unsolved = linear_weights(0, 3)
    assert (unsolved.expert_weight, unsolved.rollout_weights, unsolved.route) == (
        1.0,
        (),
        "fallback_unsolved",
    )
    assert linear_weights(0, 0).route == "fallback_empty"


def test_problem_weights_dispatches_on_the_weighting():
    reference = problem_weights(1, 2, RasftConfig(weighting="reference"))
    linear = problem_weights(1, 2, RasftConfig(weighting="linear"))
    assert reference == reference_weights(1, 2)
    assert linear == linear_weights(1, 3)
    assert problem_weights(1, 0, RasftConfig(weighting="linear"), num_sampled=3) == (
        linear_weights(1, 3)
    )
    with pytest.raises(ValueError, match="unknown weighting"):
        problem_weights(1, 0, replace(RasftConfig(), weighting="other"))


def test_jaccard_identical_and_disjoint():
    text = "we add two and three to get five"
    assert word_trigram_jaccard(text, text) == 1.0
    assert word_trigram_jaccard(text, "completely other words in this one") == 0.0
    assert word_trigram_jaccard("A b C d", "a B c D") == 1.0


def test_jaccard_of_short_texts():
    assert word_trigram_jaccard("42", "42") == 1.0
    assert word_trigram_jaccard("42", "43") == 0.0
    assert word_trigram_jaccard("", "") == 1.0
    assert word_trigram_jaccard("", "42") == 0.0
    assert word_trigram_jaccard("x = 5", "x = 5") == 1.0


def test_dedup_identical_counts_once_and_different_are_kept():
    same = "first add the numbers then divide by two"
    other = "multiply everything by seven and subtract one at the end"
    assert deduplicate_rollouts([same, same, same], 0.82) == [0]
    assert deduplicate_rollouts([same, other, same], 0.82) == [0, 1]
    assert deduplicate_rollouts([], 0.82) == []


def test_dedup_threshold_edge_is_inclusive():
    a = "one two three four five"
    b = "one two three four six"
    similarity = word_trigram_jaccard(a, b)
    assert similarity == pytest.approx(2 / 4)
    assert deduplicate_rollouts([a, b], similarity) == [0]
    assert deduplicate_rollouts([a, b], similarity + 1e-9) == [0, 1]


def test_solvability_histogram():
    assert solvability_histogram([0, 3, 3, 1, 2, 3], 3) == [1, 1, 1, 3]
    assert solvability_histogram([], 2) == [0, 0, 0]
    with pytest.raises(ValueError, match="outside"):
        solvability_histogram([4], 3)
