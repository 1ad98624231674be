"""Recipe schema: frozen dataclasses for every section of a training recipe, and its loader."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from rasft_mlx.recipe.cross_fields import check_cross_fields
from rasft_mlx.recipe.dataset_config import (  # noqa: F401  (re-exported: the recipe's data section)
    DEFAULT_SYSTEM_PROMPT,
    ColumnsConfig,
    DataConfig,
    DatasetSource,
    SyntheticConfig,
)
from rasft_mlx.recipe.eval_config import (  # noqa: F401  (re-exported: eval and output sections)
    AUTO_ROWS_HELP,
    KEEP_BEST,
    TRACKERS,
    EvalConfig,
    OutputConfig,
)
from rasft_mlx.recipe.protocols import PROTOCOLS, apply_protocol
from rasft_mlx.recipe.strict_yaml import load_yaml
from rasft_mlx.recipe.typed_fields import (
    RecipeError,
    apply_override,
    build_dataclass,
    check_leaf,
    constraint_text,
    field_meta,
    format_default,
    leaves,
    type_label,
)
from rasft_mlx.runtime.fileio import atomic_write_text

MODES = ("sft", "dft", "sft_kl", "asft", "profit", "rasft", "rft")
ROLLOUT_MODES = ("rasft", "rft")  # modes that refresh rollouts from the live policy


_range = field_meta


@dataclass(frozen=True)
class ModelConfig:
    path: str = field(
        default="builtin:smollm2-135m",
        metadata=_range(help="Hub repo id, local MLX/HF directory, .gguf file or builtin:NAME"),
    )
    dtype: str = field(
        default="auto",
        metadata=_range(
            choices=("auto", "float32", "bfloat16", "float16"),
            help="auto: float32 on CPU, the checkpoint's own dtype on a GPU",
        ),
    )
    dequantize: str = field(
        default="auto",
        metadata=_range(
            choices=("auto", "always", "never"),
            help="auto: dequantize on CPU (quantized matmuls are slow there), keep on a GPU",
        ),
    )
    revision: str | None = field(default=None, metadata=_range(help="Hub revision"))
    trust_remote_code: bool = False
    adapter: str | None = field(
        default=None,
        metadata=_range(
            help="start from a trained LoRA: a run dir or an mlx-lm adapters dir, fused into the "
            "base; the reference (ratio, KL, drift) is this starting policy"
        ),
    )


@dataclass(frozen=True)
class LoraConfig:
    type: str = field(
        default="lora",
        metadata=_range(
            choices=("lora", "dora", "full"),
            help="full: train the weights themselves (no adapters; the reference is a frozen "
            "copy of the starting weights)",
        ),
    )
    rank: int = field(default=16, metadata=_range(1))
    scale: float = field(
        default=2.0,
        metadata=_range(0.0, lo_open=True, help="mlx-lm's LoRA scale (PEFT's lora_alpha / r)"),
    )
    dropout: float = field(default=0.0, metadata=_range(0.0, 0.9))
    num_layers: int = field(
        default=-1, metadata=_range(-1, help="the last N transformer layers; -1 = every layer")
    )
    train_embeddings: bool = field(
        default=True,
        metadata=_range(
            help="type full: train the token embeddings and the output head too (false freezes "
            "them, as mlx-lm's full fine-tune); adapters never train them"
        ),
    )
    keys: tuple[str, ...] | None = field(
        default=None,
        metadata=_range(
            help="module paths inside a layer, e.g. self_attn.q_proj; None = all linear"
        ),
    )


@dataclass(frozen=True)
class TrainingConfig:
    mode: str = field(default="rasft", metadata=_range(choices=MODES))
    epochs: int = field(default=1, metadata=_range(1))
    max_steps: int | None = field(default=None, metadata=_range(1, help="optimizer steps cap"))
    batch_size: int = field(default=4, metadata=_range(1))
    grad_accumulation: int = field(default=1, metadata=_range(1))
    learning_rate: float = field(default=1e-4, metadata=_range(0.0, lo_open=True))
    min_lr_ratio: float = field(default=0.0, metadata=_range(0.0, 1.0))
    warmup_steps: int = field(default=10, metadata=_range(0))
    weight_decay: float = field(default=0.0, metadata=_range(0.0))
    adam_bias_correction: bool = field(
        default=True,
        metadata=_range(help="AdamW with bias correction (torch semantics); false = mlx's default"),
    )
    lr_schedule_steps: int | None = field(
        default=None,
        metadata=_range(1, help="cosine horizon in optimizer steps; None = the planned steps"),
    )
    loss_normalization: str = field(
        default="token_mean",
        metadata=_range(
            choices=("token_mean", "micro_batch_mean"),
            help="token_mean: over the optimizer step; micro_batch_mean: the authors' per "
            "micro-batch token mean divided by grad_accumulation",
        ),
    )
    grad_clip: float = field(default=1.0, metadata=_range(0.0, help="0 disables clipping"))
    grad_checkpoint: bool = field(
        default=False,
        metadata={"help": "recompute each layer's activations in the backward pass (less memory)"},
    )
    seed: int = 0
    kl_lambda: float = field(default=0.1, metadata=_range(0.0))
    profit_threshold: float = field(default=0.1, metadata=_range(0.0, 1.0))
    dft_factor: bool = True
    bucket_multiple: int = field(
        default=32, metadata=_range(1, help="pad sequence length up to a multiple of this")
    )
    log_every: int = field(default=1, metadata=_range(1))
    eval_every_epoch: bool = True
    on_nan: str = field(
        default="stop",
        metadata=_range(
            choices=("stop", "skip_batch"), help="non-finite loss or grad norm: stop or drop it"
        ),
    )


@dataclass(frozen=True)
class RolloutConfig:
    k: int = field(default=3, metadata=_range(1))
    temperature: float = field(default=0.9, metadata=_range(0.0))
    top_p: float = field(default=0.95, metadata=_range(0.0, 1.0, lo_open=True))
    repetition_penalty: float = field(default=1.1, metadata=_range(0.0, lo_open=True))
    repetition_scope: str = field(
        default="window",
        metadata=_range(
            choices=("window", "all"),
            help="tokens the penalty sees: window = mlx-lm's last 20; all = the whole prompt "
            "and output, as vLLM (the authors' sampler)",
        ),
    )
    max_new_tokens: int = field(default=1024, metadata=_range(1))
    max_new_tokens_per_demo_token: float = field(
        default=0.0,
        metadata=_range(
            0.0,
            help="0 = off; F: each problem's rollouts stop at min(max_new_tokens, "
            "ceil(F x its demo's response tokens), end-of-turn included), at least 16, so that "
            "a refresh spends fewer tokens on samples cut off before their answer",
        ),
    )
    batch_size: int = field(default=0, metadata=_range(0, help=AUTO_ROWS_HELP))


@dataclass(frozen=True)
class RasftConfig:
    weighting: str = field(default="reference", metadata=_range(choices=("reference", "linear")))
    r_min: float = 1.0
    r_max: float = 3.0
    pos_reward: float = 1.0
    neg_reward: float = 0.0
    adv_alpha: float = field(default=0.4, metadata=_range(0.0, lo_open=True))
    rollout_adv_coef: float = field(default=0.25, metadata=_range(0.0))
    rollout_adv_floor: float = 0.02
    rollout_adv_cap: float = 0.15
    max_negative_keep: int = field(default=3, metadata=_range(0))
    negative_similarity_max: float = field(
        default=0.88,
        metadata=_range(0.0, 1.0, help="a negative this close to a positive leaves the group"),
    )
    quality_filters: bool = field(
        default=False,
        metadata=_range(
            help="the authors' filters (too short, collapsed, shortcut, invalid format): such "
            "samples count in K but are neither positive nor negative"
        ),
    )
    grade_truncated: bool = field(
        default=False,
        metadata=_range(
            help="grade the answer of a rollout cut at its limit (rollout.max_new_tokens, or "
            "its demo-sized budget) (the authors); false: it counts in K but is neither "
            "positive nor negative"
        ),
    )
    ratio_min: float = field(default=0.4, metadata=_range(0.0))
    ratio_max: float = field(default=1.2, metadata=_range(0.0, lo_open=True))
    dedup_jaccard: float = field(default=0.82, metadata=_range(0.0, 1.0))
    short_text_jaccard: str = field(
        default="shorter_ngrams",
        metadata=_range(
            choices=("shorter_ngrams", "authors"),
            help="texts under three words: compared by their 1- or 2-grams; authors: they have "
            "no 3-grams, so two of them are duplicates (1.0) and one against a longer text 0.0",
        ),
    )
    schedule: str = field(
        default="epochs",
        metadata=_range(
            choices=("epochs", "authors"),
            help="epochs: a refresh before each epoch (and every refresh_every_steps); authors: "
            "one pass in data order, routed once by NLL, a refresh of the waiting mid band "
            "every refresh_every_steps or when the queue runs dry, the hard pool trained again "
            "at the end",
        ),
    )
    selection: str = field(default="all", metadata=_range(choices=("all", "fraction", "nll_band")))
    selection_fraction: float = field(default=0.35, metadata=_range(0.0, 1.0))
    refresh_every_steps: int = field(
        default=0,
        metadata=_range(0, help="0 = between epochs only (authors: only when the queue runs dry)"),
    )
    warmup_epochs: int = field(
        default=0,
        metadata=_range(0, help="first epochs on the demos alone (weight 1), no rollouts"),
    )
    trim_capped_refresh: bool = field(
        default=True,
        metadata={
            "help": "schedule epochs: when training.max_steps leaves room for fewer sequences "
            "than there are problems, the epoch's refresh rolls out only that many problems, "
            "drawn at random, and the epoch holds just their demos and rollouts (false: roll "
            "out every problem, most of whose sequences the cap never trains)"
        },
    )
    calibration_size: int = field(default=1000, metadata=_range(1))
    easy_quantile: float = field(default=0.10, metadata=_range(0.0, 1.0))
    mid_window_start: tuple[float, float] = (0.20, 0.45)
    mid_window_end: tuple[float, float] = (0.50, 0.75)
    hard_quantile: float = field(default=0.90, metadata=_range(0.0, 1.0))
    hard_probe_fraction: float = field(default=0.03, metadata=_range(0.0, 1.0))
    route_chunk_size: int = field(
        default=0,
        metadata=_range(
            0,
            help="schedule authors: 0 = the first queue in data order; N = per chunk of N "
            "problems its easy demos, then its hard ones, then the rest (the authors' order)",
        ),
    )


@dataclass(frozen=True)
class Recipe:
    protocol: str = field(
        default="project",
        metadata=_range(
            choices=PROTOCOLS,
            help="authors: the RASFT authors' values for every key the recipe leaves out "
            "(rasft_mlx/recipe/protocols.py, docs/FIDELITY.md)",
        ),
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rasft: RasftConfig = field(default_factory=RasftConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# --------------------------------------------------------------------------------------------
# Loading, validation and saving.
#
# Everything below walks the dataclass fields and their type hints, so adding a field to a
# section above needs no change here: its type, range and choices are checked automatically.
# --------------------------------------------------------------------------------------------


# (lower key, upper key, operator): cross-field orderings checked by validate_recipe.
def validate_recipe(recipe: Recipe, source: str = "<recipe>") -> None:
    """Check every field's type and range, then the cross-field constraints; raise RecipeError."""
    for path, hint, meta, value in leaves(recipe):
        check_leaf(hint, meta, value, source, path)
    check_cross_fields(recipe, source, {})


def _top_level(data, source: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise RecipeError(f"{source}: the top level must be a mapping of sections, got {kind}")
    return data


def _recipe_from_data(data: dict, source: str, overridden: dict[str, str]) -> Recipe:
    recipe = build_dataclass(Recipe, apply_protocol(data), "", source, overridden)
    check_cross_fields(recipe, source, overridden)
    return recipe


def recipe_from_dict(data: dict, source: str = "<dict>") -> Recipe:
    """Build and validate a Recipe from a plain mapping (e.g. a reloaded ``recipe_to_dict``)."""
    return _recipe_from_data(_top_level(data, source), source, {})


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe, apply ``--set key.path=value`` overrides, validate, return a Recipe."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"{source}: cannot read recipe: {exc.strerror or exc}") from exc
    try:
        data = _top_level(load_yaml(text), source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{where}: invalid YAML: {problem}") from exc
    empty = not data
    overridden: dict[str, str] = {}
    for override in overrides:
        apply_override(Recipe, data, override, source, overridden)
    recipe = _recipe_from_data(data, source, overridden)  # wrong keys and types first
    _require_model(data, source, empty=empty)
    return recipe


def _require_model(data: dict, source: str, empty: bool) -> None:
    """A recipe names its model: an empty file or a forgotten `model.path` would otherwise start
    a full default run on whatever the default model is."""
    model = data.get("model")
    if isinstance(model, dict) and model.get("path"):
        return
    what = "is empty" if empty else "names no model"
    raise RecipeError(
        f"{source}: the recipe {what}; a recipe needs at least `model: {{path: ...}}` (a Hub id, "
        "a local dir, a .gguf file or builtin:smollm2-135m), or --set model.path=..."
    )


def recipe_to_dict(recipe) -> dict:
    """Plain nested dict of the recipe (tuples as lists), ready for YAML or JSON."""
    result = {}
    for f in fields(recipe):
        value = getattr(recipe, f.name)
        if is_dataclass(value):
            value = recipe_to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        result[f.name] = value
    return result


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the recipe as YAML atomically (temp file in the same directory, then os.replace)."""
    text = yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True)
    atomic_write_text(path, text)


def resolve_run_dir(recipe: Recipe, out: str | None) -> Path:
    """``out`` when given, else ``output.dir`` with ``{name}`` replaced by ``output.name``."""
    if out:
        return Path(out)
    return Path(recipe.output.dir.replace("{name}", recipe.output.name))


def describe_fields() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every recipe field, for docs and CLI help."""
    rows = []
    for path, hint, meta, value in leaves(Recipe()):
        help_text = "; ".join(t for t in (meta.get("help", ""), constraint_text(meta)) if t)
        rows.append((path, type_label(hint), format_default(value), help_text))
    return rows
