"""`rasft-mlx eval` over several benchmarks at once: one table, each benchmark's files and grader,
and the mean of the accuracies; the --data forms."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rasft_mlx.cli import app
from rasft_mlx.evaluation.benchmarks import parse_data_sources
from rasft_mlx.recipe.config import RecipeError
from rasft_mlx.recipe.dataset_config import DatasetSource

runner = CliRunner()


def test_data_forms_names_paths_and_yaml(tmp_path):
    assert parse_data_sources("gsm8k, math500,data/x.jsonl") == [
        ("gsm8k", "gsm8k"),
        ("math500", "math500"),
        ("x", "data/x.jsonl"),
    ]
    [(name, source)] = parse_data_sources("{hub: openai/gsm8k, config: main, split: 'test[:200]'}")
    assert source == DatasetSource(hub="openai/gsm8k", config="main", split="test[:200]")
    assert name == "gsm8k-test"
    listed = parse_data_sources("[gsm8k, {hub: HuggingFaceH4/MATH-500, split: test}]")
    assert [n for n, _ in listed] == ["gsm8k", "MATH-500-test"]
    with pytest.raises(RecipeError, match="unknown key 'splt'; did you mean 'split'"):
        parse_data_sources("{hub: a/b, splt: test}")
    with pytest.raises(RecipeError, match="gsm8k given twice"):
        parse_data_sources("gsm8k,gsm8k")


def test_several_benchmarks_in_one_evaluation(tiny_llama_dir, tmp_path):
    numeric = tmp_path / "arith.jsonl"
    numeric.write_text(
        "".join(
            json.dumps({"prompt": f"What is {n} + 1?", "solution": f"{n + 1}", "answer": n + 1})
            + "\n"
            for n in range(3)
        )
    )
    latex = tmp_path / "algebra.jsonl"
    latex.write_text(
        "".join(
            json.dumps({"problem": f"Halve {n}.", "solution": f"\\boxed{{\\frac{{{n}}}{{2}}}}"})
            + "\n"
            for n in range(1, 3)
        )
    )
    out = tmp_path / "out"
    args = ["eval", "--model", str(tiny_llama_dir), "--data", f"{numeric},{latex},synthetic"]
    result = runner.invoke(app, [*args, "--limit", "2", "--max-new-tokens", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "mean" in result.output and "algebra" in result.output
    table = json.loads((out / "benchmarks.json").read_text())
    assert [row["name"] for row in table["benchmarks"]] == ["arith", "algebra", "synthetic"]
    accuracies = []
    for name, grader in (
        ("arith", "builtin"),
        ("algebra", "math-verify"),
        ("synthetic", "builtin"),
    ):
        records = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert len(records) == 2 and {r["grader"] for r in records} == {grader}
        accuracies.append(sum(r["correct"] for r in records) / len(records))
        summary = json.loads((out / f"{name}-summary.json").read_text())
        assert summary["pass_at_1"] == pytest.approx(accuracies[-1])
    assert table["mean"]["pass_at_1"] == pytest.approx(sum(accuracies) / 3)


def test_a_bad_benchmark_name_fails_before_the_model_loads(tmp_path):
    result = runner.invoke(
        app, ["eval", "--model", "builtin:nope", "--data", "gsm8k,mth500", "--out", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "mth500: no such file, and not a named benchmark" in result.output


def test_the_mean_weighs_benchmarks_equally_not_problems(tmp_path):
    from rasft_mlx.evaluation.benchmarks import BenchmarkResult, benchmark_table
    from rasft_mlx.evaluation.evaluate import EvalSummary

    def result(name, problems, correct):
        summary = EvalSummary(problems, correct / problems, 1, None, None, 0, 1.0)
        return BenchmarkResult(name, summary, tmp_path / "r", tmp_path / "s")

    table = benchmark_table([result("big", 500, 400), result("small", 30, 6)])
    assert table["mean"] == {"pass_at_1": pytest.approx((0.8 + 0.2) / 2)}  # not 406 / 530
    assert [row["problems"] for row in table["benchmarks"]] == [500, 30]


def test_sampled_eval_counts_mixed_groups_by_hand():
    from rasft_mlx.evaluation.evaluate import EvalRecord, sample_solvability

    def record(problem: str, sample: int, correct: bool) -> EvalRecord:
        return EvalRecord(problem, "q", "c", None, "1", correct, "ok", sample)

    # K = 4: p1 2/4 right, p2 0/4, p3 4/4, p4 1/4 -> histogram [1, 1, 1, 0, 1], mixed 2 of 4
    rights = {"p1": [1, 0, 1, 0], "p2": [0, 0, 0, 0], "p3": [1, 1, 1, 1], "p4": [0, 0, 0, 1]}
    records = [record(p, i, bool(c)) for p, row in rights.items() for i, c in enumerate(row)]
    assert sample_solvability(records, 4) == ([1, 1, 1, 0, 1], 0.5)
