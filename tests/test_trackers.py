"""Trackers (rasft_mlx/reporting/trackers.py): every metrics record reaches them, read back offline."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rasft_mlx.reporting import trackers
from rasft_mlx.training.run_directory import MetricsLog

RECORDS = [
    {"event": "eval", "epoch": -1, "problems": 4, "pass_at_1": 0.25, "avg_at_k": None},
    {"event": "refresh", "refresh": 1, "solvability_histogram": [2, 1, 1], "dropped": {"wrong": 3}},
    {"event": "step", "step": 1, "epoch": 0, "loss": 2.0, "learning_rate": 1e-3},
    {"event": "step", "step": 2, "epoch": 0, "loss": 1.5, "learning_rate": 5e-4},
    {"event": "eval", "epoch": 0, "problems": 4, "pass_at_1": 0.5, "avg_at_k": None},
]
# Every numeric field, as (tag, step, value); the step is the last optimizer step logged.
EXPECTED = [
    ("eval/epoch", 0, -1.0),
    ("eval/problems", 0, 4.0),
    ("eval/pass_at_1", 0, 0.25),
    ("refresh/refresh", 0, 1.0),
    ("refresh/solvability_histogram/0", 0, 2.0),
    ("refresh/solvability_histogram/1", 0, 1.0),
    ("refresh/solvability_histogram/2", 0, 1.0),
    ("refresh/dropped/wrong", 0, 3.0),
    ("step/epoch", 1, 0.0),
    ("step/loss", 1, 2.0),
    ("step/learning_rate", 1, 1e-3),
    ("step/epoch", 2, 0.0),
    ("step/loss", 2, 1.5),
    ("step/learning_rate", 2, 5e-4),
    ("eval/epoch", 2, 0.0),
    ("eval/problems", 2, 4.0),
    ("eval/pass_at_1", 2, 0.5),
]


def rounded(triples) -> set:
    """(tag, step, value) with values to 6 significant digits (TensorBoard keeps float32)."""
    return {(tag, step, float(f"{value:.6g}")) for tag, step, value in triples}


def needs(module: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"{module} is not installed (scripts/test.sh installs the report extras)",
    )


def log_through_metrics(run_dir: Path, name: str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    with trackers.tracking(metrics, [name], run_dir, {"training": {"mode": "rasft"}}):
        for record in RECORDS:
            metrics.write(record)
    assert metrics.sinks == []  # closed after the block
    return run_dir


def test_scalar_fields_flatten_numbers_and_skip_the_rest():
    record = {"a": 1, "b": True, "c": None, "d": "text", "e": {"f": 2.5}, "g": [3, 4]}
    assert trackers.scalar_fields(record) == {"a": 1.0, "e/f": 2.5, "g/0": 3.0, "g/1": 4.0}


def test_a_missing_tracker_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(trackers.TrackerError, match=r"pip install 'rasft-mlx\[report-wandb\]'"):
        trackers.check_installed(["wandb"])


def test_a_failing_sink_is_switched_off_and_the_log_goes_on(tmp_path):
    class Broken:
        def write(self, record):
            raise OSError("tracker down")

    metrics = MetricsLog(tmp_path / "metrics.jsonl", sinks=[Broken()])
    with pytest.warns(UserWarning, match="tracker down"):
        metrics.write(RECORDS[0])
    metrics.write(RECORDS[2])
    assert metrics.sinks == [] and len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


@needs("tensorboardX")
@needs("tensorboard")
def test_tensorboard_event_files_hold_the_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = log_through_metrics(tmp_path / "run", "tensorboard")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    found = {
        (tag, e.step, e.value) for tag in events.Tags()["scalars"] for e in events.Scalars(tag)
    }
    assert rounded(EXPECTED) == rounded(found)


def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file (a LevelDB-style log, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = (
            int.from_bytes(data[position + 4 : position + 6], "little"),
            data[position + 6],
        )
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@needs("wandb")
def test_wandb_offline_run_holds_the_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = log_through_metrics(tmp_path / "run", "wandb")
    (log_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    found = set()
    for record in wandb_records(log_file):
        if record.HasField("history"):
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                     for i in record.history.item}  # fmt: skip
            found |= {(k, items["_step"], v) for k, v in items.items() if not k.startswith("_")}
    assert rounded(EXPECTED) == rounded(found)


TRACKIO_READ_BACK = """
import json, sys
from pathlib import Path
from rasft_mlx.training.run_directory import MetricsLog
from rasft_mlx.reporting import trackers
sys.path.insert(0, sys.argv[2])
from test_trackers import RECORDS
from trackio.sqlite_storage import SQLiteStorage
run_dir = Path(sys.argv[1])
metrics = MetricsLog(run_dir / "metrics.jsonl")
with trackers.tracking(metrics, ["trackio"], run_dir, {}):
    for record in RECORDS:
        metrics.write(record)
rows = SQLiteStorage.get_logs(trackers.PROJECT, run_dir.name)
print("ROWS " + json.dumps([{k: v for k, v in r.items() if k != "timestamp"} for r in rows], default=str))
"""


@needs("trackio")
def test_trackio_local_store_holds_the_metrics(tmp_path):
    # trackio reads TRACKIO_DIR when imported: a fresh interpreter keeps the store in tmp_path.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = os.environ | {"TRACKIO_DIR": str(tmp_path / "trackio-store")}
    tests_dir = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", TRACKIO_READ_BACK, str(run_dir), tests_dir],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("ROWS ")]
    rows = json.loads(line.removeprefix("ROWS "))
    found = {(k, row["step"], v) for row in rows for k, v in row.items() if "/" in k}
    assert rounded(EXPECTED) == rounded(found)
    assert (tmp_path / "trackio-store").is_dir()
