"""A GPU's defaults on the CPU: bf16 weights and a kept quantized base (QLoRA) trained, resumed
and exported by the real run; generation sized from device memory and the candidate top-p forced."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load
from rich.console import Console

import rasft_mlx.commands.train as train_command
from rasft_mlx.commands.train import TrainingInterrupted, run_training
from rasft_mlx.export.formats import export_run
from rasft_mlx.generation import engine, nucleus
from rasft_mlx.generation.engine import generate_rows
from rasft_mlx.generation.nucleus import CandidateTopPSampler, MlxLmSampler, make_rollout_sampler
from rasft_mlx.models import numerics
from rasft_mlx.models.adapters import adapter_modules, load_adapters_into
from rasft_mlx.models.loading import load_model
from rasft_mlx.recipe.config import ModelConfig, load_recipe, recipe_from_dict
from rasft_mlx.runtime.memory import (
    decode_bytes_per_row,
    free_memory_bytes,
    machine_memory_bytes,
    model_dims,
)
from rasft_mlx.training.checkpoint import list_checkpoints, read_checkpoint

QUIET = Console(quiet=True)
BF16_EPSILON = 2.0**-7  # bfloat16's machine epsilon: 8 bits of mantissa
# The fused model quantized again: base + adapter within about one quantization step
REQUANTIZATION_ERROR = {4: 0.15, 8: 0.02}
TOKENS = [[1, 5, 9, 23, 42, 77, 100, 150, 200, 250, 31, 64]]


def tiny_recipe(model_dir: Path, **overrides: dict):
    """Two steps of 8 demos, a refresh before each (RASFT), then 4 test problems; `overrides`
    update the recipe's sections. The ratio's clip bounds sit at 1 +- bf16's epsilon, so a step
    counts every sequence whose ratio is farther from 1."""
    sections = {
        "model": {"path": str(model_dir)},
        "data": {
            "synthetic": {"n_train": 16, "n_test": 4, "min_level": 0, "max_level": 1},
            "max_seq_len": 256,
        },
        "lora": {"rank": 4, "scale": 2.0, "dropout": 0.3},
        "training": {
            "mode": "rasft",
            "epochs": 1,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "warmup_steps": 1,
            "eval_every_epoch": False,
        },
        "rollout": {"k": 2, "max_new_tokens": 6, "temperature": 1.0},
        "rasft": {
            "selection": "nll_band",
            "refresh_every_steps": 1,
            "selection_fraction": 0.5,
            "ratio_min": 1 - BF16_EPSILON,
            "ratio_max": 1 + BF16_EPSILON,
        },
        "eval": {"max_new_tokens": 4},
        "output": {"save_every": 1, "report": False},
    }
    for name, values in overrides.items():
        sections[name] = {**sections[name], **values}
    return recipe_from_dict(sections)


@pytest.fixture
def loaded_models(monkeypatch) -> list[nn.Module]:
    """The models the runs load (run_training's load_model, spied on). The slow-numerics probe
    is answered without timing matmuls: its warning is tests/test_numerics_warning.py's."""
    models = []

    def load_and_keep(config):
        loaded = load_model(config)
        models.append(loaded.model)
        return loaded

    monkeypatch.setattr(train_command, "load_model", load_and_keep)
    monkeypatch.setattr(numerics, "matmul_slowdowns", lambda half, bits: {})
    return models


def straight_and_resumed(recipe, tmp_path: Path) -> tuple[Path, Path]:
    """The run in one go, and the same run stopped after its first step and resumed."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_training(recipe, straight, QUIET)
    with pytest.raises(TrainingInterrupted):
        run_training(recipe, resumed, QUIET, stop_after=1)
    run_training(recipe, resumed, QUIET, resume=True)
    return straight, resumed


def records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def assert_resumed_exactly(straight: Path, resumed: Path) -> None:
    adapters = Path("adapters") / "adapters.safetensors"
    assert (resumed / adapters).read_bytes() == (straight / adapters).read_bytes()
    losses = [[(r["step"], r["loss"]) for r in records(d, "step")] for d in (straight, resumed)]
    assert losses[0] == losses[1]


def assert_trained_finitely_from_ratio_one(run_dir: Path) -> None:
    """Both steps trained on finite numbers, and the first one (the policy still the reference)
    found every sequence's ratio to the cached reference log-probs within bf16's epsilon of 1."""
    steps = records(run_dir, "step")
    assert [s["step"] for s in steps] == [1, 2]
    assert all(math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]) for s in steps)
    assert steps[0]["sequences"] > 0
    assert steps[0]["ratio_at_min"] == steps[0]["ratio_at_max"] == 0, steps[0]


@pytest.mark.parametrize("mode", ["sft", "rasft"])
def test_a_bf16_run_trains_finitely_from_ratio_one_and_resumes_exactly(
    tiny_llama_dir, tmp_path, loaded_models, mode
):
    straight, resumed = straight_and_resumed(
        tiny_recipe(tiny_llama_dir, model={"dtype": "bfloat16"}, training={"mode": mode}), tmp_path
    )
    model = loaded_models[0]
    trained = dict(tree_flatten(model.trainable_parameters()))
    base = [v for name, v in tree_flatten(model.parameters()) if name not in trained]
    assert {v.dtype for v in base} == {mx.bfloat16}
    newest = read_checkpoint(list_checkpoints(straight)[0])
    optimizer = [
        v for v in newest.optimizer_state().values() if mx.issubdtype(v.dtype, mx.floating)
    ]
    assert optimizer and {v.dtype for v in [*trained.values(), *optimizer]} == {mx.float32}
    assert_trained_finitely_from_ratio_one(straight)
    if mode == "rasft":
        assert len(records(straight, "refresh")) == 2
    assert_resumed_exactly(straight, resumed)


@pytest.fixture(scope="module")
def quantized_dirs(tiny_llama_dir, tmp_path_factory) -> dict[int, Path]:
    """The tiny llama quantized by mlx-lm (groups of 32), 4- and 8-bit."""
    from mlx_lm import convert

    root = tmp_path_factory.mktemp("quantized")
    for bits in (4, 8):
        convert(
            str(tiny_llama_dir), str(root / f"q{bits}"), quantize=True, q_group_size=32, q_bits=bits
        )
    return {bits: root / f"q{bits}" for bits in (4, 8)}


def logits_of(model) -> np.ndarray:
    return np.array(model(mx.array(TOKENS)).astype(mx.float32))


def relative_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(a).max())


def own_logits(run_dir: Path) -> np.ndarray:
    """The run's model as rasft-mlx loads it: the recipe's (kept quantized) base and adapters."""
    loaded = load_model(load_recipe(run_dir / "recipe.yaml").model)
    load_adapters_into(loaded.model, run_dir / "adapters")
    return logits_of(loaded.model)


@pytest.mark.parametrize("bits", [4, 8])
def test_a_kept_quantized_base_trains_refreshes_evaluates_resumes_and_exports(
    quantized_dirs, tmp_path, loaded_models, bits
):
    base_dir = quantized_dirs[bits]
    recipe = tiny_recipe(base_dir, model={"dequantize": "never"}, training={"learning_rate": 2e-2})
    straight, resumed = straight_and_resumed(recipe, tmp_path)
    model = loaded_models[0]
    quantized = (nn.QuantizedLinear, nn.QuantizedEmbedding)
    kept = [m for _, m in model.named_modules() if isinstance(m, quantized)]
    assert kept and {m.bits for m in kept} == {bits}
    assert all(isinstance(m.linear, nn.QuantizedLinear) for _, m in adapter_modules(model))
    refreshes = records(straight, "refresh")
    assert len(refreshes) == 2 and all(r["rollouts_generated"] > 0 for r in refreshes)
    assert_trained_finitely_from_ratio_one(straight)
    (evaluation,) = records(straight, "eval")
    assert evaluation["problems"] == 4 and 0 <= evaluation["pass_at_1"] <= 1
    assert_resumed_exactly(straight, resumed)

    own = own_logits(straight)
    assert relative_diff(own, logits_of(load(str(base_dir))[0])) > 1e-2  # the adapters count
    peft = export_run(straight, "peft", tmp_path / "peft").out_dir
    config = json.loads((peft / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir.resolve())
    assert str(base_dir.resolve()) in (peft / "README.md").read_text()
    assert "is quantized by MLX, which transformers cannot load" in (peft / "README.md").read_text()
    plain = export_run(straight, "fused", tmp_path / "plain", dequantize=True).out_dir
    assert "quantization" not in json.loads((plain / "config.json").read_text())
    assert relative_diff(own, logits_of(load(str(plain))[0])) < 1e-5
    requantized = export_run(straight, "fused", tmp_path / "requantized").out_dir
    assert json.loads((requantized / "config.json").read_text())["quantization"]["bits"] == bits
    assert relative_diff(own, logits_of(load(str(requantized))[0])) < REQUANTIZATION_ERROR[bits]


# --- the switches a GPU flips, forced on the CPU -------------------------------------------------


class PretendGpu:
    """What mx.default_device() returns while a test pretends to run on a GPU (the arrays stay on
    the CPU); `device_info` and `active_memory` stand in for the device's own answers."""

    type = mx.DeviceType.gpu

    def __init__(self, memory: int, in_use: int = 0, key: str = "memory_size"):
        self.memory, self.in_use, self.key = memory, in_use, key

    def install(self, monkeypatch) -> PretendGpu:
        monkeypatch.setattr(mx, "default_device", lambda: self)
        monkeypatch.setattr(
            mx, "device_info", lambda: {"device_name": "pretend", self.key: self.memory}
        )
        monkeypatch.setattr(mx, "get_active_memory", lambda: self.in_use)
        return self


def test_a_gpu_sizes_generation_from_its_own_memory(monkeypatch):
    ram = machine_memory_bytes()
    keys = ("max_recommended_working_set_size", "memory_size", "total_memory")
    for key in keys:  # Metal's working set, then the totals CUDA reports
        gpu = PretendGpu(3 * 2**30, in_use=2**30, key=key).install(monkeypatch)
        assert machine_memory_bytes() == 3 * 2**30
        assert free_memory_bytes() == 2 * 2**30
        gpu.in_use = 4 * 2**30
        assert free_memory_bytes() == 0
    PretendGpu(3 * 2**30, key="device_name").install(monkeypatch)  # no memory figure: the RAM's
    assert machine_memory_bytes() == ram


@pytest.fixture(scope="module")
def bf16_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny llama saved in bfloat16, like most checkpoints on the Hub."""
    from mlx_lm import convert

    out = tmp_path_factory.mktemp("bf16") / "model"
    convert(str(tiny_llama_dir), str(out), dtype="bfloat16")
    return out


def float_dtypes(model) -> set:
    return {
        v.dtype for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)
    }


def quantized_bits(model) -> set[int]:
    return {m.bits for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)}


def test_auto_keeps_bf16_and_a_quantized_base_on_a_gpu_and_not_on_a_cpu(
    bf16_dir, quantized_dirs, monkeypatch
):
    def load_auto(model_dir):
        return load_model(ModelConfig(path=str(model_dir))).model  # dtype, dequantize: auto

    assert float_dtypes(load_auto(bf16_dir)) == {mx.float32}
    on_cpu = load_auto(quantized_dirs[4])
    assert not quantized_bits(on_cpu) and float_dtypes(on_cpu) == {mx.float32}
    PretendGpu(64 * 2**30).install(monkeypatch)
    assert float_dtypes(load_auto(bf16_dir)) == {mx.bfloat16}
    assert quantized_bits(load_auto(quantized_dirs[4])) == {4}


def generation_spies(monkeypatch) -> tuple[list[dict], list]:
    """Each rollout-engine call of a run (its settings, rows, chunks and samples) and each sampler
    it made, recorded."""
    calls, samplers = [], []

    def generate_and_record(model, prompts, counts, settings, eos, *args, **kwargs):
        results, stats = generate_rows(model, prompts, counts, settings, eos, *args, **kwargs)
        rows = sum(counts) if isinstance(counts, list) else counts * len(prompts)
        calls.append({"settings": settings, "rows": rows, "chunks": stats.chunks})
        calls[-1].update(prompts=prompts, results=results)
        return results, stats

    def make_and_record(*args):
        samplers.append(make_rollout_sampler(*args))
        return samplers[-1]

    monkeypatch.setattr(engine, "generate_rows", generate_and_record)
    monkeypatch.setattr(engine, "make_rollout_sampler", make_and_record)
    return calls, samplers


def test_on_a_gpu_rollouts_and_eval_fill_its_free_memory_and_sort_in_full(
    tiny_llama_dir, tmp_path, monkeypatch
):
    """A run pretending to be on a GPU whose free memory holds 3.5 decoded sequences at the
    default share of one half: every rollout and eval batch decodes 3 rows at a time, and the
    rollouts sample by mlx-lm's full sort though the vocabulary outgrows the candidates the CPU's
    top-p would draw among."""
    monkeypatch.setattr(nucleus, "NUCLEUS_CANDIDATES", 64)
    row_bytes = decode_bytes_per_row(model_dims(load(str(tiny_llama_dir))[0]), 256)
    gpu = PretendGpu(64 * 2**30)
    gpu.in_use = gpu.memory - 7 * row_bytes  # every context here is under 256 tokens
    gpu.install(monkeypatch)
    calls, samplers = generation_spies(monkeypatch)
    recipe = tiny_recipe(tiny_llama_dir, training={"max_steps": 1}, rollout={"k": 4, "top_p": 0.9})
    run_training(recipe, tmp_path / "run", QUIET)
    rollouts = [c for c in calls if c["settings"].temperature > 0]
    evals = [c for c in calls if c["settings"].temperature == 0]
    assert rollouts and evals and {c["settings"].max_rows for c in calls} == {3}
    assert max(c["rows"] for c in rollouts) > 3 and max(c["rows"] for c in evals) > 3
    assert all(c["chunks"] == -(-c["rows"] // 3) for c in calls)
    sampling = [s for s in samplers if not getattr(s, "greedy", False)]
    assert sampling and all(isinstance(s, MlxLmSampler) for s in sampling)


def test_on_a_cpu_rollouts_are_drawn_among_the_candidates_within_the_nucleus(
    tiny_llama_dir, tmp_path, monkeypatch
):
    """The candidate top-p in a real refresh: the tiny vocabulary (320 tokens) is under a run's
    1,024 candidates, so they are cut to 256. The rollouts' sampler draws every row among them,
    and each rollout's first token lies in mlx-lm's nucleus of its prompt under the starting
    policy (the refresh before the first step)."""
    monkeypatch.setattr(nucleus, "NUCLEUS_CANDIDATES", 256)
    calls, samplers = generation_spies(monkeypatch)
    top_p = 0.5
    rollout = {"k": 8, "top_p": top_p, "repetition_penalty": 1.0}
    # Every problem rolled out: one step's cap would trim the refresh to 8 of the 16 problems.
    untrimmed = {"trim_capped_refresh": False}
    run_training(
        tiny_recipe(tiny_llama_dir, training={"max_steps": 1}, rollout=rollout, rasft=untrimmed),
        tmp_path / "run",
        QUIET,
    )
    candidates = [s for s in samplers if isinstance(s, CandidateTopPSampler)]
    assert candidates and all(s.candidates == 256 for s in candidates)
    assert sum(s.rows_drawn for s in candidates) > 0
    assert sum(s.rows_full_sort for s in candidates) == 0
    first_refresh = next(c for c in calls if c["settings"].temperature > 0)
    model, _ = load(str(tiny_llama_dir))
    drawn = [
        (prompt, s.token_ids[0])
        for prompt, samples in zip(first_refresh["prompts"], first_refresh["results"], strict=True)
        for s in samples
        if s.token_ids
    ]
    assert len(drawn) >= 16
    for prompt, token in drawn:
        probs = np.array(mx.softmax(model(mx.array([prompt]))[0, -1].astype(mx.float32)))
        assert probs[probs > probs[token]].sum() < top_p + 0.01  # the mass of likelier tokens
