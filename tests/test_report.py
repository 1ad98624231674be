"""The run report and the compare page (rasft_mlx/reporting/): the numbers by hand, the page's
sections, a real headless browser, and training writing it; trackers in test_trackers.py."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml
from headless_browser import browser_unavailable_reason, open_page
from rich.console import Console
from typer.testing import CliRunner

from rasft_mlx.cli import app
from rasft_mlx.commands.train import run_training
from rasft_mlx.recipe.config import recipe_from_dict
from rasft_mlx.reporting import series
from rasft_mlx.reporting.compare_page import write_compare_report
from rasft_mlx.reporting.run_reader import ReportError
from rasft_mlx.reporting.run_report import build_run_report, write_run_report

RUN_CHARTS = (
    "loss", "learning-rate", "grad-norm", "tokens-per-second", "peak-memory", "accuracy",
    "solvability", "expert-weights", "rollout-weights", "routes", "dropped", "ratio-bounds",
    "generation-speed", "wall-time",
)  # fmt: skip
TINY_RUN_CHARTS = tuple(c for c in RUN_CHARTS if c != "rollout-weights")
RUN_SECTIONS = ("training", "accuracy", "refreshes", "wall-time", "examples", "recipe")


def step(n: int, loss: float, **fields) -> dict:
    record = {"event": "step", "step": n, "epoch": 0, "loss": loss, "learning_rate": 1e-3}
    record.update(grad_norm=0.5, tokens_per_second=100.0, peak_memory_gb=0.5)
    return record | fields


def refresh(n: int, **fields) -> dict:
    record = {
        "event": "refresh",
        "refresh": n,
        "problems_selected": 4,
        "rollouts_generated": 8,
        "rollouts_trained": 3,
        "generation_tokens_per_second": 50.0 + n,
        "solvability_histogram": [2, 1, 1],
        "routes": {"selected": 4},
        "weight_routes": {"weighted": 2, "fallback_unsolved": 2},
        "expert_weight": {"mean": 0.6, "min": 0.2, "max": 1.0},
        "rollout_weight": {"mean": 0.1, "min": 0.05, "max": 0.15},
        "dropped": {"wrong": 4, "duplicate": 1},
        "ratio_clip_since_last_refresh": None,
        "timings": {"rollout": 3.0, "verify": 0.1, "reference": 1.0, "train": 2.0},
    }
    return record | fields


def evaluation(epoch: int, pass_at_1: float) -> dict:
    return {"event": "eval", "epoch": epoch, "problems": 4, "pass_at_1": pass_at_1}


LEDGER = [
    {"problem_id": "p1", "gold": "3", "solvability": 0.5, "route": "weighted", "expert_weight": 0.2,
     "samples": [{"text": "1+2=3 \\boxed{3}", "extracted": "3", "verdict": "correct", "weight": 0.0},
                 {"text": "<b>2</b> \\boxed{2}", "extracted": "2", "verdict": "wrong", "weight": 0.0}]},
    {"problem_id": "p2", "gold": "5", "solvability": 1.0, "route": "weighted", "expert_weight": 0.6,
     "samples": [{"text": "2+3=5 \\boxed{5}", "extracted": "5", "verdict": "correct", "weight": 0.15},
                 {"text": "\\boxed{5}", "extracted": "5", "verdict": "correct", "weight": 0.05}]},
]  # fmt: skip


def write_hand_run(run_dir: Path) -> Path:
    """A RASFT run dir written by hand: two refreshes, four steps, evals before and after."""
    records = [
        evaluation(-1, 0.25),
        refresh(1),
        step(1, 2.0, ratio_at_min=0.5, ratio_at_max=0.0, sequences=4),
        step(2, 1.0, ratio_at_min=0.0, ratio_at_max=0.25, sequences=12),
        evaluation(0, 0.5),
        refresh(2, ratio_clip_since_last_refresh={"at_min": 0.125, "at_max": 0.1875}),
        step(3, 0.5, ratio_at_min=1.0, ratio_at_max=0.0),
        step(4, 0.25, ratio_at_min=0.0, ratio_at_max=0.0),
        evaluation(1, 0.75),
    ]
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    split = {"rollout": 6.0, "verify": 0.2, "reference": 2.0, "train": 4.0, "eval": 3.0}
    summary = {"mode": "rasft", "steps": 4, "wall_time_split_seconds": split | {"other": 0.8}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    recipe = {"model": {"path": "builtin:tiny"}, "training": {"mode": "rasft"}}
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (run_dir / "rollouts").mkdir()
    for n in (1, 2):
        ledger = "".join(json.dumps(row) + "\n" for row in LEDGER)
        (run_dir / "rollouts" / f"refresh-{n:03d}.jsonl").write_text(ledger)
    return run_dir


# -- the numbers, by hand ------------------------------------------------------------------


def test_smoothed_loss_is_a_bias_corrected_moving_average():
    # weight 0.5: s = 0.5, 1.25, 2.125 before correction; divided by 1 - 0.5^t.
    assert series.smoothed([1.0, 2.0, 3.0], 0.5) == pytest.approx([1.0, 1.25 / 0.75, 2.125 / 0.875])
    assert series.smoothed([4.0, 4.0, 4.0]) == pytest.approx([4.0, 4.0, 4.0])  # no pull to 0
    assert series.smoothed([3.0, 1.0], 0.0) == [3.0, 1.0]
    with pytest.raises(ValueError):
        series.smoothed([1.0], 1.0)


def test_accuracy_starts_at_the_starting_model_and_a_repeated_eval_counts_once():
    records = [evaluation(-1, 0.1), evaluation(0, 0.3), evaluation(1, 0.4), evaluation(1, 0.5)]
    assert series.accuracy_by_epoch(records) == [(0, 0.1), (1, 0.3), (2, 0.5)]


def test_share_on_each_ratio_bound_weighs_steps_by_their_sequences():
    records = [
        refresh(1),
        step(1, 2.0, ratio_at_min=0.5, ratio_at_max=0.0, sequences=4),
        step(2, 1.0, ratio_at_min=0.0, ratio_at_max=0.25, sequences=12),
        refresh(2),
        step(3, 0.5, ratio_at_min=1.0, ratio_at_max=0.0),  # no count (older runs): weighs 1
        step(4, 0.5, ratio_at_min=0.0, ratio_at_max=0.0),
    ]
    shares = series.ratio_bound_shares(records)
    assert [(s.after_refresh, s.steps, s.sequences) for s in shares] == [(1, 2, 16), (2, 2, 2)]
    # (0.5 x 4 + 0 x 12) / 16 on the lower bound, (0 x 4 + 0.25 x 12) / 16 on the upper.
    assert (shares[0].at_min, shares[0].at_max) == pytest.approx((0.125, 0.1875))
    assert (shares[1].at_min, shares[1].at_max) == pytest.approx((0.5, 0.0))
    assert series.ratio_bound_shares([step(1, 1.0)]) == []  # SFT: no ratio, no chart


def test_wall_time_split_keeps_a_fixed_order_and_falls_back_to_the_latest_refresh():
    summary = {"wall_time_split_seconds": {"other": 1.0, "train": 5.0, "rollout": 2.0, "x": 0.5}}
    assert list(series.wall_time_split(summary, [])) == ["rollout", "train", "other", "x"]
    running = series.wall_time_split(None, [refresh(1), refresh(2, timings={"train": 9.0})])
    assert running == {"train": 9.0}


def test_examples_show_trained_correct_rollouts_first_then_wrong_ones():
    picked = series.example_rollouts(LEDGER, per_verdict=2)
    assert [(s["problem_id"], s["weight"]) for s in picked] == [
        ("p2", 0.15),
        ("p2", 0.05),
        ("p1", 0.0),  # the wrong one
    ]
    assert picked[2]["verdict"] == "wrong" and picked[0]["gold"] == "5"
    expert, rollout = series.ledger_weights(LEDGER)
    assert expert == [0.2, 0.6] and rollout == [0.15, 0.05]


def test_seed_spread_is_mean_min_max_per_step():
    steps, mean, low, high = series.seed_spread(
        [([1, 2], [1.0, 3.0]), ([1, 2, 3], [3.0, 5.0, 7.0])]
    )
    assert steps == [1, 2, 3]
    assert mean == [2.0, 4.0, 7.0] and low == [1.0, 3.0, 7.0] and high == [3.0, 5.0, 7.0]


# -- the page ------------------------------------------------------------------------------


def svg_documents(page: str) -> list[str]:
    encoded = re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)
    return [base64.b64decode(e).decode() for e in encoded]


def test_report_has_every_section_and_chart_and_loads_nothing_from_outside(tmp_path):
    run_dir = write_hand_run(tmp_path / "run")
    path = write_run_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text()
    for section in RUN_SECTIONS:
        assert f'<section id="{section}">' in page
    for chart in RUN_CHARTS:
        assert f'<figure class="chart" id="{chart}">' in page
    svgs = svg_documents(page)
    assert len(svgs) == len(RUN_CHARTS) and all("<svg" in svg for svg in svgs)
    # Self-contained: no scripts, no stylesheets, every src/href a data URI or a page anchor.
    assert "<script" not in page and "<link" not in page and "@import" not in page
    for document in [page, *svgs]:
        targets = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', document)
        assert all(t.startswith(("data:", "#")) for t in targets), targets
        assert "url(http" not in document
    # The rollouts table: the gold answer, verdicts, weights, and the text escaped.
    assert "&lt;b&gt;2&lt;/b&gt;" in page and "<b>2</b>" not in page
    assert 'class="wrong">wrong<' in page and "0.15" in page
    assert "builtin:tiny" in page and "mlx-lm" in page  # recipe, versions


def test_the_extra_test_sets_and_drift_show_start_final_and_change(tmp_path):
    from rasft_mlx.reporting.run_report import beyond_section

    assert beyond_section([evaluation(0, 0.5)]) is None
    records = [
        {"event": "eval_extra", "set": "synthetic-ood", "stage": "start", "problems": 500,
         "pass_at_1": 0.125},
        {"event": "eval_extra", "set": "synthetic-ood", "stage": "final", "problems": 500,
         "pass_at_1": 0.3},
        {"event": "drift", "kl_ref_policy": 0.04321, "nll_increase": 0.0125, "problems": 64,
         "tokens": 3000},
    ]  # fmt: skip
    body = beyond_section(records).body
    assert "<td>synthetic-ood</td><td>500</td><td>0.125</td><td>0.300</td><td>+0.175</td>" in body
    assert "KL(pi_ref || pi_theta) 0.0432 per token, NLL rise 0.0125" in body.replace("&#x27;", "'")


def test_report_of_an_sft_run_shows_evaluation_completions_and_no_refreshes(tmp_path):
    run_dir = tmp_path / "sft"
    run_dir.mkdir()
    records = [step(1, 1.0), step(2, 0.5), evaluation(0, 0.5)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    row = {"id": "t1", "gold": "4", "completion": "\\boxed{4}", "extracted": "4", "correct": True,
           "verdict": "correct", "sample": -1}  # fmt: skip
    (run_dir / "eval-epoch-1.jsonl").write_text(json.dumps(row) + "\n")
    page = build_run_report(run_dir)
    assert 'id="refreshes"' not in page and 'id="solvability"' not in page
    assert 'id="examples"' in page and "greedy completions" in page
    assert "in progress" in page  # no summary.json yet


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "missing", "no such run directory"),
        (lambda d: d, "metrics.jsonl: no such file"),
        (lambda d: (d / "metrics.jsonl").write_text("\n{torn") and d, "no metrics records"),
    ],
)
def test_a_bad_run_dir_is_a_clear_error(tmp_path, make, expected):
    run_dir = make(tmp_path)
    with pytest.raises(ReportError, match=expected):
        write_run_report(run_dir)
    assert not (tmp_path / "report.html").exists()
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 2 and expected in result.output


def test_cli_report_writes_where_asked(tmp_path):
    run_dir = write_hand_run(tmp_path / "run")
    result = CliRunner().invoke(app, ["report", str(run_dir), "--output", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert 'id="solvability"' in (tmp_path / "r.html").read_text()


# -- training writes it; a browser opens it ------------------------------------------------


def tiny_recipe(model_dir: Path, mode: str, epochs: int):
    return recipe_from_dict(
        {
            "model": {"path": str(model_dir)},
            "data": {"synthetic": {"n_train": 16, "n_test": 4, "min_level": 0, "max_level": 1}},
            "lora": {"rank": 4},
            "training": {"mode": mode, "epochs": epochs, "batch_size": 8, "warmup_steps": 0},
            "rollout": {"k": 2, "max_new_tokens": 8},
            "eval": {"max_new_tokens": 8},
        }
    )


@pytest.fixture(scope="module")
def tiny_rasft_run(tiny_llama_dir, tmp_path_factory):
    """A two-epoch RASFT run; the report writes are counted."""
    import rasft_mlx.commands.train as train_command

    run_dir = tmp_path_factory.mktemp("report") / "run"
    writes = []
    original = train_command.write_report_quietly
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            train_command,
            "write_report_quietly",
            lambda d, c: writes.append(d) or original(d, c),
        )
        run_training(tiny_recipe(tiny_llama_dir, "rasft", 2), run_dir, Console(quiet=True))
    return run_dir, writes


def test_training_writes_the_report_after_each_epoch_and_at_the_end(tiny_rasft_run):
    run_dir, writes = tiny_rasft_run
    assert writes == [run_dir] * 3  # epoch 1, epoch 2, the end
    page = (run_dir / "report.html").read_text()
    assert "finished" in page and all(f'id="{c}"' in page for c in TINY_RUN_CHARTS)
    # The random tiny model solves nothing: no rollout is trained, which the page says.
    assert 'id="rollout-weights"' not in page and "No rollout has been trained" in page


def test_a_failing_report_never_stops_training(tiny_llama_dir, tmp_path, monkeypatch):
    import rasft_mlx.reporting.run_report as run_report

    def broken(*_):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(run_report, "write_run_report", broken)
    console = Console(record=True, width=200)
    result = run_training(tiny_recipe(tiny_llama_dir, "sft", 1), tmp_path / "run", console)
    assert result.steps == 2 and (tmp_path / "run" / "summary.json").is_file()
    printed = console.export_text()
    assert printed.count("could not write") == 2 and "disk on fire" in printed  # epoch, end


def check_in_browser(page: Path, screenshot: Path):
    reason = browser_unavailable_reason()
    if reason:
        pytest.skip(reason)
    check = open_page(page, screenshot)
    assert check.console_errors == []
    expected = page.read_text().count('<figure class="chart"')
    assert len(check.charts) == expected > 0
    for chart in check.charts:
        assert chart["complete"] and chart["natural_width"] > 0, chart  # the SVG decoded
        assert chart["width"] > 0 and chart["height"] > 0, chart
    assert not [u for u in check.loaded_urls if u.startswith(("http:", "https:"))]
    assert screenshot.stat().st_size > 10_000
    return check


def test_the_report_renders_in_a_headless_browser(tiny_rasft_run):
    run_dir, _ = tiny_rasft_run
    check = check_in_browser(run_dir / "report.html", run_dir / "report.png")
    assert {c["id"] for c in check.charts} == set(TINY_RUN_CHARTS)
    assert check.sections == list(RUN_SECTIONS)


def test_the_compare_page_renders_in_a_headless_browser(tiny_rasft_run, tmp_path):
    run_dir, _ = tiny_rasft_run
    runs = [
        {"mode": mode, "seed": seed, "pass_at_1": 0.25 * seed, "steps": 4, "run_dir": str(run_dir)}
        for mode in ("sft", "rasft") for seed in (1, 2)
    ]  # fmt: skip
    curve = [{"epoch": 0, "pass_at_1_mean": 0.2, "pass_at_1_std": 0.0},
             {"epoch": 1, "pass_at_1_mean": 0.4, "pass_at_1_std": 0.1}]  # fmt: skip
    summary = {"runs": 2, "pass_at_1_mean": 0.4, "pass_at_1_std": 0.1, "trained_tokens_mean": 9,
               "steps_mean": 4}  # fmt: skip
    paired = {"difference": 0.1, "low": -0.05, "high": 0.25, "verdict": "not resolved"}
    results = {
        "modes": ["sft", "rasft"], "seeds": [1, 2], "model": "tiny", "recipe": "r.yaml",
        "budget": {"rule": "steps", "description": "4 steps"}, "complete": True,
        "base": {"pass_at_1": 0.2}, "runs": runs, "curves": {"sft": curve, "rasft": curve},
        "summary": {"sft": summary, "rasft": summary | {"paired_vs_sft": paired}},
    }  # fmt: skip
    page = write_compare_report(tmp_path, results)
    text = page.read_text()
    assert all(f'id="{c}"' in text for c in ("compare-loss", "compare-accuracy", "compare-paired"))
    assert "+0.100 [-0.050, +0.250] not resolved" in text
    check_in_browser(page, tmp_path / "compare.png")
