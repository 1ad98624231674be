"""Recipe schema: frozen dataclasses for every section of a training recipe."""

from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from difflib import get_close_matches
from pathlib import Path

import yaml

from .fileio import atomic_write_text

DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

MODES = ("sft", "dft", "sft_kl", "asft", "profit", "rasft")


def _range(lo=None, hi=None, *, lo_open=False, choices=None, help=""):
    """Field metadata: inclusive bounds (exclusive when lo_open), allowed choices, help text."""
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "help": help}


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


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    n_train: int = field(default=2000, metadata=_range(1))
    n_test: int = field(default=200, metadata=_range(1))
    min_level: int = field(default=1, metadata=_range(0, 5))
    max_level: int = field(default=3, metadata=_range(0, 5))


@dataclass(frozen=True)
class DataConfig:
    train: str = field(
        default="synthetic",
        metadata=_range(help="JSONL path, hf://REPO/FILE, or 'synthetic'"),
    )
    test: str = field(default="synthetic", metadata=_range(help="same forms as train"))
    format: str = field(
        default="auto",
        metadata=_range(choices=("auto", "gsm8k", "generic", "synthetic")),
    )
    max_train: int | None = field(default=None, metadata=_range(1))
    max_test: int | None = field(default=None, metadata=_range(1))
    max_seq_len: int = field(default=1024, metadata=_range(16))
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class LoraConfig:
    type: str = field(default="lora", metadata=_range(choices=("lora", "dora")))
    rank: int = field(default=16, metadata=_range(1))
    scale: float = field(
        default=2.0,
        metadata=_range(0.0, lo_open=True, help="mlx-lm's LoRA scale (PEFT's lora_alpha / r)"),
    )
    dropout: float = field(default=0.0, metadata=_range(0.0, 0.9))
    num_layers: int = field(default=-1, metadata=_range(-1, help="-1 = every layer"))
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
    grad_clip: float = field(default=1.0, metadata=_range(0.0, help="0 disables clipping"))
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
    max_new_tokens: int = field(default=1024, metadata=_range(1))
    batch_size: int = field(default=32, metadata=_range(1))


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
    ratio_min: float = field(default=0.4, metadata=_range(0.0))
    ratio_max: float = field(default=1.2, metadata=_range(0.0, lo_open=True))
    dedup_jaccard: float = field(default=0.82, metadata=_range(0.0, 1.0))
    selection: str = field(default="all", metadata=_range(choices=("all", "fraction", "nll_band")))
    selection_fraction: float = field(default=0.35, metadata=_range(0.0, 1.0))
    refresh_every_steps: int = field(default=0, metadata=_range(0, help="0 = between epochs only"))
    calibration_size: int = field(default=1000, metadata=_range(1))
    easy_quantile: float = field(default=0.10, metadata=_range(0.0, 1.0))
    mid_window_start: tuple[float, float] = (0.20, 0.45)
    mid_window_end: tuple[float, float] = (0.50, 0.75)
    hard_quantile: float = field(default=0.90, metadata=_range(0.0, 1.0))
    hard_probe_fraction: float = field(default=0.03, metadata=_range(0.0, 1.0))


@dataclass(frozen=True)
class EvalConfig:
    limit: int | None = field(default=None, metadata=_range(1))
    samples: int = field(default=1, metadata=_range(1, help="K for avg@K (1 = greedy only)"))
    temperature: float = field(default=1.0, metadata=_range(0.0))
    top_p: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    max_new_tokens: int = field(default=512, metadata=_range(1))
    batch_size: int = field(default=32, metadata=_range(1))
    before_training: bool = field(
        default=False, metadata=_range(help="also evaluate the starting model (eval-epoch-0)")
    )


@dataclass(frozen=True)
class OutputConfig:
    dir: str = field(default="runs/{name}", metadata=_range(help="run directory; {name} expands"))
    name: str = "run"
    save_every: int = field(
        default=0, metadata=_range(0, help="checkpoint every N steps; 0 = epochs")
    )
    keep_checkpoints: int = field(
        default=2, metadata=_range(1, help="how many of the newest checkpoints to keep")
    )


@dataclass(frozen=True)
class Recipe:
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


_NO_MATCH = object()
_NONE_TYPE = type(None)
_EXPECTED = {int: "an integer", float: "a number", bool: "a boolean (true/false)", str: "a string"}
_PLURAL = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
# (lower key, upper key, operator): cross-field orderings checked by validate_recipe.
_ORDERED_PAIRS = (
    ("data.synthetic.min_level", "data.synthetic.max_level", "<="),
    ("rasft.r_min", "rasft.r_max", "<="),
    ("rasft.ratio_min", "rasft.ratio_max", "<="),
    ("rasft.rollout_adv_floor", "rasft.rollout_adv_cap", "<="),
    ("rasft.easy_quantile", "rasft.hard_quantile", "<"),
)
_UNIT_WINDOWS = ("rasft.mid_window_start", "rasft.mid_window_end")


class RecipeError(ValueError):
    """An invalid recipe; the message names the source (file or --set) and the dotted key."""


@functools.cache
def _hints(cls: type) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _is_variadic(hint) -> bool:
    args = typing.get_args(hint)
    return len(args) == 2 and args[1] is Ellipsis


def _convert(hint, value):
    """Return ``value`` converted to ``hint``'s type, or _NO_MATCH when it does not fit."""
    if _is_union(hint):
        if value is None and _NONE_TYPE in typing.get_args(hint):
            return None
        for arg in typing.get_args(hint):
            converted = _convert(arg, value) if arg is not _NONE_TYPE else _NO_MATCH
            if converted is not _NO_MATCH:
                return converted
        return _NO_MATCH
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            return _NO_MATCH
        args = typing.get_args(hint)
        item_hints = [args[0]] * len(value) if _is_variadic(hint) else list(args)
        if len(item_hints) != len(value):
            return _NO_MATCH
        items = tuple(_convert(h, v) for h, v in zip(item_hints, value, strict=True))
        return _NO_MATCH if _NO_MATCH in items else items
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return _NO_MATCH
        try:  # strings too: YAML 1.1 reads "1e-4" (no dot) as a string
            number = float(value)
        except (ValueError, OverflowError):
            return _NO_MATCH
        return number if math.isfinite(number) else _NO_MATCH
    if hint is int and isinstance(value, bool):
        return _NO_MATCH
    if hint in (int, bool, str):
        return value if isinstance(value, hint) else _NO_MATCH
    raise TypeError(f"unsupported recipe field type {hint!r}")


def _expected(hint) -> str:
    if _is_union(hint):
        args = typing.get_args(hint)
        parts = [_expected(a) for a in args if a is not _NONE_TYPE]
        return " or ".join(parts + (["null"] if _NONE_TYPE in args else []))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        count = "" if _is_variadic(hint) else f"{len(args)} "
        return f"a list of {count}{_PLURAL[args[0]]}"
    return _EXPECTED[hint]


def _type_label(hint) -> str:
    if _is_union(hint):
        return " | ".join(_type_label(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        inner = args[0].__name__ if _is_variadic(hint) else ", ".join(a.__name__ for a in args)
        return f"list[{inner}]"
    return "null" if hint is _NONE_TYPE else hint.__name__


def _bounds_text(meta: dict) -> str:
    lo, hi, lo_open = meta.get("lo"), meta.get("hi"), meta.get("lo_open")
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}]"
    return f"{'>' if lo_open else '>='} {lo}" if lo is not None else f"<= {hi}"


def _constraint_text(meta: dict) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(meta["choices"])
    has_bounds = meta.get("lo") is not None or meta.get("hi") is not None
    return _bounds_text(meta) if has_bounds else ""


def _check_leaf(hint, meta, value, source: str, path: str):
    """Type- and range-check one value; return it converted (floats, tuples)."""
    converted = _convert(hint, value)
    if converted is _NO_MATCH:
        got = f"{value!r} ({type(value).__name__})"
        raise RecipeError(f"{source}: '{path}' must be {_expected(hint)}, got {got}")
    if converted is None or not meta:
        return converted
    choices = meta.get("choices")
    if choices and converted not in choices:
        close = get_close_matches(str(converted), list(choices), n=1)
        suggestion = f" (did you mean '{close[0]}'?)" if close else ""
        allowed = ", ".join(choices)
        raise RecipeError(
            f"{source}: '{path}' must be one of {allowed}; got {converted!r}{suggestion}"
        )
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(converted, (int, float)) and not isinstance(converted, bool):
        too_low = lo is not None and (converted <= lo if meta.get("lo_open") else converted < lo)
        if too_low or (hi is not None and converted > hi):
            raise RecipeError(f"{source}: '{path}' must be {_bounds_text(meta)}, got {converted!r}")
    return converted


def _unknown_key(source: str, prefix: str, key, known: Sequence[str]) -> RecipeError:
    close = get_close_matches(str(key), list(known), n=1)
    suggestion = f"; did you mean '{prefix}{close[0]}'?" if close else ""
    return RecipeError(f"{source}: unknown key '{prefix}{key}'{suggestion}")


def _section_error(source: str, path: str, value) -> RecipeError:
    got = f"{value!r} ({type(value).__name__})"
    return RecipeError(f"{source}: '{path}' is a section and must be a mapping, got {got}")


def _build(cls: type, data: dict, prefix: str, source: str, overridden: dict[str, str]):
    """Construct ``cls`` from a mapping, checking keys, types and ranges recursively."""
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            raise _unknown_key(source, prefix, key, names)
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        path, value, hint = prefix + f.name, data[f.name], _hints(cls)[f.name]
        if is_dataclass(hint):
            if value is not None and not isinstance(value, dict):
                raise _section_error(source, path, value)
            kwargs[f.name] = _build(hint, value or {}, path + ".", source, overridden)
        else:
            value_source = overridden.get(path, source)
            kwargs[f.name] = _check_leaf(hint, f.metadata, value, value_source, path)
    return cls(**kwargs)


def _leaves(obj, prefix: str = "") -> Iterator[tuple[str, typing.Any, dict, typing.Any]]:
    """Yield (dotted key, type hint, metadata, value) for every non-section field."""
    for f in fields(obj):
        hint, value = _hints(type(obj))[f.name], getattr(obj, f.name)
        if is_dataclass(hint):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hint, dict(f.metadata), value


def _check_cross_fields(recipe: Recipe, source: str, overridden: dict[str, str]) -> None:
    """Orderings between fields; an overridden key's --set is blamed before the file."""

    def lookup(path: str):
        return functools.reduce(getattr, path.split("."), recipe)

    for lower, upper, op in _ORDERED_PAIRS:
        lo, hi = lookup(lower), lookup(upper)
        if lo > hi or (op == "<" and lo == hi):
            blamed = overridden.get(lower) or overridden.get(upper) or source
            raise RecipeError(f"{blamed}: '{lower}' ({lo}) must be {op} '{upper}' ({hi})")
    for path in _UNIT_WINDOWS:
        lo, hi = lookup(path)
        if not 0.0 <= lo < hi <= 1.0:
            raise RecipeError(
                f"{overridden.get(path, source)}: '{path}' must be [lo, hi] with "
                f"0 <= lo < hi <= 1, got [{lo}, {hi}]"
            )


def validate_recipe(recipe: Recipe, source: str = "<recipe>") -> None:
    """Check every field's type and range, then the cross-field constraints; raise RecipeError."""
    for path, hint, meta, value in _leaves(recipe):
        _check_leaf(hint, meta, value, source, path)
    _check_cross_fields(recipe, source, {})


def _parse_override_value(hint, raw: str, source: str):
    """YAML-parse an override value; string fields fall back to the raw text."""
    accepts_str = str in (typing.get_args(hint) if _is_union(hint) else (hint,))
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if accepts_str:
            return raw
        raise RecipeError(f"{source}: cannot parse value {raw!r}: {exc}") from exc
    if accepts_str and not isinstance(value, str) and not (value is None and _is_union(hint)):
        return raw  # e.g. output.name=123 or a prompt containing ': '
    return value


def _apply_override(data: dict, text: str, file_source: str, overridden: dict[str, str]) -> None:
    """Set one ``key.path=value`` in the raw recipe mapping, checking the key path."""
    source = f"--set {text}"
    key, has_equals, raw = text.partition("=")
    key = key.strip()
    if not has_equals or not key:
        raise RecipeError(f"{source}: expected KEY=VALUE, e.g. training.learning_rate=1e-4")
    cls, node, parts = Recipe, data, key.split(".")
    for depth, part in enumerate(parts):
        prefix, path = "".join(p + "." for p in parts[:depth]), ".".join(parts[: depth + 1])
        names = [f.name for f in fields(cls)]
        if part not in names:
            raise _unknown_key(source, prefix, part, names)
        hint, is_last = _hints(cls)[part], depth == len(parts) - 1
        if is_dataclass(hint) and is_last:
            example = f"{path}.{fields(hint)[0].name}"
            raise RecipeError(
                f"{source}: '{path}' is a section; set one of its keys, e.g. '{example}=...'"
            )
        if is_dataclass(hint):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise _section_error(file_source, path, child)
            node, cls = child, hint
        elif not is_last:
            raise RecipeError(f"{source}: '{path}' is a value, not a section")
        else:
            node[part] = _parse_override_value(hint, raw, source)
            overridden[key] = source


def _top_level(data, source: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise RecipeError(f"{source}: the top level must be a mapping of sections, got {kind}")
    return data


def _recipe_from_data(data: dict, source: str, overridden: dict[str, str]) -> Recipe:
    recipe = _build(Recipe, data, "", source, overridden)
    _check_cross_fields(recipe, source, overridden)
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
        data = _top_level(yaml.safe_load(text), source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{where}: invalid YAML: {problem}") from exc
    overridden: dict[str, str] = {}
    for override in overrides:
        _apply_override(data, override, source, overridden)
    return _recipe_from_data(data, source, overridden)


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


def _format_default(value) -> str:
    if value is None or isinstance(value, bool):
        return str(value).lower().replace("none", "null")
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def describe_fields() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every recipe field, for docs and CLI help."""
    rows = []
    for path, hint, meta, value in _leaves(Recipe()):
        help_text = "; ".join(t for t in (meta.get("help", ""), _constraint_text(meta)) if t)
        rows.append((path, _type_label(hint), _format_default(value), help_text))
    return rows
