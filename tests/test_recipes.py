"""Every shipped recipe loads with the strict loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from rasft_mlx.config import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe.training.mode in ("sft", "dft", "sft_kl", "asft", "profit", "rasft")


def test_gsm8k_and_quickstart_recipes_run_rasft():
    names = {p.name for p in RECIPES}
    assert {"gsm8k.yaml", "quickstart.yaml"} <= names
    for name in ("gsm8k.yaml", "quickstart.yaml"):
        assert load_recipe(RECIPES[0].parent / name).training.mode == "rasft"
