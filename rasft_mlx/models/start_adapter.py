"""Starting from a trained adapter (`model.adapter`): fused into the base at load, combined on save.

A staged run (SFT first, then RASFT from there) starts from the base plus an earlier LoRA. The
start is fused into the base weights once, so the starting policy *is* the model with the new
adapters switched off: RASFT's reference ratio, SFT+KL, ASFT and the drift all measure against
the start without a second copy of anything. A new LoRA trains on top. The run's `adapters/`
holds both as one LoRA of rank r_start + r_new (concatenated factors, exact), so mlx-lm,
`rasft-mlx eval --adapter`, and every export load the whole policy on the bare base.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from rasft_mlx.models.errors import ModelError

WEIGHTS_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"


@dataclass(frozen=True)
class StartAdapter:
    """A LoRA adapter in mlx-lm's format, read from disk: per module path, its (lora_a, lora_b)."""

    directory: Path
    config: dict
    factors: dict[str, tuple[mx.array, mx.array]]
    digest: str  # sha256 of the weights file: a resume or a comparison checks it is the same

    @property
    def scale(self) -> float:
        return float(self.config["lora_parameters"]["scale"])

    @property
    def rank(self) -> int:
        return int(self.config["lora_parameters"]["rank"])


def adapter_directory(path: str | Path) -> Path:
    """A run dir (its `adapters/`) or an adapters dir, checked to hold an mlx-lm adapter."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"model.adapter: {path} does not exist (a run dir or an adapters dir)")
    candidates = [path, path / "adapters"]
    for candidate in candidates:
        if (candidate / CONFIG_FILE).is_file() and (candidate / WEIGHTS_FILE).is_file():
            return candidate
    raise ModelError(
        f"model.adapter: {path} holds no {CONFIG_FILE} + {WEIGHTS_FILE} (nor does {path}/adapters); "
        "expected a rasft-mlx run dir or an mlx-lm adapters dir"
    )


def weights_digest(directory: Path) -> str:
    return hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest()


def start_identity(adapter: str | None) -> dict:
    """What identifies a starting adapter beyond its path: its weights' sha256 (none: {})."""
    return {"adapter_sha256": weights_digest(adapter_directory(adapter))} if adapter else {}


def read_start_adapter(path: str | Path) -> StartAdapter:
    directory = adapter_directory(path)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ModelError(f"model.adapter: {directory / CONFIG_FILE} is not JSON: {error}") from None
    kind = config.get("fine_tune_type", "lora")
    if kind != "lora":
        raise ModelError(
            f"model.adapter: {directory} is a {kind!r} adapter; a starting adapter must be a LoRA "
            "(fuse a DoRA or full fine-tune into a model dir and pass that as model.path)"
        )
    params = config.get("lora_parameters", {})
    if "rank" not in params or "scale" not in params:
        raise ModelError(
            f"model.adapter: {directory / CONFIG_FILE} lacks lora_parameters rank/scale"
        )
    weights = mx.load(str(directory / WEIGHTS_FILE))
    factors = {}
    for key, value in weights.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "lora_a":
            if f"{module}.lora_b" not in weights:
                raise ModelError(f"model.adapter: {module} has lora_a but no lora_b")
            factors[module] = (value, weights[f"{module}.lora_b"])
        elif leaf != "lora_b":
            raise ModelError(f"model.adapter: unexpected weight {key!r} in {directory}")
    return StartAdapter(directory, config, factors, weights_digest(directory))


def fuse_start_adapter(model: nn.Module, start: StartAdapter) -> int:
    """Merge the start's low-rank updates into the base linears (mlx-lm's LoRALinear.fuse: a
    quantized base is dequantized, updated and quantized again). Returns the layers changed."""
    from mlx_lm.tuner.lora import LoRALinear

    modules = dict(model.named_modules())
    fused = []
    for path, (lora_a, lora_b) in start.factors.items():
        linear = modules.get(path)
        if linear is None or not hasattr(linear, "weight"):
            raise ModelError(f"model.adapter: {start.directory} adapts {path}, not in this model")
        wrapper = LoRALinear.from_base(linear, r=lora_a.shape[1], scale=start.scale)
        if (wrapper.lora_a.shape, wrapper.lora_b.shape) != (lora_a.shape, lora_b.shape):
            raise ModelError(
                f"model.adapter: {path} factors {lora_a.shape} x {lora_b.shape} do not fit "
                f"this model's {wrapper.lora_a.shape} x {wrapper.lora_b.shape}"
            )
        wrapper.lora_a, wrapper.lora_b = lora_a, lora_b
        fused.append((path, wrapper.fuse(dequantize=False)))
    model.update_modules(tree_unflatten(fused))
    mx.eval(model.parameters())
    return len(fused)


def combined_adapter(
    start: StartAdapter, live: dict[str, mx.array], live_config: dict
) -> tuple[dict[str, mx.array], dict]:
    """One LoRA equal to start + live: W + s1 B1 A1 + s2 B2 A2 = W + s2 [B1 s1/s2; B2] [A1 A2].

    Modules only one side adapts get zero factors for the other (which add nothing), so the
    combined adapter covers the union of both: the last max(N1, N2) layers and every key of either.
    Weight names and shapes follow mlx-lm (lora_a: in x r, lora_b: r x out).
    """
    if live_config.get("fine_tune_type", "lora") != "lora":
        raise ModelError("model.adapter: the new adapter must be a LoRA (lora.type: lora)")
    scale = float(live_config["lora_parameters"]["scale"])
    r_start, r_live = start.rank, int(live_config["lora_parameters"]["rank"])
    live_factors = {
        key.rpartition(".")[0]: (live[key], live[key.rpartition(".")[0] + ".lora_b"])
        for key in live
        if key.endswith(".lora_a")
    }
    weights = {}
    for module in sorted(set(start.factors) | set(live_factors)):
        a1, b1 = start.factors.get(module, (None, None))
        a2, b2 = live_factors.get(module, (None, None))
        reference_a, reference_b = (a1, b1) if a1 is not None else (a2, b2)
        in_dims, out_dims = reference_a.shape[0], reference_b.shape[1]
        dtype = reference_a.dtype
        if a1 is None:
            a1, b1 = mx.zeros((in_dims, r_start), dtype), mx.zeros((r_start, out_dims), dtype)
        if a2 is None:
            a2, b2 = mx.zeros((in_dims, r_live), dtype), mx.zeros((r_live, out_dims), dtype)
        weights[f"{module}.lora_a"] = mx.concatenate([a1, a2.astype(a1.dtype)], axis=1)
        b1_scaled = (b1 * (start.scale / scale)).astype(b1.dtype)
        weights[f"{module}.lora_b"] = mx.concatenate([b1_scaled, b2.astype(b1.dtype)], axis=0)
    config = json.loads(json.dumps(live_config))
    params = config["lora_parameters"]
    params["rank"] = r_start + r_live
    start_keys = start.config["lora_parameters"].get("keys")
    if start_keys is None or params.get("keys") is None:
        params.pop("keys", None)
    else:
        params["keys"] = sorted(set(start_keys) | set(params["keys"]))
    layers = [int(start.config.get("num_layers", -1)), int(live_config.get("num_layers", -1))]
    config["num_layers"] = -1 if -1 in layers else max(layers)
    config["start_adapter"] = {"path": str(start.directory), "sha256": start.digest}
    return weights, config
