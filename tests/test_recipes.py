"""Every shipped recipe loads with the strict loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from rasft_mlx.recipe.config import load_recipe, recipe_to_dict

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


def test_the_authors_protocol_comparison_reads_beside_the_main_one():
    """Same base-model evaluation (so --base-from applies), same step budget, and the protocol
    holds every key the authors fix except the ones the recipe names as changed for this CPU."""
    from rasft_mlx.evaluation.extra_sets import load_extra_sets
    from rasft_mlx.experiments.compare import plan_budget
    from rasft_mlx.experiments.compare_base import evaluation_identity, identity_differences
    from rasft_mlx.recipe.protocols import protocol_report
    from rasft_mlx.training.run_data import load_run_data

    folder = RECIPES[0].parent
    main = load_recipe(folder / "compare-synthetic.yaml")
    authors = load_recipe(folder / "compare-synthetic-authors.yaml")
    identities = []
    for recipe in (main, authors):
        train, test = load_run_data(recipe)
        identities.append(evaluation_identity(recipe, test, load_extra_sets(recipe)))
    assert identity_differences(*identities) == []
    assert plan_budget(main, 96, "steps").max_steps == plan_budget(authors, 288, "steps").max_steps
    assert load_run_data(authors)[0][:96] == load_run_data(main)[0]
    _, changed = protocol_report(authors)
    assert sorted(c.split(":")[0] for c in changed) == [
        "eval.max_new_tokens",
        "eval.samples",
        "rollout.max_new_tokens",
        "training.mode",
    ]


def test_the_readme_states_the_quickstart_recipe_it_measured():
    """README's quickstart figures name the recipe's budget: a changed recipe fails here until
    the figures are measured again and the sentence updated."""
    import re

    readme = (RECIPES[0].parents[1] / "README.md").read_text()
    recipe = load_recipe(RECIPES[0].parent / "quickstart.yaml")
    text = " ".join(readme.split())
    found = re.search(
        r"on (\d+) problems of the built-in synthetic arithmetic task for (\d+) epochs? "
        r"\(K=(\d+) rollouts per selected problem\) and evaluates it on (\d+) held-out problems",
        text,
    )
    assert found, "README's quickstart sentence no longer names its budget"
    stated = tuple(int(x) for x in found.groups())
    synthetic = recipe.data.synthetic
    assert stated == (synthetic.n_train, recipe.training.epochs, recipe.rollout.k, synthetic.n_test)
    assert re.search(r"Measured on main on \d{4}-\d{2}-\d{2}, on the [^:]+: \d+ s", text)


def test_the_staged_authors_recipe_is_a_variant_of_the_staged_one():
    """recipes/staged-authors.yaml pairs with recipes/staged.yaml (`compare --variant`): the same
    start, test problems and eval; what differs is the authors' protocol, and one pass of 20 steps
    over the same 160 demos instead of the modes' 2 epochs (40 steps)."""
    from rasft_mlx.data.problem import problems_digest
    from rasft_mlx.evaluation.extra_sets import load_extra_sets
    from rasft_mlx.experiments.compare_arms import pairing_differences
    from rasft_mlx.recipe.protocols import protocol_report
    from rasft_mlx.training.run_data import load_run_data
    from rasft_mlx.training.step_plan import planned_steps

    folder = RECIPES[0].parent
    main = load_recipe(folder / "staged.yaml")
    authors = load_recipe(folder / "staged-authors.yaml")
    assert pairing_differences(main, authors) == []
    (main_train, main_test), (train, test) = load_run_data(main), load_run_data(authors)
    assert train == main_train and problems_digest(test) == problems_digest(main_test)
    extra = [(n, problems_digest(p)) for n, p in load_extra_sets(authors)]
    assert extra == [(n, problems_digest(p)) for n, p in load_extra_sets(main)]
    assert (main.protocol, authors.protocol, authors.rasft.schedule) == (
        "project",
        "authors",
        "authors",
    )
    _, changed = protocol_report(authors)
    assert sorted(c.split(":")[0] for c in changed) == [
        "eval.max_new_tokens",
        "eval.samples",
        "rollout.max_new_tokens",
    ]
    assert (planned_steps(160, main), planned_steps(160, authors)) == (40, 20)
    header = (folder / "staged.yaml").read_text()
    assert "--variant rasft-authors=recipes/staged-authors.yaml" in header


def test_the_staged_quick_recipes_pair_and_shrink_only_the_sizes():
    """`compare recipes/staged.yaml --quick --variant rasft-authors=recipes/staged-authors.yaml`
    takes both -quick files: they pair with each other, and differ from the full recipes only
    in the numbers of problems (training, test sets, drift) and the run name, and staged-quick
    in trimming a capped refresh (the default; staged.yaml pins it off for its older seeds)."""
    from rasft_mlx.experiments.compare_arms import pairing_differences
    from rasft_mlx.training.checkpoint import recipe_differences

    folder = RECIPES[0].parent
    quick = load_recipe(folder / "staged-quick.yaml")
    authors = load_recipe(folder / "staged-authors-quick.yaml")
    assert pairing_differences(quick, authors) == []
    sizes = {
        "data.synthetic.n_train",
        "data.synthetic.n_test",
        "data.synthetic.n_ood",
        "data.synthetic.n_retention",
        "eval.drift_problems",
        "output.name",
    }
    for full_name, small in (("staged.yaml", quick), ("staged-authors.yaml", authors)):
        full = load_recipe(folder / full_name)
        changed = {
            key for key, _, _ in recipe_differences(recipe_to_dict(full), recipe_to_dict(small))
        }
        trimmed = {"rasft.trim_capped_refresh"} if full_name == "staged.yaml" else set()
        assert changed == sizes | trimmed, full_name
    assert (
        quick.rasft.trim_capped_refresh
        and not load_recipe(folder / "staged.yaml").rasft.trim_capped_refresh
    )
    assert quick.data.synthetic.n_test == 100 and quick.data.synthetic.n_train == 64


def test_the_quickstart_starts_from_the_adapter_kept_in_git():
    """The README's first command trains from `model.adapter` on a fresh clone: that adapter must
    be in the checkout, and be the one whose sha256 its README records (the measured start)."""
    import re

    from rasft_mlx.models.start_adapter import adapter_directory, weights_digest

    root = RECIPES[0].parents[1]
    adapter = load_recipe(RECIPES[0].parent / "quickstart.yaml").model.adapter
    assert adapter and not Path(adapter).is_absolute()
    directory = adapter_directory(root / adapter)
    recorded = re.search(r"`([0-9a-f]{64})`", (root / adapter / "README.md").read_text())
    assert recorded and weights_digest(directory) == recorded.group(1)
