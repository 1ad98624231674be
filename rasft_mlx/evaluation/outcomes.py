"""What a finished run's evaluation files say, per test problem: the greedy verdicts (1/0, in
test-set order) that the paired statistics compare, and the shape of its answers."""

from __future__ import annotations

import json
from pathlib import Path

from rasft_mlx.data.verify import last_boxed


def greedy_rows(path: Path) -> list[dict]:
    """The greedy (not sampled) rows of an eval JSONL file, in test-set order."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row.get("sample", -1) == -1]


def greedy_outcomes(path: Path) -> list[int]:
    return [int(bool(row["correct"])) for row in greedy_rows(path)]


def final_eval_file(run_dir: Path) -> Path | None:
    """The run's last in-distribution evaluation (eval-epoch-N.jsonl with the largest N)."""
    files = [p for p in run_dir.glob("eval-epoch-*.jsonl") if p.stem.split("-")[-1].isdigit()]
    return max(files, key=lambda p: int(p.stem.split("-")[-1])) if files else None


def final_outcomes(run_dir: Path) -> list[int]:
    """1/0 per test problem (greedy verdicts) of the run's last evaluation, in test-set order."""
    path = final_eval_file(run_dir)
    return greedy_outcomes(path) if path is not None else []


def extra_set_outcomes(run_dir: Path, name: str) -> list[int]:
    """1/0 per problem of the extra test set `name` at the end of the run (eval-final-NAME)."""
    path = run_dir / f"eval-final-{name}.jsonl"
    return greedy_outcomes(path) if path.is_file() else []


def answer_shapes(path: Path | None) -> dict | None:
    """Shares of the greedy answers in an eval file that put their final answer in \\boxed{} (the
    format every demo ends with and the system prompt asks for), ran out of new tokens, or gave
    no answer the grader could read; None without answers."""
    rows = greedy_rows(path) if path is not None and path.is_file() else []
    if not rows:
        return None
    count = len(rows)
    return {
        "answers": count,
        "boxed": sum(last_boxed(row["completion"]) is not None for row in rows) / count,
        "truncated": sum(row.get("verdict") == "truncated" for row in rows) / count,
        "no_answer": sum(row.get("verdict") == "no_answer" for row in rows) / count,
    }
