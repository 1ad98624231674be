"""Rollout selection: all, random fraction, and the NLL bands on a known calibration list."""

from __future__ import annotations

import numpy as np
import pytest

from rasft_mlx.rasft.routing import (
    calibrate_thresholds,
    mid_window,
    route_by_nll,
    select_all,
    select_fraction,
)
from rasft_mlx.recipe.config import RasftConfig

NLLS = [float(v) for v in range(1, 101)]
PROBLEMS = {f"p{int(v):03d}": v for v in NLLS}


def ids_with_nll(lo: float, hi: float) -> set[str]:
    return {pid for pid, nll in PROBLEMS.items() if lo <= nll <= hi}


def test_select_all_keeps_order():
    assert select_all(["b", "a", "c"]) == ["b", "a", "c"]


def test_select_fraction_proportion_and_order():
    ids = [f"id{i:04d}" for i in range(1000)]
    chosen = select_fraction(ids, 0.35, np.random.default_rng(0))
    assert len(chosen) == 350
    assert len(set(chosen)) == 350
    assert chosen == sorted(chosen)
    assert select_fraction(ids, 0.0, np.random.default_rng(0)) == []
    assert select_fraction(ids, 1.0, np.random.default_rng(0)) == ids


def test_select_fraction_rounds_stochastically_to_the_expected_count():
    rng = np.random.default_rng(1)
    counts = [len(select_fraction(list("abcdefghij"), 0.03, rng)) for _ in range(4000)]
    assert set(counts) <= {0, 1}
    assert np.mean(counts) == pytest.approx(0.3, abs=0.03)


def test_select_fraction_rejects_bad_fractions():
    with pytest.raises(ValueError, match="fraction"):
        select_fraction(["a"], 1.5, np.random.default_rng(0))


def test_select_fraction_is_deterministic_given_the_seed():
    ids = [str(i) for i in range(200)]
    first = select_fraction(ids, 0.35, np.random.default_rng(7))
    second = select_fraction(ids, 0.35, np.random.default_rng(7))
    assert first == second


def test_calibrated_thresholds_are_linear_quantiles():
    thresholds = calibrate_thresholds(list(reversed(NLLS)), RasftConfig())
    assert thresholds.easy == pytest.approx(10.9)
    assert thresholds.hard == pytest.approx(90.1)
    assert thresholds.mid_start == pytest.approx((20.8, 45.55))
    assert thresholds.mid_end == pytest.approx((50.5, 75.25))
    assert thresholds.nll_at(0.5) == pytest.approx(50.5)
    assert thresholds.calibration_nll == tuple(NLLS)


def test_calibration_rejects_empty_and_non_finite():
    with pytest.raises(ValueError, match="at least one"):
        calibrate_thresholds([])
    with pytest.raises(ValueError, match="finite"):
        calibrate_thresholds([1.0, float("nan")])


@pytest.mark.parametrize(
    ("progress", "expected"),
    [(0.0, (0.20, 0.45)), (0.5, (0.35, 0.60)), (1.0, (0.50, 0.75)), (-1.0, (0.20, 0.45))],
)
def test_mid_window_slides_linearly(progress, expected):
    assert mid_window(progress, RasftConfig()) == pytest.approx(expected)


def route(progress=0.0, seed=0, pool=frozenset(), cfg=None):
    cfg = cfg or RasftConfig()
    thresholds = calibrate_thresholds(NLLS, cfg)
    rng = np.random.default_rng(seed)
    return route_by_nll(PROBLEMS, thresholds, progress, cfg, rng, hard_pool=set(pool))


def test_bands_at_the_start_of_training():
    decision = route(progress=0.0)
    mid = ids_with_nll(20.8, 45.55)
    assert len(mid) == 25
    assert set(decision.easy_ids) == ids_with_nll(1, 10.9)
    assert set(decision.rollout_ids) <= mid
    assert len(decision.rollout_ids) in (8, 9)
    assert set(decision.hard_ids) == ids_with_nll(45.56, 90.1)
    assert set(decision.other_ids) == (
        ids_with_nll(11, 20) | ids_with_nll(91, 100) | (mid - set(decision.rollout_ids))
    )
    assert decision.window_quantiles == pytest.approx((0.20, 0.45))
    assert decision.window_nll == pytest.approx((20.8, 45.55))
    assert decision.hard_pool == frozenset(decision.hard_ids)


def test_bands_follow_the_window_mid_training_and_at_the_end():
    middle = route(progress=0.5)
    assert set(middle.rollout_ids) <= ids_with_nll(35.65, 60.4)
    assert set(middle.hard_ids) == ids_with_nll(61, 90.1)
    end = route(progress=1.0)
    assert set(end.rollout_ids) <= ids_with_nll(50.5, 75.25)
    assert set(end.hard_ids) == ids_with_nll(76, 90.1)


def test_every_problem_lands_in_exactly_one_group():
    decision = route(progress=0.3, pool={"p050", "p095"})
    groups = [decision.easy_ids, decision.rollout_ids, decision.hard_ids, decision.other_ids]
    flat = [pid for group in groups for pid in group]
    assert len(flat) == len(set(flat))
    assert set(flat) == set(PROBLEMS)


def test_routing_is_deterministic_given_the_seed():
    pool = {f"p{i:03d}" for i in range(60, 90)}
    assert route(progress=0.4, seed=3, pool=pool) == route(progress=0.4, seed=3, pool=pool)


def test_hard_pool_probing_draws_the_fraction_and_keeps_the_pool():
    pool = ids_with_nll(46, 90)  # all inside the probe band at progress 0
    decision = route(pool=pool, cfg=RasftConfig(hard_probe_fraction=0.2))
    assert len(decision.probed_ids) == 9  # 20 % of the 45 (none of them is in the mid window)
    assert set(decision.probed_ids) <= pool
    assert decision.rollout_ids[-9:] == decision.probed_ids
    assert decision.released_ids == ()
    assert decision.hard_pool == frozenset(pool) | frozenset(decision.hard_ids)


def test_probes_are_re_scored_by_nll_as_the_authors_do():
    """Window at progress 0 is NLL [20.8, 45.55], q_hard 90.1: a probe now below the window
    leaves the pool, one in [20.8, 90.1] gets rollouts, one above 90.1 stays without them."""
    pool = {"p005", "p030", "p080", "p095"}
    decision = route(pool=pool, cfg=RasftConfig(hard_probe_fraction=1.0, selection_fraction=0.0))
    assert decision.released_ids == ("p005",)
    assert set(decision.probed_ids) == {"p030", "p080"}
    assert "p005" in decision.easy_ids and "p095" in decision.other_ids
    assert "p080" not in decision.hard_ids
    assert decision.hard_pool == (frozenset(pool) - {"p005"}) | frozenset(decision.hard_ids)


def test_no_probing_when_the_fraction_is_zero():
    decision = route(pool={"p080"}, cfg=RasftConfig(hard_probe_fraction=0.0))
    assert decision.probed_ids == ()
    assert "p080" in decision.hard_ids
