"""Paired bootstrap differences on constructed outcomes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from rasft_mlx.experiments.statistics import minimum_detectable_difference, paired_difference


def test_identical_modes_show_no_difference():
    rng = np.random.default_rng(0)
    outcomes = (rng.random((3, 500)) < 0.4).astype(float)
    result = paired_difference(outcomes, outcomes.copy())
    assert result.difference == 0.0
    assert result.low <= 0.0 <= result.high
    assert result.verdict == "no detectable difference"


def test_a_clear_gain_is_better_and_its_interval_covers_the_truth():
    rng = np.random.default_rng(1)
    reference = (rng.random((3, 600)) < 0.30).astype(float)
    candidate = np.maximum(reference, (rng.random((3, 600)) < 0.15).astype(float))  # + ~10 points
    result = paired_difference(candidate, reference)
    assert result.verdict == "better"
    assert result.low > 0 and result.low < result.difference < result.high
    assert result.difference == pytest.approx(candidate.mean() - reference.mean())
    worse = paired_difference(reference, candidate)
    assert worse.verdict == "worse" and worse.high < 0


def test_pairing_narrows_the_interval_against_independent_sampling():
    """Both modes solve the same hard/easy problems: the paired interval is far narrower than
    the one from two independent samples of the same size, computed by hand."""
    rng = np.random.default_rng(2)
    easy = rng.random(400) < 0.5
    reference = np.tile(easy, (3, 1)).astype(float)
    candidate = reference.copy()
    flip = rng.choice(400, 12, replace=False)
    candidate[:, flip] = 1.0
    result = paired_difference(candidate, reference)
    p = reference.mean()
    independent_half_width = 1.96 * np.sqrt(2 * p * (1 - p) / 400)
    assert (result.high - result.low) / 2 < independent_half_width / 3


def test_minimum_detectable_difference_by_hand():
    diffs = np.array([1.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0])
    sd = np.std(diffs, ddof=1)
    assert minimum_detectable_difference(diffs) == pytest.approx(
        (1.959964 + 0.841621) * sd / np.sqrt(8)
    )
    # 48 problems with a 0.3 discordance rate detect only ~22 points; 500 problems ~7.
    small = np.r_[np.ones(7), -np.ones(7), np.zeros(34)]
    assert minimum_detectable_difference(small) > 0.2


def test_different_test_sets_are_refused():
    with pytest.raises(ValueError, match="different test sets"):
        paired_difference(np.ones((2, 10)), np.ones((2, 11)))


def test_compare_reads_the_last_greedy_outcomes_and_pairs_the_modes(tmp_path):
    import json

    from rasft_mlx.evaluation.outcomes import final_outcomes
    from rasft_mlx.experiments.compare_results import paired_versus

    def write(epoch, correct):
        rows = [{"id": f"p{i}", "correct": c, "sample": -1} for i, c in enumerate(correct)]
        rows += [{"id": "p0", "correct": True, "sample": 0}]  # a sampled completion: ignored
        (tmp_path / f"eval-epoch-{epoch}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )

    write(1, [False, False, False])
    write(2, [True, False, True])
    assert final_outcomes(tmp_path) == [1, 0, 1]
    runs = [
        {"mode": "sft", "outcomes": [0, 0, 1, 0] * 50},
        {"mode": "rasft", "outcomes": [1, 0, 1, 0] * 50},
    ]
    paired = paired_versus(runs, "rasft", "sft")
    assert paired["difference"] == pytest.approx(0.25) and paired["verdict"] == "better"
    assert paired_versus([{"mode": "sft", "outcomes": [1]}], "rasft", "sft") is None


def test_every_pair_beyond_the_reference_is_compared_and_shown():
    from rasft_mlx.experiments.compare_report import _pairwise_lines
    from rasft_mlx.experiments.compare_results import pairwise_differences
    from rasft_mlx.reporting.compare_page import paired_rows

    # Per block of 4 problems: sft solves 1, dft 1 (another), rft 2, rasft 3.
    runs = [
        {"mode": "sft", "outcomes": [0, 0, 1, 0] * 50},
        {"mode": "dft", "outcomes": [0, 0, 0, 1] * 50},
        {"mode": "rft", "outcomes": [1, 0, 1, 0] * 50},
        {"mode": "rasft", "outcomes": [1, 1, 1, 0] * 50},
    ]
    rows = pairwise_differences(runs, ["sft", "dft", "rft", "rasft"])
    got = {(r["arm"], r["versus"]): (r["difference"], r["verdict"]) for r in rows}
    assert got == {  # the pairs with sft are in each mode's paired_vs_sft
        ("rft", "dft"): (pytest.approx(0.25), "better"),
        ("rasft", "dft"): (pytest.approx(0.5), "better"),
        ("rasft", "rft"): (pytest.approx(0.25), "better"),
    }
    assert pairwise_differences(runs[:2], ["sft", "dft"]) == []
    results = {"modes": ["sft", "dft", "rft", "rasft"], "summary": {}, "pairwise": rows}
    text = "\n".join(_pairwise_lines(results))
    assert "| rasft | rft | +0.250 [" in text and "| better |" in text and "| sft |" not in text
    assert [row[0] for row in paired_rows(results)] == ["rft − dft", "rasft − dft", "rasft − rft"]
    assert _pairwise_lines({**results, "pairwise": []}) == []


def test_answer_shapes_count_boxed_truncated_and_unanswered_greedy_answers(tmp_path):
    import json

    from rasft_mlx.evaluation.outcomes import answer_shapes, final_eval_file
    from rasft_mlx.experiments.compare_report import _answer_shape_lines

    rows = [
        {"completion": "2 + 2 = 4\n\\boxed{4}", "verdict": "correct", "sample": -1},
        {"completion": "2 + 2 = 5\n\\boxed{5}", "verdict": "wrong", "sample": -1},
        {"completion": "2 + 2 = 4\n4", "verdict": "correct", "sample": -1},  # last number
        {"completion": "Let us think about boxed answers and", "verdict": "truncated"},
        {"completion": "No idea.", "verdict": "no_answer", "sample": -1},
        {"completion": "\\boxed{4}", "verdict": "correct", "sample": 0},  # sampled: not counted
    ]
    for epoch, file_rows in ((1, rows[:1]), (3, rows)):
        path = tmp_path / f"eval-epoch-{epoch}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in file_rows))
    assert final_eval_file(tmp_path).name == "eval-epoch-3.jsonl"
    shapes = answer_shapes(final_eval_file(tmp_path))
    assert shapes == {"answers": 5, "boxed": 0.4, "truncated": 0.2, "no_answer": 0.2}
    assert answer_shapes(tmp_path / "missing.jsonl") is None

    results = {"modes": ["sft"], "summary": {"sft": {"answer_shapes": shapes}}}
    lines = _answer_shape_lines({**results, "base_answer_shapes": None})
    assert "| sft | 40.0% | 20.0% | 20.0% |" in lines
    assert _answer_shape_lines({"modes": ["sft"], "summary": {"sft": {}}}) == []
