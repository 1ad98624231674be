"""Export a run's adapters: mlx-lm adapters, PEFT LoRA adapters, or a fused full model.

A full fine-tune (`lora.type: full`) has no adapter: `mlx` writes its trained weights in mlx-lm's
full fine-tune format (loaded over the base with `adapter_path`), `fused` the whole model (an
mlx-lm folder of safetensors that transformers loads too), and `peft` is refused.

Every export goes into a temp folder next to the target, which is renamed into place only when it
is complete, so an interrupted export leaves nothing half-written behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from rasft_mlx.export.model_card import CARD_FILE, CARD_MARKER, render_card
from rasft_mlx.models.adapters import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from rasft_mlx.recipe.config import Recipe, RecipeError, load_recipe

FORMATS = ("mlx", "peft", "fused")
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# The Hugging Face checkpoints the builtin GGUF models were converted from (same module layout).
BUILTIN_HF_IDS = {
    "builtin:smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "builtin:qwen2.5-coder-0.5b": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
}
_ADAPTER_KEY = re.compile(
    r"^(?P<module>(?:.*\.)?layers\.(?P<layer>\d+)\.(?P<target>.+))\.(?P<leaf>lora_a|lora_b|m)$"
)


class ExportError(ValueError):
    """A run that cannot be exported in the asked format, with the reason."""


@dataclass(frozen=True)
class RunInfo:
    run_dir: Path
    recipe: Recipe
    adapter_dir: Path
    adapter_config: dict
    summary: dict
    epoch_evals: list[dict]


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    format: str
    files: list[str]


def read_run(run_dir: str | Path) -> RunInfo:
    """The recipe, adapter config and metrics of a run directory made by `rasft-mlx train`."""
    run_dir = Path(run_dir)
    adapter_dir = run_dir / "adapters"
    needed = [run_dir / "recipe.yaml", adapter_dir / ADAPTER_CONFIG_FILE]
    needed.append(adapter_dir / ADAPTER_WEIGHTS_FILE)
    missing = [str(p.relative_to(run_dir)) for p in needed if not p.is_file()]
    if not run_dir.is_dir() or missing:
        what = "does not exist" if not run_dir.is_dir() else f"has no {', '.join(missing)}"
        raise ExportError(f"{run_dir} {what}: expected a run directory made by rasft-mlx train")
    try:
        recipe = load_recipe(run_dir / "recipe.yaml")
        adapter_config = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text())
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        evals = sorted(run_dir.glob("eval-epoch-*-summary.json"), key=_epoch_number)
        epoch_evals = [{"epoch": _epoch_number(p), **json.loads(p.read_text())} for p in evals]
    except (RecipeError, ValueError, OSError) as error:
        raise ExportError(f"{run_dir}: cannot read the run: {error}") from error
    return RunInfo(run_dir, recipe, adapter_dir, adapter_config, summary, epoch_evals)


def _epoch_number(path: Path) -> int:
    match = re.search(r"eval-epoch-(\d+)-summary", path.name)
    return int(match.group(1)) if match else 0


def base_model_id(recipe: Recipe) -> str:
    """Where the Hugging Face-format base lives: Hub id, absolute local path, or the recipe's spec."""
    spec = recipe.model.path
    if spec in BUILTIN_HF_IDS:
        return BUILTIN_HF_IDS[spec]
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def peft_from_mlx(weights: dict, adapter_config: dict, base_model: str, revision=None):
    """mlx-lm adapter tensors + config -> (PEFT state dict, PEFT adapter_config.json dict).

    mlx-lm computes y = W x + scale * B_mlx^T A_mlx^T x with lora_a (in, r) and lora_b (r, out);
    PEFT computes y = W x + (alpha / r) * B A x with lora_A (r, in) and lora_B (out, r). DoRA's
    learned magnitude `m` is PEFT's `lora_magnitude_vector`; both renormalise the same rows.
    Module paths are kept (mlx-lm names modules like Transformers does for llama/qwen2-style models).
    """
    fine_tune_type = adapter_config.get("fine_tune_type", "lora")
    if fine_tune_type not in ("lora", "dora"):
        raise ExportError(f"PEFT export supports LoRA and DoRA adapters, not {fine_tune_type!r}")
    params = adapter_config.get("lora_parameters") or {}
    if "rank" not in params or "scale" not in params:
        raise ExportError("adapter_config.json has no lora_parameters with rank and scale")
    rank, scale = int(params["rank"]), float(params["scale"])
    leaf_names = {
        "lora_a": "lora_A.weight",
        "lora_b": "lora_B.weight",
        "m": "lora_magnitude_vector",
    }
    state, targets, layers, magnitudes = {}, set(), set(), set()
    for key, value in weights.items():
        match = _ADAPTER_KEY.match(key)
        if match is None:
            raise ExportError(f"adapter tensor {key!r} is not a LoRA layer inside model.layers")
        leaf = match["leaf"]
        rank_axis = {"lora_a": 1, "lora_b": 0}.get(leaf)
        if rank_axis is not None and (value.ndim != 2 or value.shape[rank_axis] != rank):
            raise ExportError(
                f"adapter tensor {key!r} has shape {tuple(value.shape)}; PEFT export needs plain "
                f"Linear LoRA of rank {rank} (mixture-of-experts adapters have no PEFT equivalent)"
            )
        state[f"{PEFT_PREFIX}{match['module']}.{leaf_names[leaf]}"] = (
            value.T if leaf != "m" else value
        )
        targets.add(match["target"])
        layers.add(int(match["layer"]))
        if leaf == "m":
            magnitudes.add(match["module"])
    if not state:
        raise ExportError("the adapter file holds no LoRA tensors")
    if fine_tune_type == "dora" and len(magnitudes) * 3 != len(state):
        raise ExportError("DoRA adapters must hold lora_a, lora_b and m for every layer")
    alpha = scale * rank  # PEFT's scaling lora_alpha / r equals mlx-lm's scale
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "revision": revision,
        "r": rank,
        "lora_alpha": int(alpha) if alpha.is_integer() else alpha,
        "lora_dropout": float(params.get("dropout", 0.0)),
        "target_modules": sorted(targets),
        "layers_to_transform": sorted(layers),
        "layers_pattern": "layers",
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": fine_tune_type == "dora",
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    return state, config


def write_mlx(run: RunInfo, dest: Path) -> None:
    for name in (ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE):
        shutil.copyfile(run.adapter_dir / name, dest / name)


def write_peft(run: RunInfo, dest: Path) -> None:
    import mlx.core as mx

    weights = mx.load(str(run.adapter_dir / ADAPTER_WEIGHTS_FILE))
    state, config = peft_from_mlx(
        weights, run.adapter_config, base_model_id(run.recipe), run.recipe.model.revision
    )
    state = {k: mx.contiguous(v) for k, v in state.items()}
    mx.save_safetensors(str(dest / PEFT_WEIGHTS_FILE), state, metadata={"format": "pt"})
    (dest / ADAPTER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def write_fused(run: RunInfo, dest: Path, dequantize: bool) -> None:
    """mlx-lm's fuse: load base + adapters, merge each adapter into its linear, save the model."""
    from mlx.utils import tree_unflatten
    from mlx_lm import load
    from mlx_lm.utils import dequantize_model, hf_repo_to_path, save_config, save_model

    from rasft_mlx.models.loading import resolve_model_source

    recipe = run.recipe
    try:
        source = resolve_model_source(recipe.model)
        model, tokenizer, config = load(
            source,
            adapter_path=str(run.adapter_dir),
            return_config=True,
            revision=recipe.model.revision,
            trust_remote_code=recipe.model.trust_remote_code,
        )
    except Exception as error:  # mlx_lm raises many kinds; name the model in one message
        raise ExportError(
            f"cannot load {recipe.model.path!r} with the run's adapters: {error}"
        ) from error
    fused = [
        (n, m.fuse(dequantize=dequantize)) for n, m in model.named_modules() if hasattr(m, "fuse")
    ]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dequantize:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    save_model(dest, model, donate_model=False)
    save_config(config, config_path=dest / "config.json")
    tokenizer.save_pretrained(str(dest))
    try:  # custom modelling code and generation defaults travel with the model, as in mlx-lm
        source_dir = Path(source) if Path(source).exists() else hf_repo_to_path(source)
    except Exception:  # not in the local Hub cache: nothing extra to copy
        return
    for pattern in ("*.py", "generation_config.json"):
        for path in source_dir.glob(pattern):
            shutil.copyfile(path, dest / path.name)


def default_out_dir(run_dir: str | Path, fmt: str) -> Path:
    return Path(run_dir) / f"export-{fmt}"


def _check_out_dir(out: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier rasft-mlx export."""
    if not out.exists():
        return
    card = out / CARD_FILE
    ours = card.is_file() and CARD_MARKER in card.read_text(errors="replace")
    if not out.is_dir() or (any(out.iterdir()) and not ours):
        raise ExportError(
            f"--out {out} already exists and is not a rasft-mlx export; "
            "choose another folder or remove it"
        )


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished temp folder to `out`, swapping out an earlier export if there is one."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    dequantize: bool = False,
    repo_id: str | None = None,
) -> ExportResult:
    """Write the run's adapters in `fmt` (mlx, peft or fused) with a model card into `out`."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if dequantize and fmt != "fused":
        raise ExportError("--dequantize applies to --format fused only")
    run = read_run(run_dir)
    if fmt == "peft" and run.adapter_config.get("fine_tune_type") == "full":
        raise ExportError(
            f"{run.run_dir} is a full fine-tune (lora.type full): every trained weight changed, "
            "so there is no PEFT adapter to write; --format fused writes the whole model as a "
            "safetensors folder that transformers (and mlx-lm) load"
        )
    out = Path(out) if out is not None else default_out_dir(run.run_dir, fmt)
    _check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the export is an ordinary folder
    try:
        if fmt == "mlx":
            write_mlx(run, tmp)
        elif fmt == "peft":
            write_peft(run, tmp)
        else:
            write_fused(run, tmp, dequantize)
        card = render_card(
            run.recipe,
            run.summary,
            fmt=fmt,
            base_model=base_model_id(run.recipe),
            repo_id=repo_id,
            location=str(out.resolve()),
            epoch_evals=run.epoch_evals,
            adapter_config=run.adapter_config,
        )
        (tmp / CARD_FILE).write_text(card)
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return ExportResult(out_dir=out, format=fmt, files=files)
