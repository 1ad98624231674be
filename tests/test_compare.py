"""`rasft-mlx compare` on a tiny model: one run per (mode, seed), statistics, reuse, the budget."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from rasft_mlx.cli import app
from rasft_mlx.experiments.compare import (
    CompareError,
    parse_modes,
    plan_budget,
    run_recipe,
)
from rasft_mlx.experiments.compare_arms import quick_variant
from rasft_mlx.experiments.compare_results import (
    code_label,
    compare_to,
    mode_curve,
    run_code,
    run_curve,
    summarize_mode,
)
from rasft_mlx.recipe.config import load_recipe
from rasft_mlx.runtime.provenance import software_versions

runner = CliRunner()


def write_recipe(path, model_dir):
    recipe = {
        "model": {"path": str(model_dir)},
        "data": {
            "train": "synthetic",
            "test": "synthetic",
            "synthetic": {
                "n_train": 16,
                "n_test": 6,
                "min_level": 0,
                "max_level": 1,
                "n_ood": 4,
                "ood_min_level": 1,
                "ood_max_level": 2,
            },
            "max_seq_len": 256,
        },
        "lora": {"rank": 4, "scale": 2.0},
        "training": {
            "mode": "sft",
            "epochs": 2,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "warmup_steps": 1,
            "seed": 3,
            "eval_every_epoch": True,
        },
        "eval": {"max_new_tokens": 8, "extra_sets": ["synthetic-ood"], "drift_problems": 2},
        "output": {"dir": str(path.parent / "runs" / "{name}"), "name": "compare-test"},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def adapter_weights(run_dir):
    import mlx.core as mx

    return {
        k: np.array(v)
        for k, v in mx.load(str(run_dir / "adapters" / "adapters.safetensors")).items()
    }


def test_compare_two_modes_two_seeds_then_reuse(tiny_llama_dir, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_llama_dir)
    args = ["compare", str(recipe), "--modes", "sft,dft", "--seeds", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "compare-test"
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["seeds"] == [3, 4]
    assert sorted((r["mode"], r["seed"]) for r in results["runs"]) == [
        ("dft", 3),
        ("dft", 4),
        ("sft", 3),
        ("sft", 4),
    ]
    # Budget: 16 demos at batch 8 = 2 steps per epoch, 2 epochs -> 4 steps for every mode.
    assert results["budget"]["max_steps"] == 4 and results["budget"]["rule"] == "steps"
    for run in results["runs"]:
        run_dir = out / f"{run['mode']}-seed{run['seed']}"
        summary = json.loads((run_dir / "summary.json").read_text())
        saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())["training"]
        assert (saved["mode"], saved["seed"], saved["max_steps"]) == (run["mode"], run["seed"], 4)
        assert run["pass_at_1"] == summary["eval"]["pass_at_1"]
        assert run["trained_tokens"] == summary["trained_tokens"] and run["steps"] == 4
        assert [p["epoch"] for p in run["curve"]] == [1, 2]
        assert [p["step"] for p in run["curve"]] == [2, 4]
        epoch_two = json.loads((run_dir / "eval-epoch-2-summary.json").read_text())
        assert run["curve"][-1]["pass_at_1"] == epoch_two["pass_at_1"]
        assert run["code"] == [code_label(software_versions())]
    code_line = f"Code: {code_label(software_versions())} (4 runs)."
    assert code_line in (out / "results.md").read_text()
    for mode in ("sft", "dft"):
        scores = [
            json.loads((out / f"{mode}-seed{s}" / "summary.json").read_text())["eval"]["pass_at_1"]
            for s in (3, 4)
        ]
        summary = results["summary"][mode]
        assert summary["pass_at_1_mean"] == pytest.approx(statistics.mean(scores))
        assert summary["pass_at_1_std"] == pytest.approx(statistics.stdev(scores))
        assert (summary["pass_at_1_min"], summary["pass_at_1_max"]) == (min(scores), max(scores))
        assert results["curves"][mode][0]["epoch"] == 0  # the base model
    base = json.loads((out / "base" / "eval-summary.json").read_text())
    assert results["base"]["pass_at_1"] == base["pass_at_1"] and base["problems"] == 6
    markdown = (out / "results.md").read_text()
    assert "| sft | 2 |" in markdown and "| dft | 2 |" in markdown and "Budget" in markdown
    assert "Held-out pass@1 over training" in markdown
    assert "pass@1" in result.output and "dft" in result.output
    # The extra (out-of-distribution) set and the drift, per run and per mode.
    base_ood = json.loads((out / "base" / "eval-synthetic-ood-summary.json").read_text())
    assert results["base_extra"]["synthetic-ood"]["pass_at_1"] == base_ood["pass_at_1"]
    for mode in ("sft", "dft"):
        runs = [r for r in results["runs"] if r["mode"] == mode]
        ood = [r["extra"]["synthetic-ood"]["pass_at_1"] for r in runs]
        assert all(len(r["extra"]["synthetic-ood"]["outcomes"]) == 4 for r in runs)
        summary = results["summary"][mode]
        assert summary["extra"]["synthetic-ood"]["pass_at_1_mean"] == pytest.approx(
            statistics.mean(ood)
        )
        boxed = [r["answer_shapes"]["boxed"] for r in runs]
        assert summary["answer_shapes"]["boxed"] == pytest.approx(statistics.mean(boxed))
        kl = [r["drift"]["kl_ref_policy"] for r in runs]
        assert min(kl) > 0 and summary["drift"]["kl_ref_policy_mean"] == pytest.approx(
            statistics.mean(kl)
        )
    assert "synthetic-ood" in results["summary"]["dft"]["extra_paired_vs_sft"]
    assert results["base_answer_shapes"]["answers"] == results["test_problems"]
    # The starting model's drift answers are generated by the first run only.
    reused = {}
    for run in results["runs"]:
        run_dir = out / f"{run['mode']}-seed{run['seed']}"
        for line in (run_dir / "metrics.jsonl").open():
            if json.loads(line)["event"] == "drift":
                reused[run_dir.name] = json.loads(line)["answers_reused"]
    assert reused == {"sft-seed3": False, "dft-seed3": True, "sft-seed4": True, "dft-seed4": True}
    assert (out / "drift-answers.json").is_file()
    assert "## Other test sets" in markdown and "## Drift from the starting model" in markdown
    assert results["command"].startswith("rasft-mlx compare") and "Command:" in markdown
    page = (out / "compare.html").read_text()  # the page: curves with seed spread, paired diffs
    for chart in ('id="compare-loss"', 'id="compare-accuracy"', 'id="compare-paired"'):
        assert chart in page
    # results.md shows the same charts as SVG files beside it, every link resolving to one.
    import re
    import xml.etree.ElementTree as ElementTree

    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", markdown)
    assert links == ["figures/compare-loss.svg", "figures/compare-accuracy.svg"] + [
        "figures/compare-paired.svg"
    ]
    for link in links:
        assert ElementTree.parse(out / link).getroot().tag.endswith("svg")
    paired_svg = (out / "figures" / "compare-paired.svg").read_text()
    assert "dft − sft" in paired_svg and "(synthetic-ood)" in paired_svg
    assert "vs sft (paired, 95 %)" in page and all(
        (out / f"{m}-seed3" / "report.html").is_file() for m in ("sft", "dft")
    )

    # Seeds differ: different LoRA init and batch order give different adapters.
    first, second = adapter_weights(out / "sft-seed3"), adapter_weights(out / "sft-seed4")
    assert any(not np.allclose(first[k], second[k]) for k in first)

    # Running it again reuses every finished run: nothing is retrained.
    adapters = {p: p.stat().st_mtime_ns for p in out.glob("*-seed*/adapters/*.safetensors")}
    base_mtime = (out / "base" / "eval-summary.json").stat().st_mtime_ns
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in adapters} == adapters
    assert (out / "base" / "eval-summary.json").stat().st_mtime_ns == base_mtime
    again = json.loads((out / "results.json").read_text())
    assert {r["status"] for r in again["runs"]} == {"reused"}
    assert again["summary"] == results["summary"]

    # Another recipe in the same compare dir is refused, not silently mixed in.
    result = runner.invoke(app, [*args, "--set", "training.learning_rate=5e-4"])
    assert result.exit_code == 2 and "different recipe" in result.output


def test_compare_continues_an_interrupted_run(tiny_llama_dir, tmp_path):
    from rasft_mlx.commands.train import run_training
    from rasft_mlx.experiments.compare import run_compare

    recipe = load_recipe(write_recipe(tmp_path / "recipe.yaml", tiny_llama_dir))
    out = tmp_path / "cmp"
    # An sft run that stopped after step 1 (e.g. Ctrl-C), with the compare's own recipe.
    from rasft_mlx.commands.train import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        run_training(run_recipe(recipe, "sft", 3, 4), out / "sft-seed3", stop_after=1)
    results = run_compare(recipe, out, ("sft",), 1)
    (run,) = results["runs"]
    assert run["status"] == "trained" and run["steps"] == 4
    steps = [
        json.loads(line)["step"]
        for line in (out / "sft-seed3" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["event"] == "step"
    ]
    assert steps == [1, 2, 3, 4]  # resumed, not restarted or duplicated


def test_budget_rules_and_helpers(tiny_llama_dir, tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "recipe.yaml", tiny_llama_dir))
    assert plan_budget(recipe, 17, "steps").max_steps == 3 * 2  # ceil(17 / 8) x 2 epochs
    capped = load_recipe(tmp_path / "recipe.yaml", ["training.max_steps=5"])
    assert plan_budget(capped, 17, "steps").max_steps == 5
    assert plan_budget(recipe, 17, "epochs").max_steps is None
    assert "max_steps = 6" in plan_budget(recipe, 17, "steps").describe(recipe)
    with pytest.raises(CompareError):
        plan_budget(recipe, 17, "tokens")
    assert parse_modes(" sft, rasft ") == ("sft", "rasft")
    for bad in ("", "sft,sft", "sft,nope"):
        with pytest.raises(CompareError):
            parse_modes(bad)
    with pytest.raises(CompareError, match="quick"):
        quick_variant(tmp_path / "recipe.yaml")
    records = [
        {"event": "step", "step": 1, "trained_tokens": 10},
        {"event": "step", "step": 2, "trained_tokens": 12},
        {"event": "eval", "epoch": 0, "pass_at_1": 0.5},
        {"event": "refresh"},
        {"event": "step", "step": 3, "trained_tokens": 5},
        {"event": "eval", "epoch": 1, "pass_at_1": 0.75},
    ]
    assert run_curve(records) == [
        {"epoch": 1, "step": 2, "trained_tokens": 22, "pass_at_1": 0.5},
        {"epoch": 2, "step": 3, "trained_tokens": 27, "pass_at_1": 0.75},
    ]
    a = {"pass_at_1_mean": 0.5, "pass_at_1_std": 0.01, "seeds": [0, 1, 2]}
    b = {"pass_at_1_mean": 0.6, "pass_at_1_std": 0.01, "seeds": [0, 1, 2]}
    assert compare_to(a, b)["beyond_spread"] is True
    wide = {**b, "pass_at_1_std": 0.2}
    assert compare_to(a, wide)["beyond_spread"] is False


def test_paired_differences_on_an_extra_set_use_its_own_outcomes():
    from rasft_mlx.experiments.compare_results import paired_versus

    def run(mode, seed, main, ood):
        return {"mode": mode, "seed": seed, "outcomes": main, "extra": {"ood": {"outcomes": ood}}}

    runs = [
        run("sft", 0, [1, 1, 0, 0] * 10, [0] * 40),
        run("rasft", 0, [1, 1, 0, 0] * 10, [1] * 30 + [0] * 10),
    ]
    main = paired_versus(runs, "rasft", "sft")
    ood = paired_versus(runs, "rasft", "sft", extra="ood")
    assert main["difference"] == 0 and main["verdict"] == "no detectable difference"
    assert ood["difference"] == pytest.approx(0.75) and ood["verdict"] == "better"
    assert ood["low"] > 0.5 and ood["problems"] == 40
    assert paired_versus(runs, "rasft", "sft", extra="missing") is None


def test_mode_statistics_over_seeds():
    def run(seed, score, curve):
        points = [
            {"epoch": e, "step": 10 * e, "trained_tokens": 100 * e, "pass_at_1": s}
            for e, s in enumerate(curve, start=1)
        ]
        return {
            "seed": seed,
            "pass_at_1": score,
            "avg_at_k": None,
            "trained_tokens": 1000 + seed,
            "steps": 20,
            "total_seconds": 60.0 * (seed + 1),
            "curve": points,
        }

    runs = [run(0, 0.25, [0.1, 0.25]), run(1, 0.5, [0.2, 0.5]), run(2, 0.75, [0.3, 0.75])]
    summary = summarize_mode(runs)
    assert summary["pass_at_1_mean"] == pytest.approx(0.5)
    assert summary["pass_at_1_std"] == pytest.approx(0.25)  # sample std (n - 1)
    assert (summary["pass_at_1_min"], summary["pass_at_1_max"]) == (0.25, 0.75)
    assert summary["trained_tokens_mean"] == 1001 and summary["total_seconds_sum"] == 360.0
    curve = mode_curve(runs, base_pass=0.05)
    assert [p["epoch"] for p in curve] == [0, 1, 2]
    assert curve[0]["pass_at_1_mean"] == 0.05 and curve[0]["step_mean"] == 0
    assert curve[1]["pass_at_1_mean"] == pytest.approx(0.2)
    assert curve[1]["pass_at_1_std"] == pytest.approx(0.1)
    assert curve[2]["step_mean"] == 20 and curve[2]["runs"] == 3
    single = summarize_mode(runs[:1])
    assert single["pass_at_1_std"] == 0.0


def test_report_names_the_clip_fractions_or_a_fixed_ratio():
    from rasft_mlx.experiments.compare_report import results_markdown

    run = {
        "mode": "rasft",
        "seed": 0,
        "pass_at_1": 0.5,
        "final_loss": 0.1,
        "steps": 4,
        "trained_tokens": 100,
        "total_seconds": 60.0,
        "run_dir": "r",
        "ratio_at_min_mean": 0.25,
        "ratio_at_max_mean": 0.0,
        "refreshes": [
            {
                "refresh": 1,
                "problems_selected": 4,
                "rollouts_generated": 8,
                "rollouts_trained": 2,
                "solvability_histogram": [2, 1, 1],
                "expert_weight": {"mean": 0.5},
                "rollout_weight": {"mean": 0.01},
                "dropped": {},
            }
        ],
    }
    summary = summarize_mode([{**run, "avg_at_k": None, "curve": []}])
    results = {
        "recipe": "r.yaml",
        "model": "m",
        "data": {"train": "synthetic", "test": "synthetic"},
        "train_problems": 4,
        "test_problems": 2,
        "eval": {"max_new_tokens": 8},
        "seeds": [0],
        "complete": True,
        "budget": {"rule": "steps", "description": "d"},
        "modes": ["rasft"],
        "base": None,
        "summary": {"rasft": summary},
        "curves": {"rasft": []},
        "runs": [run],
        "settings": {"rasft.ratio clip": [0.4, 1.2]},
    }
    clipped = results_markdown(results)
    assert "seed 0: 0.250 at ratio_min, 0.000 at ratio_max" in clipped
    # Each refresh row names its mode (rasft and rft runs share the table).
    assert "| rasft | 0 | 1 | 4 | 8 | 2 | [2, 1, 1] | 0.500 | 0.010 | {} |" in clipped
    fixed = results_markdown({**results, "settings": {"rasft.ratio clip": [1.0, 1.0]}})
    assert "fixed at 1.0" in fixed and "at ratio_min" not in fixed
    # A refresh read from another run's draw says so: its wall time lacks that decode.
    run["refreshes"][0]["rollouts_reused"] = {"from": "rft-seed0", "seconds": 61.6}
    shared = results_markdown(results)
    assert "| 8 (read from rft-seed0: 62 s not spent) | 2 |" in shared


def test_evaluation_identity_names_each_part_that_differs(tiny_llama_dir, tmp_path):
    from rasft_mlx.data.problem import Problem, problems_digest
    from rasft_mlx.experiments.compare_base import evaluation_identity, identity_differences

    recipe = load_recipe(write_recipe(tmp_path / "recipe.yaml", tiny_llama_dir))
    problems = [
        Problem("a", "What is 2 + 2?", "sol", "4"),
        Problem("b", "What is 3 + 3?", "sol", "6"),
    ]
    ood = [Problem("c", "What is 9 + 9?", "sol", "18")]
    ours = evaluation_identity(recipe, problems, [("synthetic-ood", ood)])
    assert (
        identity_differences(ours, evaluation_identity(recipe, problems, [("synthetic-ood", ood)]))
        == []
    )
    # Any change to a problem's text, answer, order or grader changes the digest.
    changed = [Problem("a", "What is 2 + 2?", "sol", "5"), problems[1]]
    assert problems_digest(changed) != problems_digest(problems)
    assert problems_digest(problems[::-1]) != problems_digest(problems)
    graded = [Problem("a", "What is 2 + 2?", "sol", "4", grader="math-verify"), problems[1]]
    assert problems_digest(graded) != problems_digest(problems)
    theirs = evaluation_identity(recipe, changed, [("synthetic-ood", ood)])
    assert identity_differences(ours, theirs) == ["test set"]
    # Settings that decide the base eval count; the ones that do not (drift) are left out.
    longer = load_recipe(tmp_path / "recipe.yaml", ["eval.max_new_tokens=16"])
    drift = load_recipe(tmp_path / "recipe.yaml", ["eval.drift_problems=5"])
    other_model = load_recipe(tmp_path / "recipe.yaml", ["model.dtype=float16"])
    same = [("synthetic-ood", ood)]
    assert identity_differences(ours, evaluation_identity(longer, problems, same)) == ["eval"]
    assert identity_differences(ours, evaluation_identity(drift, problems, same)) == []
    assert identity_differences(ours, evaluation_identity(other_model, problems, same)) == ["model"]
    assert identity_differences(ours, evaluation_identity(recipe, problems, [])) == [
        "extra set synthetic-ood"
    ]


def test_base_from_reuses_an_identical_base_eval_and_refuses_another(
    tiny_llama_dir, tmp_path, monkeypatch
):
    from rich.console import Console

    import rasft_mlx.evaluation.evaluate as evaluate
    from rasft_mlx.experiments.compare import check_compare_dir
    from rasft_mlx.experiments.compare_base import BaseReuseError, base_model_results

    console = Console(quiet=True)
    recipe = load_recipe(write_recipe(tmp_path / "recipe.yaml", tiny_llama_dir))
    first = tmp_path / "first"
    check_compare_dir(first, recipe)
    evaluated = base_model_results(recipe, first, console)
    assert evaluated["eval"]["problems"] == 6 and evaluated["eval_extra"]["synthetic-ood"]

    def no_eval(*args, **kwargs):
        raise AssertionError("the base model was evaluated again")

    monkeypatch.setattr(evaluate, "evaluate_and_write", no_eval)
    # Training data differs (more demos): the eval is reused, the demo count is this recipe's.
    more_train = load_recipe(tmp_path / "recipe.yaml", ["data.synthetic.n_train=24"])
    second = tmp_path / "second"
    reused = base_model_results(more_train, second, console, base_from=first)
    assert reused["eval"] == evaluated["eval"]
    assert reused["eval_extra"] == evaluated["eval_extra"]
    assert reused["expert_sequences"] == 24 and evaluated["expert_sequences"] == 16
    assert reused["evaluated_in"] == str(first)
    copied = sorted(p.name for p in (second / "base").iterdir())
    assert copied == sorted(p.name for p in (first / "base").iterdir())
    assert (second / "base" / "eval.jsonl").read_text() == (
        first / "base" / "eval.jsonl"
    ).read_text()

    more_test = load_recipe(tmp_path / "recipe.yaml", ["data.synthetic.n_test=7"])
    with pytest.raises(BaseReuseError, match="these differ: test set"):
        base_model_results(more_test, tmp_path / "third", console, base_from=first)
    longer = load_recipe(tmp_path / "recipe.yaml", ["eval.max_new_tokens=9"])
    with pytest.raises(BaseReuseError, match="these differ: eval\\b"):
        base_model_results(longer, tmp_path / "fourth", console, base_from=first)
    with pytest.raises(BaseReuseError, match="does not exist"):
        base_model_results(recipe, tmp_path / "fifth", console, base_from=tmp_path / "nowhere")
    for refused in ("third", "fourth", "fifth"):
        assert not (tmp_path / refused / "base" / "base.json").exists()


def test_a_run_resumed_under_other_code_names_both_and_old_runs_say_unrecorded():
    from rasft_mlx.experiments.compare_report import _code_lines

    software = {"rasft_mlx": "0.1.0", "git_commit": "a" * 40, "git_dirty": False}
    later = {**software, "git_commit": "b" * 40, "git_dirty": True}
    records = [
        {"event": "process", "software": software},
        {"event": "step", "step": 1},
        {"event": "process", "software": later},
    ]
    assert run_code(records, {"software": later}) == ["aaaaaaa", "bbbbbbb+dirty"]
    assert run_code([], {}) == []
    assert run_code([], {"software": {"rasft_mlx": "0.1.0", "git_commit": None}}) == [
        "rasft-mlx 0.1.0"
    ]
    runs = [{"code": ["aaaaaaa", "bbbbbbb+dirty"]}, {"code": ["aaaaaaa"]}, {"code": []}]
    assert _code_lines({"runs": runs}) == [
        "Code: aaaaaaa then bbbbbbb+dirty (1 run); aaaaaaa (1 run); not recorded (1: runs from "
        "before rasft-mlx recorded it).",
        "",
    ]
    assert _code_lines({"runs": [{"code": []}]}) == []


def test_refresh_signal_by_hand():
    from rasft_mlx.experiments.compare_report import _signal_lines
    from rasft_mlx.experiments.compare_results import refresh_signal

    def row(refresh, routes, trained, weight=None, at_min=None, mixed=None, floor=None):
        return {
            "refresh": refresh,
            "weight_routes": routes,
            "rollouts_trained": trained,
            "rollout_weight": None if weight is None else {"mean": weight},
            "ratio_clip_since_last_refresh": None if at_min is None else {"at_min": at_min},
            "mechanism": {  # runs of earlier versions have none: the gauges read as missing
                "mixed_group_share": mixed,
                "trained_share": trained / 8,
                "rollout_weight_median": weight,
                "rollout_weight_at_floor": floor,
            },
        }

    runs = [
        {"mode": "sft", "seed": 0},
        {
            "mode": "rasft",
            "seed": 0,
            "refreshes": [
                row(1, {"no_rollouts": 48, "fallback_empty": 40, "fallback_unsolved": 8}, 0),
                row(2, {"weighted": 5, "fallback_unsolved": 42}, 5, 0.005, 0.2, 0.75, 1.0),
            ],
        },
        {
            "mode": "rasft",
            "seed": 1,
            "refreshes": [
                row(1, {"no_rollouts": 2, "weighted": 2}, 4, 0.01),
                row(2, {"weighted": 1, "no_rollouts": 3}, 1, 0.02, 0.5, mixed=0.25, floor=0.0),
            ],
        },
        {  # rft trains with rho = 1: its clip counts are not a ratio floor
            "mode": "rft",
            "seed": 0,
            "refreshes": [row(1, {"no_rollouts": 4}, 0), row(2, {"rft": 4}, 3, 1.0, 0.0)],
        },
    ]
    signal = refresh_signal(runs)
    assert list(signal) == ["rasft", "rft"]
    assert signal["rft"][1]["ratio_at_min_before"] is None
    assert signal["rft"][1]["rollout_weight"] == 1.0
    first, second = signal["rasft"]
    assert first == {
        "refresh": 1,
        "seeds": 2,
        "weighted_share": pytest.approx((0 / 96 + 2 / 4) / 2),
        "rollouts_trained": 2.0,
        "rollout_weight": pytest.approx(0.01),  # seed 0 trained none: no weight to average
        "ratio_at_min_before": None,  # the first refresh comes before any step
        "mixed_group_share": None,
        "trained_share": pytest.approx((0 / 8 + 4 / 8) / 2),
        "rollout_weight_median": pytest.approx(0.01),
        "rollout_weight_at_floor": None,
    }
    assert second["weighted_share"] == pytest.approx((5 / 47 + 1 / 4) / 2)
    assert second["mixed_group_share"] == pytest.approx(0.5)
    assert second["rollout_weight_at_floor"] == pytest.approx(0.5)
    assert second["rollout_weight"] == pytest.approx(0.0125)
    assert second["ratio_at_min_before"] == pytest.approx(0.35)
    assert second["rollouts_trained"] == 3.0
    # results.md shows it as shares
    text = "\n".join(_signal_lines({"refresh_signal": signal}))
    assert "| rasft | 1 | 2 | - | 25.0% | 0.01 | - | 25.0% | - |" in text
    assert "| rasft | 2 | 2 | 50.0% | 37.5% | 0.0125 | 50.0% | 17.8% | 35.0% |" in text
