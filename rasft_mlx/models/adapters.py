"""What trains: LoRA/DoRA adapters or the full weights (`lora.type`); applying, counting, saving
and loading them, and the reference policy (adapters off, or the full fine-tune's start)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from rasft_mlx.models.full_finetune import (
    apply_full_finetune,
    starting_weights,
    starting_weights_in,
    trained_layer_count,
)
from rasft_mlx.models.loading import ModelError
from rasft_mlx.recipe.config import LoraConfig
from rasft_mlx.runtime.fileio import atomic_write

ADAPTER_WEIGHTS_FILE = "adapters.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"


def lora_parameters(config: LoraConfig) -> dict:
    params = {"rank": config.rank, "scale": config.scale, "dropout": config.dropout}
    if config.keys is not None:
        params["keys"] = list(config.keys)
    return params


def adapted_layer_count(model: nn.Module, config: LoraConfig) -> int:
    return trained_layer_count(model, config.num_layers)


def apply_adapters(model: nn.Module, config: LoraConfig) -> None:
    """Make the model trainable as `config` asks: freeze the base weights and wrap the target
    linears in LoRA/DoRA layers, or (type full) unfreeze the weights themselves and keep the
    starting ones as the reference (models/full_finetune.py)."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    if config.type == "full":
        apply_full_finetune(model, config.num_layers, config.train_embeddings)
        return
    model.freeze()
    linear_to_lora_layers(
        model,
        adapted_layer_count(model, config),
        lora_parameters(config),
        use_dora=config.type == "dora",
    )
    model.eval()  # new adapter layers start in train mode; training switches it on per step


@contextmanager
def dropout_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Run the block with adapter dropout on (training steps) or off (rollouts, reference passes,
    evaluation), whatever mode the model was left in; the previous mode comes back after.

    Inside `mx.compile` the mode is read while tracing, so every trace of the training step must
    happen in train mode: the step enters this block before calling its compiled functions.
    """
    previous = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(previous)


def adapter_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (path, module) pairs of every adapter layer: anything wrapping a base `linear`."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if "linear" in module.children() and ("lora_a" in module or "m" in module)
    ]


@contextmanager
def reference_policy(model: nn.Module) -> Iterator[None]:
    """Run the block on the frozen reference, the starting policy: each adapter swapped for its
    base layer, or, in a full fine-tune, the starting weights swapped in for the live ones.

    Works inside `mx.compile` and `nn.value_and_grad`: the swap happens while tracing, so the traced
    graph contains both the policy and the reference forward.
    """
    if starting_weights(model) is not None:
        with starting_weights_in(model):
            yield
        return
    wrapped = adapter_modules(model)
    model.update_modules(tree_unflatten([(name, m.linear) for name, m in wrapped]))
    try:
        yield
    finally:
        model.update_modules(tree_unflatten(wrapped))


def fuse_adapters(model: nn.Module) -> str | None:
    """Merge every adapter into its base linear in place, for a model that only decodes from now
    on (an evaluation): W + scale * B^T A^T per layer, as mlx-lm's fuse and `export --format fused`
    do. Decoding then skips the adapters' two extra products a layer and may use decode lanes.

    Only float32 weights are fused: in bf16/fp16 a LoRA delta is often below the weight's rounding
    step, and a quantised base would be re-quantised, so the fused model would not be the trained
    policy. Returns why the adapters stay live, or None when no adapter layer is left (a full
    fine-tune's weights have none to begin with).
    """
    wrapped = adapter_modules(model)
    for name, module in wrapped:
        if isinstance(module.linear, nn.QuantizedLinear):
            return f"{name} has a quantised base (fusing would re-quantise it)"
        if module.linear.weight.dtype != mx.float32:
            return (
                f"{name} is {module.linear.weight.dtype} (only float32 weights fuse exactly enough)"
            )
    if wrapped:
        model.update_modules(tree_unflatten([(name, m.fuse()) for name, m in wrapped]))
    return None


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def total_parameter_count(model: nn.Module) -> int:
    from mlx_lm.utils import get_total_parameters

    return get_total_parameters(model)


def adapter_config_dict(model: nn.Module, config: LoraConfig, base_model: str) -> dict:
    """An adapter_config.json that `mlx_lm.load(..., adapter_path=...)` understands (type full:
    mlx-lm's own full fine-tune format, the trained weights loaded over the base's)."""
    if config.type == "full":
        return {
            "fine_tune_type": "full",
            "num_layers": adapted_layer_count(model, config),
            "train_embeddings": config.train_embeddings,
            "model": base_model,
        }
    return {
        "fine_tune_type": config.type,
        "num_layers": adapted_layer_count(model, config),
        "lora_parameters": lora_parameters(config),
        "model": base_model,
    }


def save_adapters(
    model: nn.Module, config: LoraConfig, base_model: str, out_dir: Path, start=None
) -> None:
    """Write adapters.safetensors + adapter_config.json in mlx-lm's format, each atomically.

    With a starting adapter (`start`, fused into the base) the files hold start + trained as one
    LoRA (models/start_adapter.py), so they load on the bare base like any mlx-lm adapter.
    A full fine-tune writes its trained weights (every unfrozen leaf), as mlx-lm's does."""
    weights = dict(tree_flatten(model.trainable_parameters()))
    adapter_config = adapter_config_dict(model, config, base_model)
    if start is not None:
        from rasft_mlx.models.start_adapter import combined_adapter

        weights, adapter_config = combined_adapter(start, weights, adapter_config)
    atomic_write(out_dir / ADAPTER_WEIGHTS_FILE, lambda p: mx.save_safetensors(p, weights))
    text = json.dumps(adapter_config, indent=2)
    atomic_write(out_dir / ADAPTER_CONFIG_FILE, lambda p: Path(p).write_text(text))


def load_adapters_into(model: nn.Module, adapter_dir: str | Path) -> None:
    """Apply the adapters saved in `adapter_dir` (an adapters dir, or a run dir holding one) to
    `model`, with a clear error when they do not fit."""
    from mlx_lm.tuner.utils import load_adapters

    from rasft_mlx.models.start_adapter import adapter_directory

    try:
        adapter_dir = adapter_directory(adapter_dir)
    except ModelError as error:
        raise ModelError(str(error).replace("model.adapter:", "adapter:", 1)) from None
    try:
        load_adapters(model, str(adapter_dir))
    except (ValueError, KeyError) as error:
        raise ModelError(f"adapter: {adapter_dir} does not fit this model: {error}") from error
    model.eval()  # the new adapter layers start in train mode: their dropout would be on
