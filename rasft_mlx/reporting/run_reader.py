"""Reading a run directory into plain data: metrics records, summary, recipe and rollout ledgers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ReportError(ValueError):
    """A run dir (or compare dir) that cannot be reported on, naming the file and what is missing."""


@dataclass
class RunFiles:
    """Everything a run report shows, as read from the run dir."""

    run_dir: Path
    records: list[dict]
    summary: dict | None = None
    recipe: dict = field(default_factory=dict)
    recipe_text: str = ""
    ledgers: dict[int, list[dict]] = field(default_factory=dict)  # refresh number -> rows
    last_eval_rows: list[dict] = field(default_factory=list)


def read_jsonl(path: Path) -> list[dict]:
    """The JSON records of a JSONL file; a torn last line (a killed run) is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(
            f"{path}: no such file; expected the metrics log that `rasft-mlx train` writes "
            "in its run directory"
        )
    records = [r for r in read_jsonl(path) if isinstance(r, dict) and "event" in r]
    if not records:
        raise ReportError(
            f"{path}: no metrics records; expected JSON lines with an 'event' field "
            "(has the run taken its first step?)"
        )
    return records


def _ledger_number(path: Path) -> int | None:
    tail = path.stem.removeprefix("refresh-")
    return int(tail) if tail.isdigit() else None


def _epoch_file_number(path: Path) -> int | None:
    tail = path.stem.removeprefix("eval-epoch-")
    return int(tail) if tail.isdigit() else None


def read_run(run_dir: str | Path) -> RunFiles:
    """Read a run dir made by `rasft-mlx train`; ReportError when it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(
            f"{run_dir}: no such run directory (expected one made by rasft-mlx train)"
        )
    run = RunFiles(run_dir=run_dir, records=read_metrics(run_dir))
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            run.summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as error:
            raise ReportError(f"{summary_path}: not valid JSON ({error})") from error
    recipe_path = run_dir / "recipe.yaml"
    if recipe_path.is_file():
        run.recipe_text = recipe_path.read_text()
        try:
            run.recipe = yaml.safe_load(run.recipe_text) or {}
        except yaml.YAMLError as error:
            raise ReportError(f"{recipe_path}: not valid YAML ({error})") from error
    for path in sorted((run_dir / "rollouts").glob("refresh-*.jsonl")):
        number = _ledger_number(path)
        if number is not None:
            run.ledgers[number] = read_jsonl(path)
    # eval-epoch-0 is the starting model; the samples shown come from the latest trained epoch.
    eval_files = [p for p in run_dir.glob("eval-epoch-*.jsonl") if (_epoch_file_number(p) or 0) > 0]
    if eval_files:
        run.last_eval_rows = read_jsonl(max(eval_files, key=_epoch_file_number))
    return run
