"""Drift from the starting model: KL(pi_ref || pi_theta) and the NLL rise on the starting model's
greedy answers, against an independent numpy computation from full-sequence logits."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load

from rasft_mlx.data.synthetic import generate_problems
from rasft_mlx.evaluation.drift import drift_statistics, measure_drift, reference_answers
from rasft_mlx.models.adapters import adapter_modules, apply_adapters
from rasft_mlx.recipe.config import DEFAULT_SYSTEM_PROMPT, LoraConfig


def adapted(model_dir):
    model, tokenizer = load(str(model_dir))
    apply_adapters(model, LoraConfig(rank=4, scale=2.0))
    return model, tokenizer


def perturb_adapters(model, seed, scale=0.2):
    mx.random.seed(seed)
    for _, module in adapter_modules(model):
        module.lora_b = mx.random.normal(module.lora_b.shape) * scale
    mx.eval(model.parameters())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_drift_statistics_pool_tokens_across_rows():
    kl = np.array([[1.0, 3.0, 9.0], [2.0, 0.0, 0.0]])
    ratio = np.array([[0.5, -0.5, 7.0], [1.0, 0.0, 0.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=float)
    assert drift_statistics(kl, ratio, mask) == (2.0, 1.0 / 3.0)  # (1+3+2)/3, (0.5-0.5+1)/3
    assert drift_statistics(kl, ratio, np.zeros_like(mask)) == (0.0, 0.0)


def test_no_drift_before_training_and_the_starting_answers_ignore_the_adapters(tiny_llama_dir):
    model, tokenizer = adapted(tiny_llama_dir)
    problems = generate_problems(4, seed=0, min_level=1, max_level=2, split="test")
    before = reference_answers(model, tokenizer, problems, DEFAULT_SYSTEM_PROMPT, 12, 4)
    report = measure_drift(model, before, batch_size=3, bucket_multiple=8)
    assert report.kl_ref_policy == 0.0 and report.nll_increase == 0.0  # LoRA B starts at zero
    assert report.problems == len(before) and report.tokens > 0
    perturb_adapters(model, seed=3)
    after = reference_answers(model, tokenizer, problems, DEFAULT_SYSTEM_PROMPT, 12, 4)
    assert [s.tokens for s in after] == [s.tokens for s in before]


@pytest.mark.parametrize(("batch_size", "lanes"), [(2, 1), (3, 2), (5, 3)])
def test_drift_equals_an_independent_full_logits_computation(tiny_llama_dir, batch_size, lanes):
    """Whether or not each batch's rows are split over decode lanes."""
    model, tokenizer = adapted(tiny_llama_dir)
    problems = generate_problems(5, seed=1, min_level=1, max_level=2, split="test")
    sequences = reference_answers(model, tokenizer, problems, DEFAULT_SYSTEM_PROMPT, 10, 5)
    perturb_adapters(model, seed=4)
    report = measure_drift(model, sequences, batch_size, bucket_multiple=8, lanes=lanes)
    base, _ = load(str(tiny_llama_dir))
    kl_values, ratio_values = [], []
    for sequence in sequences:
        tokens = mx.array([sequence.tokens])
        policy = log_softmax(np.array(model(tokens[:, :-1]), dtype=np.float64)[0])
        reference = log_softmax(np.array(base(tokens[:, :-1]), dtype=np.float64)[0])
        answer = range(sequence.prompt_length - 1, len(sequence.tokens) - 1)
        for t in answer:
            kl_values.append((np.exp(reference[t]) * (reference[t] - policy[t])).sum())
            target = sequence.tokens[t + 1]
            ratio_values.append(reference[t, target] - policy[t, target])
    assert report.tokens == len(kl_values)
    np.testing.assert_allclose(report.kl_ref_policy, np.mean(kl_values), rtol=1e-4)
    np.testing.assert_allclose(report.nll_increase, np.mean(ratio_values), rtol=1e-4, atol=1e-6)
    assert report.kl_ref_policy > 1e-3
    perturb_adapters(model, seed=4, scale=0.4)  # further from the reference: more drift
    assert measure_drift(model, sequences, 2, 8).kl_ref_policy > report.kl_ref_policy


def write_drift_recipe(path, model_dir, seed=0):
    import yaml

    synthetic = {"n_train": 16, "n_test": 4, "min_level": 1, "max_level": 1, "n_ood": 3}
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(model_dir)},
                "data": {"synthetic": {**synthetic, "ood_min_level": 2, "ood_max_level": 2}},
                "lora": {"rank": 4},
                "training": {"mode": "sft", "batch_size": 8, "learning_rate": 5e-3, "seed": seed},
                "eval": {
                    "max_new_tokens": 8,
                    "before_training": True,
                    "extra_sets": ["synthetic-ood"],
                    "drift_problems": 3,
                },
            }
        )
    )
    return path


def drift_events(run_dir):
    import json

    return [
        record
        for record in map(json.loads, (run_dir / "metrics.jsonl").open())
        if record["event"] == "drift"
    ]


def test_a_run_reports_drift_and_its_extra_test_sets(tiny_llama_dir, tmp_path):
    import json

    from rasft_mlx.commands.train import run_training
    from rasft_mlx.recipe.config import load_recipe

    recipe_path = write_drift_recipe(tmp_path / "recipe.yaml", tiny_llama_dir)
    run_dir = tmp_path / "run"
    run_training(load_recipe(recipe_path), run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_extra"]["synthetic-ood"]["problems"] == 3
    assert summary["eval_extra_before_training"]["synthetic-ood"]["problems"] == 3
    records = (run_dir / "eval-final-synthetic-ood.jsonl").read_text().splitlines()
    assert [json.loads(r)["id"] for r in records] == [f"synthetic-ood-L2-{i}" for i in range(3)]
    drift = summary["drift"]
    assert drift["problems"] == 3 and drift["tokens"] > 0 and drift["kl_ref_policy"] > 0
    events = [json.loads(line)["event"] for line in (run_dir / "metrics.jsonl").open()]
    assert events.count("eval_extra") == 2 and events.count("drift") == 1
    assert summary["wall_time_split_seconds"]["drift"] > 0


def test_kept_answers_round_trip_and_other_settings_refuse_them(tmp_path):
    from rasft_mlx.data.encoding import TrainingSequence
    from rasft_mlx.evaluation.drift import answers_identity, load_answers, save_answers

    problems = generate_problems(3, seed=0, min_level=1, max_level=1)
    identity = answers_identity({"path": "m", "lora": (1, 2)}, problems, "sys", 8, 4)
    answers = [TrainingSequence("a", (1, 2, 3, 4), 2), TrainingSequence("b", (5, 6, 7), 1)]
    path = tmp_path / "answers.json"
    save_answers(path, identity, answers)
    assert load_answers(path, identity) == answers
    changed = [
        answers_identity({"path": "m", "lora": (1, 2)}, problems, "sys", 8, 5),
        answers_identity({"path": "m", "lora": (1, 2)}, problems, "other", 8, 4),
        answers_identity({"path": "m", "lora": (1, 2)}, problems[:2], "sys", 8, 4),
        answers_identity({"path": "n", "lora": (1, 2)}, problems, "sys", 8, 4),
    ]
    assert all(load_answers(path, other) is None for other in changed)
    path.write_text('{"identity": ')  # a torn file is regenerated, not an error
    assert load_answers(path, identity) is None
    assert load_answers(tmp_path / "absent.json", identity) is None


def test_runs_sharing_an_answers_file_generate_them_once_and_measure_the_same(
    tiny_llama_dir, tmp_path
):
    import json

    from rasft_mlx.commands.train import run_training
    from rasft_mlx.recipe.config import load_recipe

    answers = tmp_path / "drift-answers.json"
    first = load_recipe(write_drift_recipe(tmp_path / "first.yaml", tiny_llama_dir, seed=0))
    second = load_recipe(write_drift_recipe(tmp_path / "second.yaml", tiny_llama_dir, seed=1))
    run_training(first, tmp_path / "first", drift_answers=answers)
    run_training(second, tmp_path / "second", drift_answers=answers)
    run_training(second, tmp_path / "alone")  # the same run, answers generated in the run
    assert [e["answers_reused"] for e in drift_events(tmp_path / "first")] == [False]
    assert [e["answers_reused"] for e in drift_events(tmp_path / "second")] == [True]
    kept = json.loads(answers.read_text())["answers"]
    assert len(kept) == 3 and all(len(a["tokens"]) > a["prompt_length"] for a in kept)

    def drift(name):
        return json.loads((tmp_path / name / "summary.json").read_text())["drift"]

    assert drift("second") == drift("alone")
    assert drift("second") != drift("first")  # another seed: another tuned model
