"""Validation during training (training/validation.py): the loss it logs, the held-out fraction,
the best adapters kept, resume, pass@1, the report and trackers, and the recipe's refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from rich.console import Console

import rasft_mlx.commands.train as train_command
from rasft_mlx.commands.train import TrainingInterrupted, run_training
from rasft_mlx.data.encoding import encode_prompt, encode_response
from rasft_mlx.evaluation.evaluate import evaluate_problems
from rasft_mlx.models.adapters import apply_adapters
from rasft_mlx.models.loading import load_model
from rasft_mlx.recipe.config import RecipeError, recipe_from_dict
from rasft_mlx.reporting import trackers
from rasft_mlx.reporting.run_report import build_run_report
from rasft_mlx.training.checkpoint import checkpoints_dir, step_dir_name
from rasft_mlx.training.run_data import encode_training_data, load_run_sets
from rasft_mlx.training.run_directory import TrainingError
from rasft_mlx.training.validation import validation_loss

QUIET = Console(quiet=True)


def recipe_dict(model_dir: Path, **sections) -> dict:
    """16 train problems, 4 of them held out; a learning rate high enough (no clipping, cosine to
    0 over 9 steps) that the validation loss goes down, up, and down again, with its best at
    step 5 of 9."""
    data = {
        "model": {"path": str(model_dir)},
        "data": {
            "synthetic": {"n_train": 16, "n_test": 2, "min_level": 0, "max_level": 1},
            "max_seq_len": 256,
            "validation_fraction": 0.25,
        },
        "lora": {"rank": 4, "scale": 2.0},
        "training": {
            "mode": "sft",
            "epochs": 3,
            "batch_size": 4,
            "learning_rate": 0.05,
            "warmup_steps": 0,
            "grad_clip": 0.0,
            "eval_every_epoch": False,
        },
        "eval": {"max_new_tokens": 4, "val_every": 1},
        "output": {"save_every": 1, "keep_best": "val_loss", "keep_checkpoints": 20},
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return data


def records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def weights(directory: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(directory / "adapters.safetensors")).items()}


class RecordingTracker(trackers.StepTracking):
    """A tracker that keeps (tag, step, value), standing in for wandb."""

    seen: list = []

    def __init__(self, run_dir, run_name, config):
        super().__init__()

    def write(self, record: dict) -> None:
        step, values = self.scalars(record)
        RecordingTracker.seen += [(tag, step, value) for tag, value in values.items()]

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def straight_run(tiny_llama_dir, tmp_path_factory) -> Path:
    """One uninterrupted run, its metrics also sent to a tracker (wandb's place)."""
    run_dir = tmp_path_factory.mktemp("validation") / "straight"
    recipe = recipe_from_dict(recipe_dict(tiny_llama_dir, output={"report_to": ["wandb"]}))
    RecordingTracker.seen = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(trackers.TRACKERS, "wandb", RecordingTracker)
        patch.setattr(trackers, "check_installed", lambda names: None)
        patch.setattr(train_command, "check_installed", lambda names: None)
        run_training(recipe, run_dir, QUIET)
    return run_dir


def independent_mean_ce(model, tokenizer, problems, system_prompt: str) -> float:
    """Mean cross-entropy per response token, one sequence at a time over the full logits."""
    total, count = 0.0, 0
    for problem in problems:
        prompt = encode_prompt(tokenizer, problem.question, system_prompt)
        tokens = prompt + encode_response(tokenizer, problem.solution)
        logits = model(mx.array([tokens[:-1]]))[0].astype(mx.float32)
        logprobs = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
        for position in range(len(prompt) - 1, len(tokens) - 1):
            total -= float(logprobs[position, tokens[position + 1]])
            count += 1
    return total / count


def test_the_logged_validation_loss_is_the_mean_token_ce_of_the_held_out_demos(
    straight_run, tiny_llama_dir
):
    recipe = recipe_from_dict(recipe_dict(tiny_llama_dir))
    validation = load_run_sets(recipe).validation
    logged = {r["step"]: r for r in records(straight_run, "validation")}
    steps = [r["step"] for r in records(straight_run, "validation")]
    assert steps == list(range(1, 10))  # every step, the last one once
    loaded = load_model(recipe.model)
    apply_adapters(loaded.model, recipe.lora)
    loaded.model.eval()
    for step in (1, 5, 9):
        checkpoint = checkpoints_dir(straight_run) / step_dir_name(step)
        loaded.model.load_weights(str(checkpoint / "adapters.safetensors"), strict=False)
        expected = independent_mean_ce(
            loaded.model, loaded.tokenizer, validation, recipe.data.system_prompt
        )
        assert logged[step]["loss"] == pytest.approx(expected, rel=1e-5)
        assert logged[step]["sequences"] == len(validation) == 4


def test_the_loss_has_dropout_off_and_no_sequence_weights(tiny_llama_dir):
    """Over batches with padding: adapter dropout 0.5 left on, weighted sequences; the loss is
    still the plain mean token CE of the model in eval mode."""
    recipe = recipe_from_dict(recipe_dict(tiny_llama_dir, lora={"dropout": 0.5}))
    loaded = load_model(recipe.model)
    apply_adapters(loaded.model, recipe.lora)
    trained = tree_flatten(loaded.model.trainable_parameters())  # B starts at 0: make it count
    key = mx.random.key(3)
    loaded.model.update(
        tree_unflatten([(k, 0.5 * mx.random.normal(v.shape, key=key)) for k, v in trained])
    )
    problems = load_run_sets(recipe).validation + load_run_sets(recipe).train[:3]
    sequences, _ = encode_training_data(loaded.tokenizer, problems, recipe)
    sequences = [replace(s, weight=float(i + 1)) for i, s in enumerate(sequences)]
    loaded.model.train()
    loss, tokens = validation_loss(loaded.model, sequences, 3, 16)
    assert loaded.model.training  # the mode it was in comes back
    loaded.model.eval()
    expected = independent_mean_ce(
        loaded.model, loaded.tokenizer, problems, recipe.data.system_prompt
    )
    assert loss == pytest.approx(expected, rel=1e-5)
    assert tokens == sum(s.response_length for s in sequences)


def test_the_held_out_fraction_is_not_trained_on_and_is_fixed_by_the_seed(
    straight_run, tiny_llama_dir
):
    data = recipe_dict(tiny_llama_dir)
    sets = load_run_sets(recipe_from_dict(data))
    everything = load_run_sets(
        recipe_from_dict(
            recipe_dict(
                tiny_llama_dir,
                data={"validation_fraction": 0.0},
                eval={"val_every": 0},
                output={"keep_best": "none"},
            )
        )
    ).train
    assert len(sets.validation) == 4 and len(sets.train) == 12
    assert not {p.id for p in sets.train} & {p.id for p in sets.validation}
    assert sets.train == [p for p in everything if p in sets.train]  # data order kept
    assert sorted(p.id for p in sets.train + sets.validation) == sorted(p.id for p in everything)
    assert load_run_sets(recipe_from_dict(data)).validation == sets.validation
    other_seed = recipe_dict(tiny_llama_dir, training={"seed": 1})
    assert load_run_sets(recipe_from_dict(other_seed)).validation != sets.validation
    first_epoch = [r for r in records(straight_run, "step") if r["epoch"] == 0]
    assert sum(r["sequences"] for r in first_epoch) == 12  # the 4 held out are not trained


def test_keep_best_keeps_the_adapters_of_the_best_validation(straight_run):
    logged = records(straight_run, "validation")
    losses = [r["loss"] for r in logged]
    best = int(np.argmin(losses)) + 1
    assert 1 < best < 9 and losses[-1] > losses[best - 1]  # down, then up: the last is worse
    summary = json.loads((straight_run / "summary.json").read_text())
    assert summary["best"] == {"metric": "val_loss", "value": losses[best - 1], "step": best}
    assert [r["improved"] for r in logged] == [
        loss < min(losses[:i], default=np.inf) for i, loss in enumerate(losses)
    ]
    kept = weights(straight_run / "adapters-best")
    at_best = weights(checkpoints_dir(straight_run) / step_dir_name(best))
    assert kept.keys() == at_best.keys()
    assert all(np.array_equal(kept[k], at_best[k]) for k in kept)
    final = weights(straight_run / "adapters")
    assert not all(np.array_equal(kept[k], final[k]) for k in kept)
    config = "adapter_config.json"
    assert (straight_run / "adapters-best" / config).read_text() == (
        straight_run / "adapters" / config
    ).read_text()
    assert sorted(p.name for p in straight_run.iterdir() if "adapters-best" in p.name) == [
        "adapters-best"
    ]  # no temp or old dir left


def test_a_resumed_run_keeps_the_better_adapters_and_ends_byte_identical(
    straight_run, tiny_llama_dir, tmp_path
):
    """Stopped at step 7, after the best (step 5): the resumed run's first validations are worse
    and must not replace adapters-best; the end is the uninterrupted run's, byte for byte."""
    recipe = recipe_from_dict(recipe_dict(tiny_llama_dir))
    run_dir = tmp_path / "resumed"
    with pytest.raises(TrainingInterrupted):
        run_training(recipe, run_dir, QUIET, stop_after=7)
    run_training(recipe, run_dir, QUIET, resume=True)
    for name in ("adapters", "adapters-best"):
        file = Path(name) / "adapters.safetensors"
        assert (run_dir / file).read_bytes() == (straight_run / file).read_bytes(), name
    assert records(run_dir, "validation") == records(straight_run, "validation")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best"] == json.loads((straight_run / "summary.json").read_text())["best"]


def test_a_stop_during_a_validation_redoes_it_on_resume(
    straight_run, tiny_llama_dir, tmp_path, monkeypatch
):
    """A stop request while step 5's validation runs: the checkpoint is the state before it,
    and --resume validates step 5 first; the run ends as the uninterrupted one."""
    from rasft_mlx.console.progress import request_stop
    from rasft_mlx.training import validation as validation_module

    real = validation_module.validation_loss
    calls = []

    def stop_at_the_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            request_stop()  # as the first SIGINT does, while the validation runs
        return real(*args, **kwargs)

    recipe = recipe_from_dict(recipe_dict(tiny_llama_dir))
    run_dir = tmp_path / "stopped"
    monkeypatch.setattr(validation_module, "validation_loss", stop_at_the_fifth)
    with pytest.raises(TrainingInterrupted) as caught:
        run_training(recipe, run_dir, QUIET)
    assert caught.value.step == 5
    assert [r["step"] for r in records(run_dir, "validation")] == [1, 2, 3, 4]
    monkeypatch.setattr(validation_module, "validation_loss", real)
    run_training(recipe, run_dir, QUIET, resume=True)
    assert records(run_dir, "validation") == records(straight_run, "validation")
    for name in ("adapters", "adapters-best"):
        file = Path(name) / "adapters.safetensors"
        assert (run_dir / file).read_bytes() == (straight_run / file).read_bytes(), name


def test_validation_reaches_the_report_and_the_trackers(straight_run, monkeypatch):
    from rasft_mlx.reporting import charts

    drawn = {}
    real = charts.line_chart

    def recorded(chart_id, title, series, **kwargs):
        drawn[chart_id] = {label: (list(xs), list(ys)) for label, xs, ys in series}
        return real(chart_id, title, series, **kwargs)

    monkeypatch.setattr(charts, "line_chart", recorded)
    page = build_run_report(straight_run)
    logged = records(straight_run, "validation")
    assert drawn["loss"]["validation"] == ([r["step"] for r in logged], [r["loss"] for r in logged])
    assert "validation: mean token cross-entropy" in page
    best = json.loads((straight_run / "summary.json").read_text())["best"]["step"]
    assert f"Best at step {best}" in page and "adapters-best/" in page
    logged = {(r["step"], r["loss"]) for r in logged}
    tracked = {
        (step, value) for tag, step, value in RecordingTracker.seen if tag == "validation/loss"
    }
    assert tracked == logged


def test_validation_pass_at_1_is_the_greedy_pass_at_1_at_that_step(weak_base_dir, tmp_path):
    """A weak base (about 40 % of level-0 problems right): the logged pass@1 of the first 6
    validation problems is the evaluation's, with the adapters of that step."""
    model_dir = weak_base_dir
    data = recipe_dict(
        model_dir,
        data={
            "synthetic": {
                "n_train": 12,
                "n_test": 2,
                "n_validation": 8,
                "min_level": 0,
                "max_level": 0,
            },
            "validation_fraction": 0.0,
            "validation": "synthetic",
        },
        training={"epochs": 1, "learning_rate": 1e-3, "bucket_multiple": 16},
        eval={"val_every": 2, "val_pass_at_1_problems": 6, "max_new_tokens": 24},
        output={"keep_best": "val_pass_at_1"},
    )
    recipe = recipe_from_dict(data)
    run_dir = tmp_path / "run"
    run_training(recipe, run_dir, QUIET)
    logged = records(run_dir, "validation")
    assert [r["step"] for r in logged] == [2, 3]  # every 2 steps, and the end
    validation = load_run_sets(recipe).validation
    assert len(validation) == 8
    loaded = load_model(recipe.model)
    apply_adapters(loaded.model, recipe.lora)
    for record in logged:
        checkpoint = checkpoints_dir(run_dir) / step_dir_name(record["step"])
        loaded.model.load_weights(str(checkpoint / "adapters.safetensors"), strict=False)
        config = replace(recipe.eval, limit=6)
        _, summary = evaluate_problems(
            loaded.model, loaded.tokenizer, validation, config, recipe.data.system_prompt
        )
        assert record["pass_at_1_problems"] == 6
        assert record["pass_at_1"] == summary.pass_at_1
    assert 0 < logged[0]["pass_at_1"] < 1
    values = [r["pass_at_1"] for r in logged]
    best = json.loads((run_dir / "summary.json").read_text())["best"]
    assert best["metric"] == "val_pass_at_1" and best["value"] == max(values)
    assert best["step"] == logged[values.index(max(values))]["step"]  # the first of a tie


ERRORS = [
    (
        {
            "data": {
                "validation": "synthetic-validation",
                "test": "synthetic-validation",
                "validation_fraction": 0.0,
            }
        },
        "'data.validation' (synthetic-validation) names the test set ('data.test'",
    ),
    (
        {
            "data": {
                "validation": {"hub": "me/set", "split": "test[:50]"},
                "test": {"hub": "me/set", "split": "test[50:]"},
                "validation_fraction": 0.0,
            }
        },
        "names the test set",
    ),
    ({"eval": {"val_every": 0}}, "'data.validation_fraction' is set but 'eval.val_every' is 0"),
    (
        {"data": {"validation_fraction": 0.0}},
        "'eval.val_every' (1) needs a validation set: 'data.validation'",
    ),
    (
        {"data": {"validation": "synthetic-validation"}},
        "'data.validation' and 'data.validation_fraction' both choose",
    ),
    (
        {"output": {"keep_best": "val_pass_at_1"}},
        "'output.keep_best' val_pass_at_1 needs that validation on: set "
        "'eval.val_pass_at_1_problems' > 0",
    ),
    (
        {
            "eval": {"val_every": 0, "val_pass_at_1_problems": 2},
            "data": {"validation_fraction": 0.0},
            "output": {"keep_best": "none"},
        },
        "'eval.val_pass_at_1_problems' is measured at the validations: it needs 'eval.val_every'",
    ),
    ({"eval": {"val_evry": 2}}, "unknown key 'eval.val_evry'; did you mean 'eval.val_every'?"),
    ({"output": {"keep_best": "val_los"}}, "did you mean 'val_loss'?"),
    ({"data": {"validation_fraction": 0.95}}, "'data.validation_fraction' must be in [0.0, 0.9]"),
]


@pytest.mark.parametrize(("change", "message"), ERRORS)
def test_the_recipe_refuses_a_validation_it_cannot_run(change, message):
    data = recipe_dict(Path("model"))
    for section, values in change.items():
        data[section] = {**data[section], **values}
    with pytest.raises(RecipeError) as caught:
        recipe_from_dict(data)
    assert message in str(caught.value)


def test_keep_best_without_validation_is_refused():
    data = recipe_dict(Path("model"), eval={"val_every": 0}, data={"validation_fraction": 0.0})
    with pytest.raises(RecipeError, match="'output.keep_best' val_loss needs that validation on"):
        recipe_from_dict(data)
    data["output"]["keep_best"] = "none"
    assert recipe_from_dict(data).eval.val_every == 0


def test_a_named_benchmark_as_validation_is_refused_when_it_is_the_test_set():
    """gsm8k is openai/gsm8k (main) test: refused before anything is read (offline here)."""
    data = recipe_dict(
        Path("model"),
        data={
            "validation_fraction": 0.0,
            "test": "gsm8k",
            "validation": {"hub": "openai/gsm8k", "config": "main", "split": "test[:100]"},
        },
    )
    with pytest.raises(TrainingError, match="names the test set"):
        load_run_sets(recipe_from_dict(data))


def test_a_fraction_that_leaves_nothing_to_train_is_refused(tiny_llama_dir):
    data = recipe_dict(
        tiny_llama_dir, data={"synthetic": {"n_train": 2}, "validation_fraction": 0.9}
    )
    with pytest.raises(TrainingError, match="leaves none to train on"):
        load_run_sets(recipe_from_dict(data))
