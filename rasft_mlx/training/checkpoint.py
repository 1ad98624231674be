"""Run checkpoints: everything a run needs to continue bit-for-bit, written atomically.

Layout: RUN_DIR/checkpoints/step-NNNNNN/ holds
  adapters.safetensors + adapter_config.json   the trainable weights (loadable as mlx-lm adapters)
  optimizer.safetensors                        tree_flatten(optimizer.state): moments, step, lr
  queue.json + queue_logprobs.npy              the epoch's sequence queue (RASFT only)
  state.json                                   counters, batch plan, RNG states, source state,
                                               and the size of every other file (written last)
A checkpoint is written into a hidden temp folder, every file fsynced, then the folder is renamed
into place and RUN_DIR/checkpoints/latest is replaced atomically: a kill at any moment leaves the
previous checkpoint loadable. The newest `keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from rasft_mlx.data.encoding import TrainingSequence
from rasft_mlx.runtime.fileio import atomic_write_text

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
STATE_FILE = "state.json"
ADAPTERS_FILE = "adapters.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
QUEUE_FILE = "queue.json"
QUEUE_LOGPROBS_FILE = "queue_logprobs.npy"
FORMAT_VERSION = 1
PREFIX = "step-"
OLD_PREFIX = ".old-step-"
TEMP_PREFIX = ".tmp-step-"
# Test hook: seconds to sleep between the files of a checkpoint write (to kill a run mid-write).
SLEEP_ENV = "RASFT_MLX_TEST_CHECKPOINT_SLEEP"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read, with the path and the reason."""


@dataclass
class Checkpoint:
    path: Path
    state: dict

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def adapter_weights(self) -> dict[str, mx.array]:
        return mx.load(str(self.path / ADAPTERS_FILE))

    def optimizer_state(self) -> dict[str, mx.array]:
        return mx.load(str(self.path / OPTIMIZER_FILE))

    def queue(self) -> list[TrainingSequence] | None:
        if not (self.path / QUEUE_FILE).is_file():
            return None
        records = json.loads((self.path / QUEUE_FILE).read_text())
        flat = np.load(self.path / QUEUE_LOGPROBS_FILE)
        return sequences_from_records(records, flat)


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


# ---------------------------------------------------------------------------------------------
# Serialising the state that is not plain JSON.
# ---------------------------------------------------------------------------------------------


def mlx_random_state() -> list[int]:
    """The global MLX PRNG key as two uint32 words."""
    return [int(v) for v in mx.random.state[0].tolist()]


def restore_mlx_random_state(words: list[int]) -> None:
    # mx.random.seed(s) sets the key to [s >> 32, s & 0xffffffff], so any key can be re-seeded.
    high, low = (int(w) for w in words)
    mx.random.seed((high << 32) | low)


def sequences_to_records(sequences: list[TrainingSequence]) -> tuple[list[dict], np.ndarray]:
    """JSON records plus one flat float32 array of all reference log-probs (length -1 = none)."""
    records, chunks = [], []
    for s in sequences:
        logprobs = s.reference_logprobs
        records.append(
            {
                "problem_id": s.problem_id,
                "tokens": [int(t) for t in s.tokens],
                "prompt_length": s.prompt_length,
                "weight": float(s.weight),
                "source": s.source,
                "logprobs": -1 if logprobs is None else len(logprobs),
            }
        )
        if logprobs is not None:
            chunks.append(np.asarray(logprobs))
    flat = np.concatenate(chunks) if chunks else np.zeros((0,), dtype=np.float32)
    return records, flat


def sequences_from_records(records: list[dict], flat: np.ndarray) -> list[TrainingSequence]:
    sequences, offset = [], 0
    for r in records:
        logprobs = None
        if r["logprobs"] >= 0:
            logprobs = flat[offset : offset + r["logprobs"]].copy()
            offset += r["logprobs"]
        sequences.append(
            TrainingSequence(
                r["problem_id"],
                tuple(r["tokens"]),
                r["prompt_length"],
                weight=r["weight"],
                source=r["source"],
                reference_logprobs=logprobs,
            )
        )
    if offset != len(flat):
        raise CheckpointError(f"queue log-probs: expected {offset} values, found {len(flat)}")
    return sequences


# ---------------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _test_sleep() -> None:
    delay = os.environ.get(SLEEP_ENV)
    if delay:
        time.sleep(float(delay))


def write_checkpoint(
    run_dir: Path,
    state: dict,
    adapter_weights: dict[str, mx.array],
    adapter_config: dict,
    optimizer_state: dict[str, mx.array],
    queue: list[TrainingSequence] | None,
    keep: int,
) -> Path:
    """Write one checkpoint atomically, point `latest` at it, prune old ones; returns its path."""
    root = checkpoints_dir(run_dir)
    name = step_dir_name(int(state["step"]))
    final = root / name
    temp = root / f"{TEMP_PREFIX}{int(state['step']):06d}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if temp.exists():
            shutil.rmtree(temp)
        temp.mkdir()
        mx.save_safetensors(str(temp / ADAPTERS_FILE), adapter_weights)
        (temp / ADAPTER_CONFIG_FILE).write_text(json.dumps(adapter_config, indent=2))
        _test_sleep()
        mx.save_safetensors(str(temp / OPTIMIZER_FILE), optimizer_state)
        if queue is not None:
            records, flat = sequences_to_records(queue)
            (temp / QUEUE_FILE).write_text(json.dumps(records))
            np.save(temp / QUEUE_LOGPROBS_FILE, flat)
        _test_sleep()
        files = {p.name: p.stat().st_size for p in sorted(temp.iterdir())}
        full_state = {"format": FORMAT_VERSION, **state, "files": files}
        (temp / STATE_FILE).write_text(json.dumps(full_state, indent=1))
        for path in temp.iterdir():
            _fsync_path(path)
        _fsync_path(temp)
        old = None
        if final.exists():  # the same step written again (e.g. after an eval): keep it until done
            old = root / f"{OLD_PREFIX}{int(state['step']):06d}-{os.getpid()}"
            os.replace(final, old)
        os.replace(temp, final)
        _fsync_path(root)
        atomic_write_text(root / LATEST_FILE, name + "\n")
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(temp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {error}") from error
    prune(root, keep)
    return final


def _step_of(path: Path) -> int | None:
    name = path.name
    for prefix in (PREFIX, OLD_PREFIX):
        if name.startswith(prefix):
            digits = name[len(prefix) :].split("-")[0]
            return int(digits) if digits.isdigit() else None
    return None


def prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` step-* folders; drop leftovers of interrupted writes."""
    complete = sorted((p for p in root.glob(f"{PREFIX}*") if _step_of(p) is not None), key=_step_of)
    for path in complete[: max(len(complete) - keep, 0)]:
        shutil.rmtree(path, ignore_errors=True)
    for path in [*root.glob(f"{TEMP_PREFIX}*"), *root.glob(f"{OLD_PREFIX}*")]:
        shutil.rmtree(path, ignore_errors=True)


def remove_checkpoints(run_dir: Path) -> None:
    shutil.rmtree(checkpoints_dir(run_dir), ignore_errors=True)


def remove_newer_than(run_dir: Path, step: int) -> None:
    """Drop checkpoints past `step` (unloadable ones found when resuming) and temp leftovers."""
    root = checkpoints_dir(run_dir)
    for path in root.glob(f"{PREFIX}*"):
        found = _step_of(path)
        if found is not None and found > step:
            shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(f"{TEMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------------------------


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint in `path`, after checking that every file it lists is there, whole."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable {STATE_FILE}: {error}") from error
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format')!r} not supported")
    for name, size in state.get("files", {}).items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            raise CheckpointError(f"{path}: {name} is missing or truncated")
    return Checkpoint(path, state)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, newest step first (a `step-*` before a `.old-step-*`).

    `latest` can only lag behind the newest folder (it is written after the rename), so the
    folders themselves are the source of truth; the pointer is for people and other tools.
    """
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None]
    return sorted(found, key=lambda p: (_step_of(p), p.name.startswith(PREFIX)), reverse=True)


def load_latest(run_dir: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest loadable checkpoint (or None) and the reasons newer ones were skipped."""
    skipped = []
    for path in list_checkpoints(run_dir):
        try:
            return read_checkpoint(path), skipped
        except CheckpointError as error:
            skipped.append(str(error))
    return None, skipped


# ---------------------------------------------------------------------------------------------
# Recipes of a resumed run.
# ---------------------------------------------------------------------------------------------


def recipe_differences(
    old: dict, new: dict, prefix: str = "", defaults: dict | None = None
) -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) for every leaf that differs between two recipe dicts.
    A key the old recipe lacks (saved by an older version) that the new one holds at its
    default in `defaults` is no difference."""
    differences = []
    defaults = defaults or {}
    for key in sorted(set(old) | set(new), key=str):
        path = f"{prefix}{key}"
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        default = defaults.get(key, "<unset>") if isinstance(defaults, dict) else "<unset>"
        if isinstance(a, dict) and isinstance(b, dict):
            nested = default if isinstance(default, dict) else None
            differences += recipe_differences(a, b, path + ".", nested)
        elif a == "<unset>" and b == default:
            continue
        elif a != b:
            differences.append((path, a, b))
    return differences
