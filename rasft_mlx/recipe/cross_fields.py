"""The recipe's constraints between fields: orderings, windows, and keys that only go together."""

from __future__ import annotations

import functools

from rasft_mlx.recipe.dataset_config import DatasetSource, validation_is_test
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
            f"must be lora, got {recipe.lora.type!r} (to fine-tune every weight from a trained "
            "LoRA, export it fused, `rasft-mlx export RUN --format fused`, and pass that folder "
            "as model.path)"
        )
    _check_full_finetune(recipe, source, overridden)
    for path in ("data.train", "data.test", "data.validation"):
        spec = lookup(path)
        if isinstance(spec, DatasetSource) and not spec.hub.strip():
            blamed = overridden.get(f"{path}.hub") or overridden.get(path) or source
            raise RecipeError(
                f"{blamed}: '{path}.hub' is required: a Hub dataset id (openai/gsm8k), a local "
                "dataset directory, or a builder (parquet, csv, json) with data_files"
            )
    _check_validation(recipe, source, overridden)


def _check_full_finetune(recipe, source: str, overridden: dict[str, str]) -> None:
    """lora.type full trains the weights themselves: the adapter-only keys must stay unset."""
    lora = recipe.lora
    if lora.type != "full":
        return
    for path, value, why in (
        ("lora.keys", lora.keys, "a full fine-tune trains every module of the trained layers"),
        ("lora.dropout", lora.dropout, "it is the adapters' dropout; a full fine-tune has none"),
    ):
        if value:
            blamed = overridden.get(path) or overridden.get("lora.type") or source
            raise RecipeError(
                f"{blamed}: '{path}' ({value!r}) does not apply to 'lora.type' full: {why}; "
                "remove it"
            )


def _check_validation(recipe, source: str, overridden: dict[str, str]) -> None:
    """Validation during training: a validation set exactly when eval.val_every asks for one, and
    never the test set; keep_best and val_pass_at_1_problems only with the validation they use."""

    def blamed(*paths: str) -> str:
        return next((overridden[p] for p in paths if p in overridden), source)

    data, every = recipe.data, recipe.eval.val_every
    given = data.validation is not None or data.validation_fraction > 0
    if data.validation is not None and data.validation_fraction > 0:
        raise RecipeError(
            f"{blamed('data.validation', 'data.validation_fraction')}: 'data.validation' and "
            "'data.validation_fraction' both choose the validation set; set one of them"
        )
    if every and not given:
        raise RecipeError(
            f"{blamed('eval.val_every')}: 'eval.val_every' ({every}) needs a validation set: "
            "'data.validation' (a source, e.g. synthetic-validation) or "
            "'data.validation_fraction' (e.g. 0.05 of the train problems)"
        )
    if given and not every:
        key = "data.validation" if data.validation is not None else "data.validation_fraction"
        raise RecipeError(
            f"{blamed(key, 'eval.val_every')}: '{key}' is set but 'eval.val_every' is 0: set "
            "'eval.val_every' to validate every N steps, or remove it"
        )
    if recipe.eval.val_pass_at_1_problems and not every:
        raise RecipeError(
            f"{blamed('eval.val_pass_at_1_problems', 'eval.val_every')}: "
            "'eval.val_pass_at_1_problems' is measured at the validations: it needs "
            "'eval.val_every' > 0 and a validation set"
        )
    keep = recipe.output.keep_best
    needs = {"val_loss": "eval.val_every", "val_pass_at_1": "eval.val_pass_at_1_problems"}
    if keep in needs and not (every if keep == "val_loss" else recipe.eval.val_pass_at_1_problems):
        raise RecipeError(
            f"{blamed('output.keep_best', needs[keep])}: 'output.keep_best' {keep} needs that "
            f"validation on: set '{needs[keep]}' > 0 (and a validation set: 'data.validation' "
            "or 'data.validation_fraction')"
        )
    reason = validation_is_test(data)
    if reason:
        raise RecipeError(f"{blamed('data.validation', 'data.test')}: {reason}")
