"""Model loading: Hub id, local directory, GGUF file or builtin; dequantising and dtype on the CPU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from rasft_mlx.models.errors import ModelError
from rasft_mlx.models.start_adapter import fuse_start_adapter, read_start_adapter
from rasft_mlx.recipe.config import ModelConfig
from rasft_mlx.runtime.memory import is_cpu_device


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    source: str
    local_dir: Path | None
    start_adapter: object | None = None  # models/start_adapter.StartAdapter, fused into the base


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
        from rasft_mlx.models.builtin import BuiltinModelError, resolve_builtin
        from rasft_mlx.models.gguf_import import convert_gguf

        try:
            gguf_path = resolve_builtin(spec)
        except BuiltinModelError as error:
            raise ModelError(f"model.path: {error}") from error
        return str(convert_gguf(gguf_path, dequantize=dequantize))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"model.path: GGUF file {spec!r} does not exist")
        from rasft_mlx.models.gguf_import import convert_gguf

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
    """Load model + tokenizer, dequantised and cast as the config (and the device) asks, with the
    starting adapter (`model.adapter`) fused in: the starting policy."""
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
    start = None
    if config.adapter:
        start = read_start_adapter(config.adapter)
        fuse_start_adapter(model, start)
    return LoadedModel(
        model=model, tokenizer=tokenizer, source=source, local_dir=local, start_adapter=start
    )
