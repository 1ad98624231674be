"""RASFT on a tiny model: cached reference log-probs, live-policy rollouts, a run's ledger and metrics."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
import yaml
from mlx_lm import load

from rasft_mlx.commands.train import run_training
from rasft_mlx.data.encoding import encode_expert_sequences, encode_prompt
from rasft_mlx.data.synthetic import generate_problems
from rasft_mlx.generation.engine import EngineSettings
from rasft_mlx.models.adapters import adapter_modules, apply_adapters
from rasft_mlx.rasft.reference import with_reference_logprobs
from rasft_mlx.rasft.rollouts import MIN_ROLLOUT_TOKENS, generate_samples, rollout_limit
from rasft_mlx.recipe.config import DEFAULT_SYSTEM_PROMPT, LoraConfig, RolloutConfig, load_recipe
from rasft_mlx.training.losses import token_logprobs


def adapted(model_dir):
    model, tokenizer = load(str(model_dir))
    apply_adapters(model, LoraConfig(rank=4, scale=2.0))
    return model, tokenizer


def perturb_adapters(model, seed):
    mx.random.seed(seed)
    for _, module in adapter_modules(model):
        module.lora_b = mx.random.normal(module.lora_b.shape) * 0.2
    mx.eval(model.parameters())


def test_cached_reference_logprobs_equal_a_fresh_base_forward(tiny_llama_dir):
    model, tokenizer = adapted(tiny_llama_dir)
    perturb_adapters(model, seed=1)  # the policy now differs from the reference
    problems = generate_problems(5, seed=0, min_level=1, max_level=2)
    sequences, _ = encode_expert_sequences(tokenizer, problems, DEFAULT_SYSTEM_PROMPT, 512)
    cached = with_reference_logprobs(model, sequences, batch_size=2, bucket_multiple=16)
    base, _ = load(str(tiny_llama_dir))
    for sequence in cached:
        tokens = mx.array([sequence.tokens])
        fresh = np.array(token_logprobs(base(tokens[:, :-1]), tokens[:, 1:]))[0]
        np.testing.assert_allclose(
            sequence.reference_logprobs, fresh[sequence.prompt_length - 1 :], atol=1e-4
        )
        policy = np.array(token_logprobs(model(tokens[:, :-1]), tokens[:, 1:]))[0]
        assert (
            np.abs(policy[sequence.prompt_length - 1 :] - sequence.reference_logprobs).max() > 1e-3
        )


def test_rollouts_come_from_the_live_adapter(tiny_llama_dir):
    model, tokenizer = adapted(tiny_llama_dir)
    problems = generate_problems(4, seed=0, min_level=1, max_level=1)
    prompts = {p.id: encode_prompt(tokenizer, p.question, DEFAULT_SYSTEM_PROMPT) for p in problems}
    config = RolloutConfig(k=2, max_new_tokens=12, temperature=0.9, top_p=0.95)
    first, _ = generate_samples(model, tokenizer, problems, prompts, config, seed=7)
    again, _ = generate_samples(model, tokenizer, problems, prompts, config, seed=7)
    assert first == again  # same weights, same seed: same samples
    perturb_adapters(model, seed=2)
    changed, _ = generate_samples(model, tokenizer, problems, prompts, config, seed=7)
    assert changed != first


def tiny_rasft_recipe(model_dir, tmp_path, **sections):
    """Two epochs of RASFT on 16 level 0-1 problems, K = 2; `sections` add recipe sections."""
    recipe_path = tmp_path / "recipe.yaml"
    data = {
        "model": {"path": str(model_dir)},
        "data": {"synthetic": {"n_train": 16, "n_test": 4, "min_level": 0, "max_level": 1}},
        "lora": {"rank": 4},
        "training": {"mode": "rasft", "epochs": 2, "batch_size": 8, "warmup_steps": 0},
        "rollout": {"k": 2, "max_new_tokens": 8},
        "eval": {"max_new_tokens": 8},
    }
    recipe_path.write_text(yaml.safe_dump({**data, **sections}))
    return load_recipe(recipe_path)


def test_rasft_run_writes_ledger_and_refresh_metrics(tiny_llama_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run_training(tiny_rasft_recipe(tiny_llama_dir, tmp_path), run_dir)
    assert result.steps >= 4
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    refreshes = [r for r in records if r["event"] == "refresh"]
    assert [r["refresh"] for r in refreshes] == [1, 2]
    assert refreshes[0]["problems_selected"] == 16 and refreshes[0]["rollouts_generated"] == 32
    assert sum(refreshes[0]["solvability_histogram"]) == 16
    assert refreshes[0]["ratio_clip_since_last_refresh"] is None  # nothing trained yet
    clip = refreshes[1]["ratio_clip_since_last_refresh"]
    assert clip["sequences"] >= 16 and 0 <= clip["at_min"] <= 1 and 0 <= clip["at_max"] <= 1
    ledger = [
        json.loads(line)
        for line in (run_dir / "rollouts" / "refresh-001.jsonl").read_text().splitlines()
    ]
    assert len(ledger) == 16 and all(len(row["samples"]) == 2 for row in ledger)
    summary = json.loads((run_dir / "summary.json").read_text())
    split = summary["wall_time_split_seconds"]
    assert {"rollout", "verify", "reference", "train", "eval", "other"} <= set(split)


def test_warmup_epochs_train_the_demos_alone_then_refresh(tiny_llama_dir, tmp_path):
    """rasft.warmup_epochs: 1 of 2: epoch 1 trains the 16 demos at weight 1 (two steps), and the
    only refresh comes at epoch 2's start, after them; its record carries the mechanism gauges."""
    run_dir = tmp_path / "run"
    recipe = tiny_rasft_recipe(
        tiny_llama_dir, tmp_path, rasft={"warmup_epochs": 1}, output={"report": False}
    )
    run_training(recipe, run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = [(r["event"], r.get("step")) for r in records if r["event"] in ("step", "refresh")]
    assert events[:3] == [("step", 1), ("step", 2), ("refresh", None)]
    [refresh] = [r for r in records if r["event"] == "refresh"]
    assert refresh["refresh"] == 1 and refresh["ratio_clip_since_last_refresh"]["sequences"] == 16
    gauges = refresh["mechanism"]
    histogram = refresh["solvability_histogram"]
    assert gauges["mixed_group_share"] == round(histogram[1] / 16, 4)
    assert gauges["trained_share"] == round(refresh["rollouts_trained"] / 32, 4)
    # The step ETA counts optimizer-step time, not the refresh before step 3: at the run's mean
    # time per step so far (elapsed / step) the 3 - last steps left would take longer.
    steps = [r for r in records if r["event"] == "step"]
    third, last = steps[2], steps[-1]["step"]
    assert third["step"] == 3 and last > 3
    assert third["eta_seconds"] < 0.9 * third["elapsed_seconds"] / 3 * (last - 3)


def test_demo_nll_before_any_step_reuses_the_reference_logprobs(
    tiny_llama_dir, tmp_path, monkeypatch
):
    """nll_band routing needs the policy's demo NLL; before the first optimizer step the policy
    is the reference, so the cached reference log-probs give the same NLL with no forward.
    After a step (or for DoRA, whose init rescales) the policy is read afresh."""
    from types import SimpleNamespace

    from rasft_mlx.rasft import refresh
    from rasft_mlx.training.run_directory import MetricsLog

    recipe = tiny_rasft_recipe(tiny_llama_dir, tmp_path, rasft={"selection": "nll_band"})
    model, tokenizer = adapted(tiny_llama_dir)
    problems = generate_problems(6, seed=0, min_level=1, max_level=2)
    demos, _ = encode_expert_sequences(tokenizer, problems, DEFAULT_SYSTEM_PROMPT, 512)
    source = refresh.RasftSource(
        SimpleNamespace(model=model, tokenizer=tokenizer),
        recipe,
        problems,
        demos,
        tmp_path,
        None,
        MetricsLog(tmp_path / "metrics.jsonl"),
    )
    source._prepare()
    ids = sorted(source.experts)
    real_forward, forwards = refresh.response_logprobs, []

    def counted(*args, **kwargs):
        forwards.append(args)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(refresh, "response_logprobs", counted)
    cached = source._demo_nll(ids)
    assert forwards == []
    fresh = [-float(np.mean(v)) for v in real_forward(model, demos, 8, 32)]
    order = [p.id for p in problems]
    np.testing.assert_array_equal(cached, [fresh[order.index(i)] for i in ids])

    perturb_adapters(model, seed=3)  # what a step does
    source.observe_step(SimpleNamespace(ratio_at_min=0, ratio_at_max=0, sequences=8))
    moved = source._demo_nll(ids)
    assert len(forwards) == 1
    assert np.abs(np.array(moved) - np.array(cached)).max() > 1e-3
    assert source.state_dict()["steps_observed"] == 1


def test_rollout_limit_scales_the_demo_between_a_floor_and_max_new_tokens():
    config = RolloutConfig(max_new_tokens=64, max_new_tokens_per_demo_token=1.5)
    assert [rollout_limit(config, n) for n in (20, 21, 30, 42, 43, 500)] == [30, 32, 45, 63, 64, 64]
    assert rollout_limit(config, 4) == MIN_ROLLOUT_TOKENS == 16
    assert rollout_limit(RolloutConfig(max_new_tokens=8, max_new_tokens_per_demo_token=1.5), 4) == 8
    tenths = RolloutConfig(max_new_tokens=64, max_new_tokens_per_demo_token=1.1)
    assert rollout_limit(tenths, 50) == 55  # not 56 from 1.1 x 50 = 55.00000000000001
    assert rollout_limit(RolloutConfig(max_new_tokens=64), 4) == 64  # off


def budget_run(model_dir, tmp_path, factor):
    """A tiny RASFT run of the weak base (whose rollouts stop by themselves) at
    `rollout.max_new_tokens_per_demo_token` factor: each refresh's rollouts, the limits they had,
    the sequences handed to training, the final adapter file and the demos' response tokens."""
    from rasft_mlx.rasft import refresh, rollouts

    rollout = {"k": 2, "max_new_tokens": 48, "batch_size": 4, "temperature": 1.0}
    recipe = tiny_rasft_recipe(
        model_dir,
        tmp_path,
        data={"synthetic": {"n_train": 12, "n_test": 2, "min_level": 0, "max_level": 1}},
        training={"mode": "rasft", "epochs": 2, "batch_size": 4, "learning_rate": 1e-3},
        rollout={**rollout, "max_new_tokens_per_demo_token": factor},
        output={"report": False},
    )
    seen = {"samples": [], "limits": [], "sequences": [], "demo_tokens": {}}

    def spied_samples(*args, **kwargs):
        seen["demo_tokens"] = {i: s.response_length for i, s in kwargs["demos"].items()}
        samples, stats = real_samples(*args, **kwargs)
        seen["samples"].append(samples)
        return samples, stats

    def spied_completions(*args, **kwargs):
        seen["limits"].append(kwargs["limits"])
        return real_completions(*args, **kwargs)

    def spied_refresh(self, progress, room=None):
        sequences = real_refresh(self, progress, room)
        seen["sequences"].append(
            [(s, s.reference_logprobs.tobytes()) for s in sequences]  # not compared by ==
        )
        return sequences

    real_samples, real_completions = refresh.generate_samples, rollouts.generate_completions
    real_refresh = refresh.RasftSource.refresh
    run_dir = tmp_path / f"run-{factor}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(refresh, "generate_samples", spied_samples)
        patch.setattr(rollouts, "generate_completions", spied_completions)
        patch.setattr(refresh.RasftSource, "refresh", spied_refresh)
        run_training(recipe, run_dir)
    seen["adapters"] = (run_dir / "adapters" / "adapters.safetensors").read_bytes()
    return seen


def test_a_budget_no_rollout_reaches_changes_nothing_in_a_run(weak_base_dir, tmp_path):
    """With each problem's limit past where its rollouts stop (and past the few steps the host
    takes to see a stop), the rollouts, the trained sequences and the adapter are those of the
    run without the budget, byte for byte, though the limits are below max_new_tokens."""
    plain = budget_run(weak_base_dir, tmp_path, 0.0)
    assert plain["limits"] == [None, None]  # off: the engine hears of no limits
    longest = {}
    for samples in plain["samples"]:
        for pid, completions in samples.items():
            assert not any(c.truncated for c in completions)
            longest[pid] = max([longest.get(pid, 0)] + [len(c.token_ids) for c in completions])
    demo = plain["demo_tokens"]
    # Past the stop token and the steps before the host reads it (check_every + 1; a limit met
    # before then finishes the row sooner, which moves the batch's compactions and so the draws).
    lag = EngineSettings(max_new_tokens=48).check_every + 2
    factor = max((longest[pid] + 1 + lag) / demo[pid] for pid in longest)
    budget = budget_run(weak_base_dir, tmp_path, factor)
    config = RolloutConfig(max_new_tokens=48, max_new_tokens_per_demo_token=factor)
    for samples, limits in zip(budget["samples"], budget["limits"], strict=True):
        assert limits == [rollout_limit(config, demo[pid]) for pid in samples for _ in range(2)]
    assert min(min(limits) for limits in budget["limits"]) < 48 - 8  # the budget binds
    assert budget["samples"] == plain["samples"]
    assert budget["sequences"] == plain["sequences"]
    assert any(s.source == "rollout" for s, _ in plain["sequences"][-1])  # rollouts trained
    assert budget["adapters"] == plain["adapters"]


def test_a_correct_rollout_too_long_for_max_seq_len_neither_trains_nor_counts(
    tiny_llama_dir, tmp_path
):
    """Every problem gets one right and one wrong sample (a mixed group: the right one would
    train); the right sample of every other problem is longer than data.max_seq_len allows. The
    refresh's trained count and its mechanism gauges count only the rollouts that fit."""
    from rasft_mlx.generation.completions import Completion, GenerationStats
    from rasft_mlx.rasft import refresh

    def fixed_samples(model, tokenizer, problems, *_, **__):
        samples = {}
        for index, problem in enumerate(problems):
            length = 200 if index % 2 else 3
            samples[problem.id] = [
                Completion(
                    f"So the total is \\boxed{{{problem.answer}}} here.", (5,) * length, False
                ),
                Completion("I believe the result must be \\boxed{987654} overall.", (6, 7), False),
            ]
        return samples, GenerationStats(len(problems) * 2, len(problems) * 10, 1.0)

    recipe = tiny_rasft_recipe(
        tiny_llama_dir,
        tmp_path,
        data={
            "synthetic": {"n_train": 16, "n_test": 4, "min_level": 0, "max_level": 1},
            "max_seq_len": 160,
        },
        training={"mode": "rasft", "epochs": 1, "batch_size": 8, "warmup_steps": 0},
        output={"report": False},
    )
    run_dir = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(refresh, "generate_samples", fixed_samples)
        run_training(recipe, run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    [first] = [r for r in records if r["event"] == "refresh"]
    assert first["solvability_histogram"] == [0, 16, 0]  # every group mixed
    assert first["rollouts_trained"] == 8 and first["dropped"]["too_long"] == 8
    assert first["mechanism"]["trained_share"] == round(8 / 32, 4)
