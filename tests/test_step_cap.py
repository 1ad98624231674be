"""rasft.trim_capped_refresh: a refresh the step cap cuts short rolls out only what can train."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from test_refresh import tiny_rasft_recipe

from rasft_mlx.commands.train import run_training
from rasft_mlx.rasft.step_cap import problems_within_room
from rasft_mlx.recipe.config import TrainingConfig
from rasft_mlx.training.step_plan import room_for_sequences

IDS = [f"p{i}" for i in range(10)]


def test_room_counts_the_sequences_of_the_steps_left():
    capped = TrainingConfig(max_steps=10, batch_size=4, grad_accumulation=2)
    assert room_for_sequences(capped, 7) == 3 * 4 * 2
    assert room_for_sequences(capped, 12) == 0
    assert room_for_sequences(TrainingConfig(max_steps=None), 7) is None


def test_a_cap_with_room_for_every_problem_keeps_them_all_and_draws_nothing():
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    assert problems_within_room(IDS, None, rng) is None
    assert problems_within_room(IDS, 10, rng) is None
    assert problems_within_room(IDS, 25, rng) is None
    assert rng.bit_generator.state == before  # the run's later draws are unchanged


def test_a_tighter_cap_keeps_that_many_problems_each_equally_likely():
    rng = np.random.default_rng(1)
    counts = Counter()
    draws = 4000
    for _ in range(draws):
        kept = problems_within_room(IDS, 3, rng)
        assert len(kept) == 3 and kept <= set(IDS)
        counts.update(kept)
    # Each problem is kept with probability 3 / 10: 1,200 of 4,000 (sd ~29).
    assert all(abs(counts[i] - 1200) < 120 for i in IDS), counts


def capped_run(model_dir, tmp_path, name: str, trim: bool, max_steps: int | None, **rasft):
    """A RASFT run on the weak base (12 problems, batch 4, K 2), spying on each refresh's
    sequences; `rasft`: more rasft keys."""
    from rasft_mlx.rasft import refresh

    recipe = tiny_rasft_recipe(
        model_dir,
        tmp_path,
        data={"synthetic": {"n_train": 12, "n_test": 2, "min_level": 0, "max_level": 1}},
        training={
            "mode": "rasft",
            "epochs": 2,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "max_steps": max_steps,
        },
        rollout={"k": 2, "max_new_tokens": 32, "batch_size": 8, "temperature": 1.0},
        rasft={"trim_capped_refresh": trim, **rasft},
        output={"report": False},
    )
    handed_out = []

    def spied_refresh(self, progress, room=None):
        sequences = real_refresh(self, progress, room)
        handed_out.append(sequences)
        return sequences

    real_refresh = refresh.RasftSource.refresh
    run_dir = tmp_path / name
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(refresh.RasftSource, "refresh", spied_refresh)
        result = run_training(recipe, run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "steps": result.steps,
        "refreshes": [r for r in records if r["event"] == "refresh"],
        "sequences": handed_out,
        "ledger": (run_dir / "rollouts" / "refresh-001.jsonl").read_text().splitlines(),
        "adapters": (run_dir / "adapters" / "adapters.safetensors").read_bytes(),
    }


def test_a_refresh_the_cap_cuts_short_rolls_out_only_the_problems_it_can_train(
    weak_base_dir, tmp_path
):
    """Warm-up epoch 1 trains the 12 demos in 3 steps; max_steps 4 leaves one step of 4
    sequences for epoch 2, so its refresh rolls out 4 problems (not 12) and the epoch holds
    only their demos and rollouts; the run still takes its 4 steps."""
    trimmed = capped_run(weak_base_dir, tmp_path, "trimmed", True, 4, warmup_epochs=1)
    full = capped_run(weak_base_dir, tmp_path, "full", False, 4, warmup_epochs=1)
    assert trimmed["steps"] == full["steps"] == 4
    [record], [full_record] = trimmed["refreshes"], full["refreshes"]
    assert record["step_cap"] == {"room": 4, "problems_kept": 4}
    assert "step_cap" not in full_record
    assert (record["problems_selected"], record["rollouts_generated"]) == (4, 8)
    assert (full_record["problems_selected"], full_record["rollouts_generated"]) == (12, 24)
    kept = {json.loads(row)["problem_id"] for row in trimmed["ledger"]}
    assert len(kept) == 4
    [sequences] = trimmed["sequences"]
    assert {s.problem_id for s in sequences} == kept
    assert sum(s.source == "expert" for s in sequences) == 4 <= len(sequences)
    [full_sequences] = full["sequences"]
    assert sum(s.source == "expert" for s in full_sequences) == 12


def test_where_the_cap_leaves_room_for_every_problem_nothing_changes(weak_base_dir, tmp_path):
    """No cap, two refreshes drawing a selection fraction from the source's random stream: the
    same sequences and the same adapter bytes with the trim on and off."""
    on = capped_run(weak_base_dir, tmp_path, "on", True, None, selection="fraction")
    off = capped_run(weak_base_dir, tmp_path, "off", False, None, selection="fraction")
    assert len(on["refreshes"]) == 2
    assert all("step_cap" not in r for r in on["refreshes"])
    assert [[s.tokens for s in q] for q in on["sequences"]] == [
        [s.tokens for s in q] for q in off["sequences"]
    ]
    assert on["adapters"] == off["adapters"]
