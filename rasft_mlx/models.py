"""Model loading (Hub id, local directory, GGUF, builtin), LoRA/DoRA adapters, and adapter switching."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .config import LoraConfig, ModelConfig
from .fileio import atomic_write
from .memory import is_cpu_device

ADAPTER_WEIGHTS_FILE = "adapters.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"


class ModelError(ValueError):
    """A model or adapter that cannot be loaded, with what was expected."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    source: str
    local_dir: Path | None


def _should_dequantize(config: ModelConfig) -> bool:
    if config.dequantize == "always":
        return True
    if config.dequantize == "never":
        return False
    return is_cpu_device()


def _is_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def resolve_model_source(config: ModelConfig) -> str:
    """A path or Hub id that `mlx_lm.load` accepts; GGUF and builtin models are converted once."""
    spec = config.path
    dequantize = _should_dequantize(config)
    if spec.startswith("builtin:"):
        from .builtin_models import BuiltinModelError, resolve_builtin
        from .gguf_import import convert_gguf

        try:
            gguf_path = resolve_builtin(spec)
        except BuiltinModelError as error:
            raise ModelError(f"model.path: {error}") from error
        return str(convert_gguf(gguf_path, dequantize=dequantize))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"model.path: GGUF file {spec!r} does not exist")
        from .gguf_import import convert_gguf

        return str(convert_gguf(path, dequantize=dequantize))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model.path: {spec!r} is not a model directory (expected config.json, "
                "weights *.safetensors and a tokenizer)"
            )
        return str(path)
    if not _is_hub_id(spec):
        raise ModelError(
            f"model.path: {spec!r} does not exist (expected a local directory, a .gguf file, "
            "builtin:NAME or a Hub id like Qwen/Qwen2.5-0.5B-Instruct)"
        )
    return spec


def _target_dtype(config: ModelConfig) -> mx.Dtype | None:
    if config.dtype == "auto":
        return mx.float32 if is_cpu_device() else None
    return getattr(mx, config.dtype)


def load_model(config: ModelConfig) -> LoadedModel:
    """Load model + tokenizer, dequantised and cast as the config (and the device) asks."""
    from mlx_lm import load as mlx_lm_load
    from mlx_lm.utils import dequantize_model

    source = resolve_model_source(config)
    try:
        model, tokenizer = mlx_lm_load(
            source, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
    except Exception as error:  # mlx_lm raises many kinds; name the model in one message
        raise ModelError(f"model.path: could not load {config.path!r}: {error}") from error
    if _should_dequantize(config) and any(
        isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules()
    ):
        model = dequantize_model(model)
    dtype = _target_dtype(config)
    if dtype is not None:
        model.set_dtype(dtype)
    local = Path(source) if Path(source).exists() else None
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, local_dir=local)


def lora_parameters(config: LoraConfig) -> dict:
    params = {"rank": config.rank, "scale": config.scale, "dropout": config.dropout}
    if config.keys is not None:
        params["keys"] = list(config.keys)
    return params


def adapted_layer_count(model: nn.Module, config: LoraConfig) -> int:
    total = len(model.layers)
    return total if config.num_layers < 0 else min(config.num_layers, total)


def apply_adapters(model: nn.Module, config: LoraConfig) -> None:
    """Freeze the base weights and wrap the target linears in trainable LoRA/DoRA layers."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    linear_to_lora_layers(
        model,
        adapted_layer_count(model, config),
        lora_parameters(config),
        use_dora=config.type == "dora",
    )


def adapter_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (path, module) pairs of every adapter layer: anything wrapping a base `linear`."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if "linear" in module.children() and ("lora_a" in module or "m" in module)
    ]


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the frozen reference (the starting weights) by swapping each adapter for its base layer.

    Works inside `mx.compile` and `nn.value_and_grad`: the swap happens while tracing, so the traced
    graph contains both the policy and the reference forward.
    """
    wrapped = adapter_modules(model)
    model.update_modules(tree_unflatten([(name, m.linear) for name, m in wrapped]))
    try:
        yield
    finally:
        model.update_modules(tree_unflatten(wrapped))


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def total_parameter_count(model: nn.Module) -> int:
    from mlx_lm.utils import get_total_parameters

    return get_total_parameters(model)


def adapter_config_dict(model: nn.Module, config: LoraConfig, base_model: str) -> dict:
    """An adapter_config.json that `mlx_lm.load(..., adapter_path=...)` understands."""
    return {
        "fine_tune_type": config.type,
        "num_layers": adapted_layer_count(model, config),
        "lora_parameters": lora_parameters(config),
        "model": base_model,
    }


def save_adapters(model: nn.Module, config: LoraConfig, base_model: str, out_dir: Path) -> None:
    """Write adapters.safetensors + adapter_config.json in mlx-lm's format, each atomically."""
    weights = dict(tree_flatten(model.trainable_parameters()))
    atomic_write(out_dir / ADAPTER_WEIGHTS_FILE, lambda p: mx.save_safetensors(p, weights))
    text = json.dumps(adapter_config_dict(model, config, base_model), indent=2)
    atomic_write(out_dir / ADAPTER_CONFIG_FILE, lambda p: Path(p).write_text(text))


def load_adapters_into(model: nn.Module, adapter_dir: str | Path) -> None:
    """Apply the adapters saved in `adapter_dir` to `model`, with a clear error when they do not fit."""
    from mlx_lm.tuner.utils import load_adapters

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG_FILE).is_file():
        raise ModelError(f"adapter: {adapter_dir} has no {ADAPTER_CONFIG_FILE}")
    try:
        load_adapters(model, str(adapter_dir))
    except (ValueError, KeyError) as error:
        raise ModelError(f"adapter: {adapter_dir} does not fit this model: {error}") from error
