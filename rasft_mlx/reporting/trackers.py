"""Experiment trackers (output.report_to): wandb, tensorboard, trackio get every metrics record.

Each is an optional extra, imported only when the recipe asks for it. A tracker receives the
records `MetricsLog` writes to metrics.jsonl; their numeric fields become scalars named
`EVENT/FIELD` (nested: `refresh/dropped/wrong`), at the step the run had reached.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT = "rasft-mlx"
PACKAGES = {  # tracker -> (module to import, the extra that installs it)
    "wandb": ("wandb", "report-wandb"),
    "tensorboard": ("tensorboardX", "report-tensorboard"),
    "trackio": ("trackio", "report-trackio"),
}


class TrackerError(RuntimeError):
    """A tracker the recipe asks for that cannot be used, with how to fix it."""


def check_installed(names: tuple[str, ...] | list[str]) -> None:
    """Refuse, before any work, a tracker whose package is missing."""
    for name in names:
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise TrackerError(
                f"output.report_to lists {name}, but {module} is not installed: "
                f"pip install 'rasft-mlx[{extra}]' (or pip install {module})"
            )


def scalar_fields(record: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a record, flattened with '/'; lists of numbers by index."""
    found: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            found[name] = float(value)
        elif isinstance(value, dict):
            found.update(scalar_fields(value, name + "/"))
        elif isinstance(value, list):
            found.update(scalar_fields({str(i): v for i, v in enumerate(value)}, name + "/"))
    return found


class StepTracking:
    """Turns records into (step, scalars): the step is the last optimizer step logged so far."""

    def __init__(self) -> None:
        self.step = 0

    def scalars(self, record: dict) -> tuple[int, dict[str, float]]:
        event = record.get("event", "record")
        if event == "step" and isinstance(record.get("step"), int):
            self.step = record["step"]
        fields = {k: v for k, v in record.items() if k not in ("event", "step")}
        return self.step, scalar_fields(fields, f"{event}/")


class RunLogTracker(StepTracking):
    """A tracker whose run object has `log(values, step=)` and `finish()` (wandb, trackio)."""

    run = None

    def write(self, record: dict) -> None:
        step, values = self.scalars(record)
        if values:
            self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class WandbTracker(RunLogTracker):
    """Weights & Biases; WANDB_MODE=offline keeps the run in RUN_DIR/wandb for `wandb sync`."""

    def __init__(self, run_dir: Path, run_name: str, config: dict):
        super().__init__()
        import wandb

        self.run = wandb.init(project=PROJECT, name=run_name, dir=str(run_dir), config=config)


class TensorboardTracker(StepTracking):
    """TensorBoard event files in RUN_DIR/tensorboard (`tensorboard --logdir RUN_DIR`)."""

    def __init__(self, run_dir: Path, run_name: str, config: dict):
        super().__init__()
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        step, values = self.scalars(record)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class TrackioTracker(RunLogTracker):
    """trackio's local store (TRACKIO_DIR, default ~/.cache/huggingface/trackio; `trackio show`)."""

    def __init__(self, run_dir: Path, run_name: str, config: dict):
        super().__init__()
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=PROJECT, name=run_name, config=config)


TRACKERS = {"wandb": WandbTracker, "tensorboard": TensorboardTracker, "trackio": TrackioTracker}


def open_trackers(names, run_dir: Path, run_name: str, config: dict) -> list:
    """Start the trackers the recipe names; each has write(record) and close()."""
    check_installed(names)
    opened = []
    try:
        for name in names:
            opened.append(TRACKERS[name](run_dir, run_name, config))
    except Exception:
        close_trackers(opened)
        raise
    return opened


def close_trackers(trackers: list) -> None:
    for tracker in trackers:
        tracker.close()


@contextmanager
def tracking(metrics_log, names, run_dir: Path, config: dict) -> Iterator[list]:
    """The named trackers as the metrics log's sinks while the block runs; closed after it."""
    metrics_log.sinks = open_trackers(names, run_dir, run_dir.name, config)
    try:
        yield metrics_log.sinks
    finally:
        opened, metrics_log.sinks = metrics_log.sinks, []
        close_trackers(opened)
