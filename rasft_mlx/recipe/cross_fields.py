"""The recipe's constraints between fields: orderings, windows, and keys that only go together."""

from __future__ import annotations

import functools

from rasft_mlx.recipe.dataset_config import DatasetSource
from rasft_mlx.recipe.typed_fields import RecipeError

_ORDERED_PAIRS = (
    ("data.synthetic.min_level", "data.synthetic.max_level", "<="),
    ("data.synthetic.ood_min_level", "data.synthetic.ood_max_level", "<="),
    ("data.synthetic.retention_min_level", "data.synthetic.retention_max_level", "<="),
    ("rasft.r_min", "rasft.r_max", "<="),
    ("rasft.ratio_min", "rasft.ratio_max", "<="),
    ("rasft.rollout_adv_floor", "rasft.rollout_adv_cap", "<="),
    ("rasft.easy_quantile", "rasft.hard_quantile", "<"),
)
_UNIT_WINDOWS = ("rasft.mid_window_start", "rasft.mid_window_end")


def check_cross_fields(recipe, source: str, overridden: dict[str, str]) -> None:
    """Orderings between a Recipe's fields; an overridden key's --set is blamed before the file."""

    def lookup(path: str):
        return functools.reduce(getattr, path.split("."), recipe)

    for lower, upper, op in _ORDERED_PAIRS:
        lo, hi = lookup(lower), lookup(upper)
        if lo > hi or (op == "<" and lo == hi):
            blamed = overridden.get(lower) or overridden.get(upper) or source
            raise RecipeError(f"{blamed}: '{lower}' ({lo}) must be {op} '{upper}' ({hi})")
    if recipe.rasft.schedule == "authors":
        path = "training.epochs"
        if lookup(path) != 1:
            raise RecipeError(
                f"{overridden.get(path, source)}: '{path}' must be 1 with "
                f"rasft.schedule 'authors' (one pass over the data), got {lookup(path)}"
            )
    for path in _UNIT_WINDOWS:
        lo, hi = lookup(path)
        if not 0.0 <= lo < hi <= 1.0:
            raise RecipeError(
                f"{overridden.get(path, source)}: '{path}' must be [lo, hi] with "
                f"0 <= lo < hi <= 1, got [{lo}, {hi}]"
            )
    if recipe.rasft.warmup_epochs and not recipe.rasft.warmup_epochs < recipe.training.epochs:
        blamed = (
            overridden.get("rasft.warmup_epochs") or overridden.get("training.epochs") or source
        )
        raise RecipeError(
            f"{blamed}: 'rasft.warmup_epochs' ({recipe.rasft.warmup_epochs}) must be less than "
            f"'training.epochs' ({recipe.training.epochs}): a run needs an epoch with rollouts"
        )
    if recipe.model.adapter and recipe.lora.type != "lora":
        blamed = overridden.get("lora.type") or overridden.get("model.adapter") or source
        raise RecipeError(
            f"{blamed}: 'model.adapter' trains a new LoRA on top of the start, so 'lora.type' "
            f"must be lora, got {recipe.lora.type!r}"
        )
    for path in ("data.train", "data.test"):
        spec = lookup(path)
        if isinstance(spec, DatasetSource) and not spec.hub.strip():
            blamed = overridden.get(f"{path}.hub") or overridden.get(path) or source
            raise RecipeError(
                f"{blamed}: '{path}.hub' is required: a Hub dataset id (openai/gsm8k), a local "
                "dataset directory, or a builder (parquet, csv, json) with data_files"
            )
