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


def test_rollout_cost_prices_the_untrained_tokens_at_the_refresh_decode_time():
    from rasft_mlx.rasft.gauges import cost_text, rollout_cost, total_rollout_cost

    cost = rollout_cost(80.0, generated_tokens=10_000, trained_tokens=1_500)
    assert cost == {
        "rollout_seconds": 80.0,
        "generated_tokens": 10_000,
        "trained_tokens": 1_500,
        "unused_seconds": 68.0,  # 85 % of the tokens train nothing: 0.85 x 80 s
    }
    assert rollout_cost(3.0, 0, 0)["unused_seconds"] == 0.0
    total = total_rollout_cost([cost, rollout_cost(20.0, 1_000, 1_000)])
    assert total == {
        "refreshes": 2,
        "rollout_seconds": 100.0,
        "generated_tokens": 11_000,
        "trained_tokens": 2_500,
        "unused_seconds": 68.0,
    }
    assert total_rollout_cost([]) is None
    assert cost_text(cost) == (
        "80 s: 1,500 of 10,000 generated tokens trained; 68 s on rollouts that train nothing"
    )


def test_a_run_summary_adds_up_its_refreshes_costs(tiny_llama_dir, tmp_path):
    import json

    from rich.console import Console
    from test_distributed import recipe_file

    from rasft_mlx.commands.train import run_training
    from rasft_mlx.recipe.config import load_recipe

    small = ["data.synthetic.n_train=12", "training.epochs=1"]
    recipe = load_recipe(recipe_file(tmp_path, tiny_llama_dir, mode="rasft"), small)
    run_training(recipe, tmp_path / "run", Console(quiet=True))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    refreshes = [r for r in map(json.loads, lines) if r["event"] == "refresh"]
    assert refreshes
    for record in refreshes:
        cost = record["cost"]
        assert 0 <= cost["trained_tokens"] <= cost["generated_tokens"]
        unused = cost["rollout_seconds"] * (1 - cost["trained_tokens"] / cost["generated_tokens"])
        assert cost["unused_seconds"] == pytest.approx(unused, abs=0.02)
        assert (cost["trained_tokens"] == 0) == (record["rollouts_trained"] == 0)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rollout_cost"]["refreshes"] == len(refreshes)
    assert summary["rollout_cost"]["generated_tokens"] == sum(
        r["cost"]["generated_tokens"] for r in refreshes
    )
    from rasft_mlx.reporting.run_report import build_run_report

    page = build_run_report(tmp_path / "run")
    total = summary["rollout_cost"]
    assert f"{total['generated_tokens']:,} generated tokens were trained on" in page
