"""Rollouts shared by a comparison's runs: a matching draw is read, not decoded, and changes nothing."""

from __future__ import annotations

import json
from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
import yaml

from rasft_mlx.commands.train import run_training
from rasft_mlx.data.problem import Problem
from rasft_mlx.rasft.shared_rollouts import rollout_key, trainable_digest
from rasft_mlx.recipe.config import RolloutConfig, load_recipe


def recipe_for(model_dir, tmp_path, mode):
    """Two epochs of 16 level 0-1 problems, K = 2, LoRA dropout on (training draws from MLX's
    random state after each refresh, so a reused draw must leave that state as decoding does)."""
    path = tmp_path / f"{mode}.yaml"
    data = {
        "model": {"path": str(model_dir)},
        "data": {"synthetic": {"n_train": 16, "n_test": 4, "min_level": 0, "max_level": 1}},
        "lora": {"rank": 4, "dropout": 0.2},
        "training": {"mode": mode, "epochs": 2, "batch_size": 8, "warmup_steps": 0},
        "rollout": {"k": 2, "max_new_tokens": 8},
        "eval": {"max_new_tokens": 8},
        "output": {"report": False},
    }
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path)


def refreshes(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "refresh"]


def ledger(run_dir, refresh):
    path = run_dir / "rollouts" / f"refresh-{refresh:03d}.jsonl"
    return [
        [s["text"] for s in json.loads(row)["samples"]] for row in path.read_text().splitlines()
    ]


def test_rasft_reads_rfts_first_refresh_and_trains_exactly_as_alone(tiny_llama_dir, tmp_path):
    """rft then rasft from one start and seed, sharing a directory: rasft's first refresh is
    rft's samples, read from disk; its second (after training moved the weights) is decoded.
    Its adapters and every refresh's samples equal those of the same rasft run on its own."""
    shared = tmp_path / "shared"
    run_training(
        recipe_for(tiny_llama_dir, tmp_path, "rft"), tmp_path / "rft", shared_rollouts=shared
    )
    rasft = recipe_for(tiny_llama_dir, tmp_path, "rasft")
    run_training(rasft, tmp_path / "rasft", shared_rollouts=shared)
    run_training(rasft, tmp_path / "alone")
    first, second = refreshes(tmp_path / "rasft")
    assert first["rollouts_reused"]["from"] == "rft" and first["rollouts_reused"]["seconds"] > 0
    assert "rollouts_reused" not in second
    assert all("rollouts_reused" not in r for r in refreshes(tmp_path / "alone"))
    assert ledger(tmp_path / "rasft", 1) == ledger(tmp_path / "rft", 1)
    for refresh in (1, 2):
        assert ledger(tmp_path / "rasft", refresh) == ledger(tmp_path / "alone", refresh)
    adapters = "adapters/adapters.safetensors"
    assert (tmp_path / "rasft" / adapters).read_bytes() == (
        tmp_path / "alone" / adapters
    ).read_bytes()
    assert len(list(shared.glob("*.json"))) == 3  # rft's two draws, rasft's second


def test_the_key_changes_with_every_input_of_the_draw():
    layer = nn.Linear(4, 3)
    mx.eval(layer.parameters())
    problems = [Problem("a", "q a", "s a", "1"), Problem("b", "q b", "s b", "2")]
    prompts = {"a": [1, 2, 3], "b": [4, 5]}
    config = RolloutConfig(k=2, max_new_tokens=8)
    base = (problems, prompts, config, 7, {})
    key = rollout_key({"model": "m"}, trainable_digest(layer), *base)
    assert key == rollout_key({"model": "m"}, trainable_digest(layer), *base)
    changed = [
        rollout_key({"model": "other"}, trainable_digest(layer), *base),
        rollout_key({"model": "m"}, trainable_digest(layer), problems, prompts, config, 8, {}),
        rollout_key(
            {"model": "m"}, trainable_digest(layer), problems, prompts, replace(config, k=3), 7, {}
        ),
        rollout_key(
            {"model": "m"}, trainable_digest(layer), problems[::-1], prompts, config, 7, {}
        ),
        rollout_key(
            {"model": "m"},
            trainable_digest(layer),
            problems,
            {**prompts, "b": [4, 6]},
            config,
            7,
            {},
        ),
    ]
    layer.weight = layer.weight + 1e-7
    changed.append(rollout_key({"model": "m"}, trainable_digest(layer), *base))
    assert len({key, *changed}) == len(changed) + 1
