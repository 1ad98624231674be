"""`rasft-mlx plan --gauges N`: the first refresh's mechanism gauges on held-out problems."""

from __future__ import annotations

import numpy as np
import yaml
from mlx.utils import tree_flatten
from typer.testing import CliRunner

from rasft_mlx.experiments.mechanism_probe import group_gauges, probe_problems
from rasft_mlx.experiments.plan import build_plan
from rasft_mlx.experiments.plan_report import plan_rows
from rasft_mlx.rasft.rollouts import Rollout
from rasft_mlx.recipe.config import recipe_from_dict
from rasft_mlx.training.run_data import load_run_data

TEXTS = [
    "First add the apples to the pears, which gives twelve, so the answer is 12.",
    "Counting every basket one by one we reach a total of twelve fruits: 12.",
    "Twelve is what remains after the farmer sells half of his crop today, 12.",
    "The sum of both numbers written out in full comes to exactly twelve, 12.",
]


def rollouts(problem_id: str, correct: list[bool]) -> list[Rollout]:
    return [
        Rollout(problem_id, i, TEXTS[i], (1, 2, 3), False, "12", ok, "correct" if ok else "wrong")
        for i, ok in enumerate(correct)
    ]


def make_recipe(model_dir, data=None, val_every=0, k=3, **rasft):
    return recipe_from_dict(
        {
            "model": {"path": str(model_dir)},
            "data": {
                "synthetic": {"n_train": 16, "n_test": 4, "n_validation": 6, "max_level": 1},
                "max_seq_len": 256,
                **(data or {}),
            },
            "lora": {"rank": 4},
            "training": {"mode": "rasft", "batch_size": 4},
            "rollout": {"k": k, "max_new_tokens": 12},
            "rasft": rasft,
            "eval": {"max_new_tokens": 8, "val_every": val_every},
        }
    )


def test_group_gauges_count_mixed_groups_trained_rollouts_and_rft_by_hand(tiny_llama_dir):
    """Four problems at K = 4: two right of four (mixed), one of four (mixed), none, all four.
    Only the mixed groups' correct samples train under the authors' weighting (3 of 16); RFT
    trains every correct sample (2 + 1 + 4 = 7 of 16)."""
    verified = {
        "half": rollouts("half", [True, False, True, False]),
        "one": rollouts("one", [False, False, False, True]),
        "none": rollouts("none", [False] * 4),
        "all": rollouts("all", [True] * 4),
    }
    gauges, histogram, dropped, rft_share = group_gauges(verified, make_recipe(tiny_llama_dir, k=4))
    assert histogram == [1, 1, 1, 0, 1]  # 0, 1, 2 and 4 of 4 right
    assert gauges["mixed_group_share"] == 0.5
    assert gauges["trained_share"] == round(3 / 16, 4)
    assert rft_share == round(7 / 16, 4)
    assert dropped["wrong"] == 9 and dropped["untrained_positive"] == 4
    assert gauges["rollout_weight_median"] > 0 and gauges["rollout_weight_at_floor"] is not None
    linear = make_recipe(tiny_llama_dir, k=4, weighting="linear")
    gauges, _, _, _ = group_gauges(verified, linear)
    assert gauges["rollout_weight_at_floor"] is None  # the linear rule has no floor


def test_group_gauges_drop_a_correct_rollout_too_long_for_max_seq_len(tiny_llama_dir):
    """As a refresh does: prompt + rollout + end of turn over data.max_seq_len (256) trains
    nothing. Prompt 250 + 3 tokens + 1 = 254 fits; 253 + 3 + 1 = 257 does not."""
    verified = {
        "fits": rollouts("fits", [True, False, True, False]),
        "long": rollouts("long", [False, False, False, True]),
    }
    recipe = make_recipe(tiny_llama_dir, k=4)
    gauges, _, dropped, rft_share = group_gauges(verified, recipe, {"fits": 250, "long": 253})
    assert gauges["trained_share"] == round(2 / 8, 4)
    assert rft_share == round(2 / 8, 4)
    assert dropped["too_long"] == 1
    gauges, _, dropped, _ = group_gauges(verified, recipe, {"fits": 250, "long": 252})
    assert gauges["trained_share"] == round(3 / 8, 4) and "too_long" not in dropped


def test_probe_problems_are_held_out(tiny_llama_dir):
    recipe = make_recipe(tiny_llama_dir)
    problems, source = probe_problems(recipe, 4)
    train, test = load_run_data(recipe)
    assert source == "synthetic-validation" and len(problems) == 4
    held_out = {p.question for p in problems}
    assert not held_out & {p.question for p in train + test}
    fraction = make_recipe(tiny_llama_dir, data={"validation_fraction": 0.25}, val_every=4)
    problems, source = probe_problems(fraction, 3)
    train, _ = load_run_data(fraction)
    assert source == "the validation set" and len(problems) == 3
    assert not {p.question for p in problems} & {p.question for p in train}


def test_plan_with_gauges_rolls_out_held_out_problems_and_leaves_the_model(tiny_llama_dir):
    from rasft_mlx.models.adapters import apply_adapters
    from rasft_mlx.models.loading import load_model
    from rasft_mlx.training.checkpoint import mlx_random_state

    recipe = make_recipe(tiny_llama_dir)
    loaded = load_model(recipe.model)
    apply_adapters(loaded.model, recipe.lora)
    before = {k: np.array(v) for k, v in tree_flatten(loaded.model.trainable_parameters())}
    random_before = np.array(mlx_random_state())
    plan = build_plan(recipe, loaded=loaded, gauge_problems=5)
    probe = plan.mechanism
    assert probe.problems == 5 and probe.k == 3 and probe.generated == 15
    assert sum(probe.solvability_histogram) == 5
    assert probe.generated_tokens > 0
    assert np.array_equal(np.array(mlx_random_state()), random_before)
    after = dict(tree_flatten(loaded.model.trainable_parameters()))
    assert all(np.array_equal(np.array(after[k]), v) for k, v in before.items())
    rows = dict(plan_rows(plan))
    assert "synthetic-validation" in rows["mechanism probe"]
    assert "mixed groups" in " ".join(rows)
    if not probe.gauges["mixed_group_share"]:  # a random tiny model solves nothing
        assert "act on nothing" in rows["  mixed groups"]


def test_plan_command_prints_the_gauges(tiny_llama_dir, tmp_path):
    from rasft_mlx.cli import app

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(tiny_llama_dir)},
                "data": {"synthetic": {"n_train": 8, "n_test": 2, "max_level": 1}},
                "lora": {"rank": 4},
                "training": {"mode": "rasft", "batch_size": 4},
                "rollout": {"k": 2, "max_new_tokens": 6},
                "eval": {"max_new_tokens": 4},
            }
        )
    )
    args = ["plan", str(recipe), "--probe-steps", "0", "--gauges", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "mechanism probe" in result.output and "rollouts trained" in result.output

    assert build_plan(make_recipe(tiny_llama_dir)).mechanism is None  # --gauges 0
