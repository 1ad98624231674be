"""benchmarks/gpu_check.py: one JSON with every part, even when the budget is spent; a smoke part runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from child_processes import popen

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
PARTS = {
    "train_step",
    "rollouts",
    "memory_sft",
    "memory_rasft",
    "memory_rasft_checkpoint",
    "qlora_4bit",
    "full_finetune",
}


def run_check(json_path: Path, *arguments: str) -> dict:
    process = popen(
        [sys.executable, str(SCRIPT), "--smoke", "--json", str(json_path), *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = process.communicate(timeout=90)
    assert process.returncode == 0, out + err
    return json.loads(json_path.read_text())


def test_a_spent_budget_still_writes_every_part(tmp_path):
    report = run_check(tmp_path / "check.json", "--budget", "0")
    assert report["complete"]
    assert set(report["parts"]) == PARTS
    assert {entry["status"] for entry in report["parts"].values()} == {"skipped"}


def test_the_smoke_qlora_part_trains_sft_and_rasft_steps(tmp_path):
    report = run_check(tmp_path / "check.json", "--parts", "qlora_4bit")
    entry = report["parts"]["qlora_4bit"]
    assert entry["status"] == "ok", entry.get("error")
    result = entry["result"]
    assert result["sft"]["ms_per_step"] > 0 and result["rasft"]["ms_per_step"] > 0
    assert result["rasft_over_sft_time"] > 0
