"""Rollouts shared by the runs of a comparison: a refresh whose every input matches one another
run already decoded reads that run's samples instead of decoding them again.

Arms that roll out (rft, rasft, their variants) from one start with one seed draw the same first
refresh token for token: the adapters start from the same initialisation and each refresh seeds
its sampler (`rank_seed(seed * 1000 + refresh)`). The key hashes every input of the draw (the
model's identity, the trainable weights' bytes, the prompts, the rollout settings, the per-problem
limits and the seed), so in practice only a first refresh matches: after any optimizer step the
weights differ and the refresh decodes afresh. A reused draw also puts MLX's random state where
the decode left it, so the run goes on exactly as if it had decoded. One process only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.generation.completions import Completion, GenerationStats
from rasft_mlx.models.start_adapter import start_identity
from rasft_mlx.recipe.config import recipe_to_dict
from rasft_mlx.runtime.fileio import atomic_write_text
from rasft_mlx.training.checkpoint import mlx_random_state, restore_mlx_random_state

Samples = dict[str, list[Completion]]


def trainable_digest(model) -> str:
    """sha256 of the trainable parameters: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, value in tree_flatten(model.trainable_parameters()):
        exact = value.astype(mx.float32) if value.dtype == mx.bfloat16 else value
        digest.update(f"{name}:{value.dtype}:{value.shape}".encode())
        digest.update(np.asarray(exact).tobytes())
    return digest.hexdigest()


def rollout_key(identity: dict, weights: str, problems, prompts, config, seed, demos) -> str:
    """The draw's key: `problems` in order, each with its prompt's tokens (and, when the rollout
    budget scales with the demo, its demo's response length), under `config` and `seed`."""
    scaled = config.max_new_tokens_per_demo_token > 0
    inputs = {
        "identity": identity,
        "weights": weights,
        "rollout": asdict(config),
        "seed": seed,
        "problems": [
            [p.id, prompts[p.id], demos[p.id].response_length if scaled else None] for p in problems
        ],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


class SharedRollouts:
    """Draws rollouts through `directory` (None, or several ranks: always decodes)."""

    def __init__(self, directory: Path | None, run_name: str, recipe):
        self.directory = None if distributed.distributed() else directory
        self.run_name = run_name
        self.identity = {}
        if self.directory is not None:
            saved = recipe_to_dict(recipe)
            self.identity = {
                "model": {**saved["model"], **start_identity(recipe.model.adapter)},
                "lora": saved["lora"],
            }

    def draw(
        self, model, problems, prompts, config, seed, demos, decode: Callable[[], tuple]
    ) -> tuple[Samples, GenerationStats, dict | None]:
        """`decode()`'s (samples, stats), or a matching earlier draw's; the third value says
        which run decoded a reused draw and in how many seconds (None: decoded here)."""
        if self.directory is None:
            return (*decode(), None)
        key = rollout_key(
            self.identity, trainable_digest(model), problems, prompts, config, seed, demos
        )
        path = self.directory / f"{key}.json"
        if path.is_file():
            stored = json.loads(path.read_text())
            samples = {
                pid: [Completion(text, tuple(ids), truncated) for text, ids, truncated in rows]
                for pid, rows in stored["samples"].items()
            }
            restore_mlx_random_state(stored["random_state"])
            stats = GenerationStats(**stored["stats"])
            return samples, stats, {"from": stored["run"], "seconds": round(stats.seconds, 2)}
        samples, stats = decode()
        stored = {
            "run": self.run_name,
            "stats": asdict(stats),
            "random_state": mlx_random_state(),
            "samples": {
                pid: [[c.text, list(c.token_ids), c.truncated] for c in completions]
                for pid, completions in samples.items()
            },
        }
        atomic_write_text(path, json.dumps(stored))
        return samples, stats, None
