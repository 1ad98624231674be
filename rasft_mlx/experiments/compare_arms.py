"""The arms of a comparison: the recipe's training modes, plus variants with recipes of their own.

An arm is what a comparison trains over its seeds and pairs with every other arm: a mode of
`--modes` (the compare recipe with `training.mode` set), or a variant, `--variant LABEL=RECIPE`,
trained with its own recipe (e.g. RASFT under `protocol: authors`, which changes more than the
mode). A variant is paired on the same test problems, so it must start from the same model and be
evaluated on the same test sets with the same settings: `pairing_differences` names every key
where it does not, and the comparison refuses it. Its resolved recipe is saved in the compare dir
(`compare-variant-LABEL.yaml`) beside the comparison's, and a later run of the comparison with a
changed variant recipe is refused, as a changed compare recipe is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from rasft_mlx.recipe.config import MODES, Recipe, RecipeError, load_recipe, recipe_to_dict
from rasft_mlx.recipe.dataset_config import source_identity
from rasft_mlx.training.checkpoint import recipe_differences

VARIANT_FILE = "compare-variant-{label}.yaml"
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
# Keys every arm shares, so that their outcomes pair problem by problem: the starting model, the
# test sets and how they are read and graded, and the evaluation (before_training is switched off
# in every run; the comparison evaluates the start once).
PAIRED_KEYS = (
    "model",
    "data.test",
    "data.max_test",
    "data.format",
    "data.grader",
    "data.system_prompt",
    "eval",
)
UNPAIRED_KEYS = ("eval.before_training",)
# Keys a comparison sets in every run (or that only name where it writes): not a variant's own.
SET_PER_RUN = ("training.mode", "training.seed", "output")
# The synthetic generator's settings that decide its test-side sets (test, ood, retention);
# compared when a test set is synthetic. n_train and n_validation decide only the train side.
SYNTHETIC_TEST_KEYS = tuple(
    f"data.synthetic.{key}"
    for key in (
        "seed",
        "n_test",
        "min_level",
        "max_level",
        "extra_steps",
        "solution_styles",
        "style_per_line",
        "n_ood",
        "ood_min_level",
        "ood_max_level",
        "n_retention",
        "retention_min_level",
        "retention_max_level",
    )
)


class CompareError(ValueError):
    """An invalid comparison request (a mode, a variant), or a compare dir made with a different
    recipe."""


@dataclass(frozen=True)
class Arm:
    """One arm: `name` labels its runs (`NAME-seedS/`) and its rows; `recipe` is what it trains
    (its training.mode, seed and step cap are set per run); `source` is the recipe's file."""

    name: str
    recipe: Recipe
    source: str
    variant: bool = False

    @property
    def mode(self) -> str:
        return self.recipe.training.mode

    def describe(self, main: Recipe) -> dict:
        """The arm's entry in results.json's `arms`; a variant's names the keys where its recipe
        differs from the comparison's (`main`), with both values."""
        entry = {"arm": self.name, "mode": self.mode, "recipe": self.source}
        entry["variant"] = self.variant
        if self.variant:
            entry["saved_recipe"] = VARIANT_FILE.format(label=self.name)
            entry["differences"] = {
                key: [ours, theirs]
                for key, ours, theirs in recipe_differences(
                    plain_recipe(main), plain_recipe(self.recipe)
                )
                if not _within(key, SET_PER_RUN)
            }
        return entry


def mode_arms(recipe: Recipe, modes: Sequence[str], source: str) -> list[Arm]:
    return [
        Arm(mode, replace(recipe, training=replace(recipe.training, mode=mode)), source)
        for mode in modes
    ]


def check_label(label: str, taken: Sequence[str]) -> None:
    """A label names run dirs and table rows: plain characters, and no clash (in any case, as a
    case-insensitive file system would see it) with a mode name or another arm."""
    if not LABEL_PATTERN.fullmatch(label):
        raise CompareError(
            f"--variant: the label {label!r} must be 1-40 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (it names the run dirs LABEL-seedS)"
        )
    clashes = [name for name in (*MODES, *taken) if name.lower() == label.lower()]
    if clashes:
        what = "a mode name" if clashes[0] in MODES else "another arm's label"
        raise CompareError(
            f"--variant: the label {label!r} clashes with {what} ({clashes[0]!r}); "
            "give the variant a label of its own, e.g. rasft-authors"
        )


def parse_variant(text: str) -> tuple[str, Path]:
    """`LABEL=RECIPE.yaml` -> (label, path)."""
    label, separator, path = text.partition("=")
    if not separator or not label.strip() or not path.strip():
        raise CompareError(
            f"--variant: expected LABEL=RECIPE.yaml (e.g. rasft-authors=recipes/staged-authors"
            f".yaml), got {text!r}"
        )
    return label.strip(), Path(path.strip())


def _uses_synthetic_tests(recipe: Recipe) -> bool:
    sources = [recipe.data.test, *recipe.eval.extra_sets]
    return any(source_identity(s, "test", recipe.data.format)[0] == "synthetic" for s in sources)


def plain_recipe(recipe: Recipe) -> dict:
    """The recipe as a saved recipe file reads back (a YAML round trip: tuples become lists)."""
    return yaml.safe_load(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))


def _within(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def pairing_differences(main: Recipe, variant: Recipe) -> list[tuple[str, object, object]]:
    """(key, main's value, the variant's value) for every key that must match for the arms'
    outcomes to pair: the model, the test sets (and the synthetic settings behind them) and the
    evaluation settings."""
    paired = list(PAIRED_KEYS)
    if _uses_synthetic_tests(main) or _uses_synthetic_tests(variant):
        paired += SYNTHETIC_TEST_KEYS
    return [
        (key, ours, theirs)
        for key, ours, theirs in recipe_differences(plain_recipe(main), plain_recipe(variant))
        if _within(key, paired) and not _within(key, UNPAIRED_KEYS)
    ]


def check_pairable(main: Recipe, main_source: str, variant: Recipe, variant_source: str) -> None:
    differences = pairing_differences(main, variant)
    if not differences:
        return
    lines = "\n".join(
        f"  {key}: {ours!r} ({main_source}) vs {theirs!r} ({variant_source})"
        for key, ours, theirs in differences
    )
    raise CompareError(
        f"--variant: {variant_source} cannot be paired with {main_source}: every arm must start "
        f"from the same model and be evaluated on the same test sets with the same eval "
        f"settings, and these keys differ:\n{lines}"
    )


def quick_variant(path: Path) -> Path:
    """The `--quick` recipe of `X.yaml`: the sibling `X-quick.yaml`."""
    quick = path.with_name(f"{path.stem}-quick{path.suffix}")
    if not quick.is_file():
        raise CompareError(f"--quick: {path} has no quick variant ({quick} does not exist)")
    return quick


def load_variants(
    specs: Sequence[str],
    main: Recipe,
    main_source: str,
    overrides: Sequence[str] = (),
    *,
    quick: bool = False,
) -> list[Arm]:
    """The arms of `--variant LABEL=RECIPE.yaml` options, each recipe read with the same `--set`
    overrides as the compare recipe and checked against it; `quick`: each recipe's `-quick`
    sibling, as `--quick` takes the compare recipe's."""
    arms: list[Arm] = []
    for spec in specs:
        label, path = parse_variant(spec)
        path = quick_variant(path) if quick else path
        check_label(label, [a.name for a in arms])
        try:
            recipe = load_recipe(path, overrides)
        except RecipeError as error:
            raise CompareError(f"--variant {label}: {error}") from error
        check_pairable(main, main_source, recipe, str(path))
        arms.append(Arm(label, recipe, str(path), variant=True))
    return arms


def check_variants(main: Recipe, main_source: str, variants: Sequence[Arm]) -> None:
    """The checks of `load_variants`, for variants a caller built itself."""
    for index, arm in enumerate(variants):
        check_label(arm.name, [a.name for a in variants[:index]])
        check_pairable(main, main_source, arm.recipe, arm.source)


def variant_cap(rule: str, cap: int | None, recipe: Recipe) -> int | None:
    """A variant's step cap: the comparison's (budget 'steps', the same for every arm) or, within
    it, the variant's own training.max_steps; under budget 'epochs' its own only."""
    own = recipe.training.max_steps
    if rule != "steps" or cap is None:
        return own
    return cap if own is None else min(cap, own)
