"""The mechanism gauges of a refresh, against counts worked out by hand."""

from __future__ import annotations

import pytest

from rasft_mlx.rasft.gauges import gauges_text, mechanism_gauges, rollout_weight_floor
from rasft_mlx.rasft.weights import reference_weights
from rasft_mlx.recipe.config import RasftConfig


def test_gauges_by_hand():
    # K = 4, five problems: 0/4, 1/4, 2/4, 4/4, 3/4 correct -> three mixed of five.
    # 20 generated, 4 trained at 0.005, 0.005, 0.01, 0.02 -> median 0.0075, half at the floor.
    gauges = mechanism_gauges([0, 1, 2, 4, 3], 4, 20, [0.005, 0.01, 0.005, 0.02], 0.005)
    assert gauges == {
        "mixed_group_share": 0.6,
        "trained_share": 0.2,
        "rollout_weight_median": 0.0075,
        "rollout_weight_at_floor": 0.5,
    }
    assert gauges_text(gauges, 0.005) == (
        "60% mixed groups, 20% of rollouts trained, median weight 0.0075 (50% at the floor 0.005)"
    )


def test_an_idle_refresh_reads_as_idle():
    gauges = mechanism_gauges([0, 0, 0], 2, 6, [], 0.005)
    assert gauges == {
        "mixed_group_share": 0.0,
        "trained_share": 0.0,
        "rollout_weight_median": None,
        "rollout_weight_at_floor": None,
    }
    assert gauges_text(gauges, 0.005) == "0% mixed groups, 0% of rollouts trained"
    assert mechanism_gauges([], 2, 0, [], None)["mixed_group_share"] is None


def test_the_floor_is_the_lowest_weight_the_reference_rule_gives():
    cfg = RasftConfig()
    floor = rollout_weight_floor(cfg)
    assert floor == pytest.approx(0.25 * 0.02)
    # K = 2, one right: rewards (expert 2, right 1, wrong 0) -> the right one's z is 0, its
    # advantage tanh(0) = 0, clipped up to the floor: the setting where RASFT sat idle.
    [weight] = reference_weights(1, 1, cfg, num_sampled=2).rollout_weights
    assert weight == pytest.approx(floor)
    # K = 4, three right: 0.00509 each, just above the floor, not at it.
    weights = reference_weights(3, 1, cfg, num_sampled=4).rollout_weights
    gauges = mechanism_gauges([1, 3], 4, 6, [weight, *weights], floor)
    assert gauges["rollout_weight_at_floor"] == 0.25
