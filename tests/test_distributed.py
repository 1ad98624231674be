"""One run over two processes (ring backend over loopback) equals one process with the same global
batch; rollouts are shared out; resume needs the same world size; a dead rank ends the others."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import yaml
from child_processes import popen
from rich.console import Console

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.cli import STOP_AFTER_ENV
from rasft_mlx.commands.train import TrainingError, run_training
from rasft_mlx.recipe.config import load_recipe
from rasft_mlx.runtime.peer_watchdog import EXIT_PEER_LOST
from rasft_mlx.training.checkpoint import SLEEP_ENV, list_checkpoints, read_checkpoint

QUIET = Console(quiet=True)
ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5
RANK_TIMEOUT = 240


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_ranks(tmp_path: Path, args: list[str], world: int = 2, env: dict | None = None):
    """`world` processes of `rasft-mlx ARGS`, one run over the ring backend on loopback."""
    hostfile = tmp_path / f"hosts-{time.monotonic_ns()}.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(world)]))
    processes = []
    for rank in range(world):
        rank_env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MLX_RANK": str(rank),
            "MLX_HOSTFILE": str(hostfile),
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        }
        processes.append(
            popen(
                [sys.executable, "-m", "rasft_mlx.cli", *args],
                env=rank_env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return processes


def run_ranks(tmp_path: Path, args: list[str], world: int = 2) -> list[str]:
    processes = start_ranks(tmp_path, args, world)
    return finish(processes)


def finish(processes) -> list[str]:
    outputs = [p.communicate(timeout=RANK_TIMEOUT)[0] for p in processes]
    for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"rank {rank} failed:\n{output}"
    return outputs


def recipe_file(tmp_path: Path, model_dir: Path, mode: str = "sft", **sections) -> Path:
    data = {
        "model": {"path": str(model_dir)},
        "data": {
            "synthetic": {"n_train": 22, "n_test": 3, "min_level": 0, "max_level": 1},
            "max_seq_len": 256,
        },
        "lora": {"rank": 4, "scale": 2.0, "dropout": 0.0},
        "training": {
            "mode": mode,
            "epochs": 2,
            "batch_size": 4,
            "grad_accumulation": 2,
            "learning_rate": 1e-3,
            "warmup_steps": 1,
            "eval_every_epoch": False,
        },
        "eval": {"max_new_tokens": 4},
        "output": {"save_every": 2},
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp_path / f"recipe-{mode}-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def adapters(run_dir: Path) -> dict[str, np.ndarray]:
    weights = mx.load(str(run_dir / "adapters" / "adapters.safetensors"))
    return {k: np.array(v) for k, v in weights.items()}


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


# -- sharding helpers (in one process: the shares of every rank are computed directly) --------


@pytest.mark.parametrize(("count", "block"), [(0, 1), (7, 1), (7, 3), (10, 2), (5, 8)])
def test_shards_are_disjoint_and_cover_every_item(count, block, monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    shares = [distributed.shard_indices(count, block, rank) for rank in range(3)]
    flat = [i for share in shares for i in share]
    assert sorted(flat) == list(range(count))
    assert len(flat) == len(set(flat))
    items = [f"item{i}" for i in range(count)]
    assert distributed.unshard([[items[i] for i in s] for s in shares], count, block) == items


# -- two processes ---------------------------------------------------------------------------


@pytest.mark.parametrize("normalization", ["token_mean", "micro_batch_mean"])
def test_sft_on_two_ranks_equals_one_process(tiny_llama_dir, tmp_path, normalization):
    # 22 demos in batches of 4: the last micro-batch of each epoch has 2 rows, one per rank
    path = recipe_file(tmp_path, tiny_llama_dir, training={"loss_normalization": normalization})
    one = run_training(load_recipe(path), tmp_path / "one", QUIET).run_dir
    run_ranks(tmp_path, ["train", str(path), "--out", str(tmp_path / "two")])
    two = tmp_path / "two"
    assert largest_difference(adapters(one), adapters(two)) < TOLERANCE
    steps_one, steps_two = records(one, "step"), records(two, "step")
    assert [r["trained_tokens"] for r in steps_one] == [r["trained_tokens"] for r in steps_two]
    assert [r["sequences"] for r in steps_one] == [r["sequences"] for r in steps_two]
    assert np.allclose([r["loss"] for r in steps_one], [r["loss"] for r in steps_two], atol=1e-5)
    assert not list(tmp_path.glob("rasft-rank*")), "rank 1 wrote outside its scratch dir"


def test_validation_on_two_ranks_equals_one_process(tiny_llama_dir, tmp_path):
    """6 validation demos in batches of 4: rank 0 scores 4, rank 1 the other 2, and the gathered
    loss is the one-process loss; pass@1 shares its problems; rank 0 alone keeps the best."""
    synthetic = {"n_train": 22, "n_test": 3, "n_validation": 6, "min_level": 0, "max_level": 1}
    path = recipe_file(
        tmp_path,
        tiny_llama_dir,
        data={"synthetic": synthetic, "validation": "synthetic-validation"},
        eval={"max_new_tokens": 4, "val_every": 2, "val_pass_at_1_problems": 3},
        output={"save_every": 2, "keep_best": "val_loss"},
    )
    one = run_training(load_recipe(path), tmp_path / "one", QUIET).run_dir
    run_ranks(tmp_path, ["train", str(path), "--out", str(tmp_path / "two")])
    two = tmp_path / "two"
    val_one, val_two = records(one, "validation"), records(two, "validation")
    assert [r["step"] for r in val_one] == [r["step"] for r in val_two] == [2, 4, 6]
    assert np.allclose([r["loss"] for r in val_one], [r["loss"] for r in val_two], atol=1e-5)
    for key in ("tokens", "sequences", "pass_at_1", "pass_at_1_problems", "best_step"):
        assert [r[key] for r in val_one] == [r[key] for r in val_two], key
    best = lambda run: mx.load(str(run / "adapters-best" / "adapters.safetensors"))  # noqa: E731
    kept_one, kept_two = best(one), best(two)
    assert max(float(mx.abs(kept_one[k] - kept_two[k]).max()) for k in kept_one) < TOLERANCE
    assert not list(tmp_path.glob("rasft-rank*")), "rank 1 wrote outside its scratch dir"


def rasft_recipe(tmp_path: Path, model_dir: Path, temperature: float, mode="rasft") -> Path:
    """Level-0 problems the weak base solves about 40% of. Rollout batches of 2 problems x k=2:
    each rank decodes whole chunks of the one-process decode."""
    return recipe_file(
        tmp_path,
        model_dir,
        mode,
        data={
            "synthetic": {"n_train": 12, "n_test": 3, "min_level": 0, "max_level": 0},
            "max_seq_len": 256,
        },
        training={"epochs": 2, "batch_size": 4, "grad_accumulation": 1, "bucket_multiple": 16},
        rollout={"k": 2, "max_new_tokens": 24, "temperature": temperature, "batch_size": 4},
        rasft={"selection": "all", "refresh_every_steps": 0},
        eval={"max_new_tokens": 16, "batch_size": 2},
    )


def ledger(run_dir: Path) -> list[list[dict]]:
    files = sorted((run_dir / "rollouts").glob("refresh-*.jsonl"))
    return [[json.loads(line) for line in f.read_text().splitlines()] for f in files]


# Greedy rollouts of one problem are identical, so RASFT's groups are degenerate (solved or not:
# the expert weight still comes from them) and no rollout is trained; "rft" (the same machinery)
# trains the correct ones, so the rollouts themselves join the training set.
@pytest.mark.parametrize("mode", ["rasft", "rft"])
def test_greedy_rollout_modes_on_two_ranks_equal_one_process(weak_base_dir, tmp_path, mode):
    path = rasft_recipe(tmp_path, weak_base_dir, temperature=0.0, mode=mode)
    one = run_training(load_recipe(path), tmp_path / "one", QUIET).run_dir
    run_ranks(tmp_path, ["train", str(path), "--out", str(tmp_path / "two")])
    two = tmp_path / "two"
    refreshes_one, refreshes_two = ledger(one), ledger(two)
    assert len(refreshes_one) == 2
    for rows_one, rows_two in zip(refreshes_one, refreshes_two, strict=True):
        assert {row["rank"] for row in rows_two} == {0, 1}
        assert rows_one == [{k: v for k, v in row.items() if k != "rank"} for row in rows_two]
    trained = [s for rows in refreshes_one for row in rows for s in row["samples"] if s["weight"]]
    routes = {row["route"] for rows in refreshes_one for row in rows}
    if mode == "rft":
        assert trained, "no correct rollout joined the training set: the test shows too little"
    else:
        assert {"fallback_unsolved", "fallback_degenerate"} <= routes
    assert largest_difference(adapters(one), adapters(two)) < TOLERANCE
    evals = [json.loads((d / "eval-epoch-2-summary.json").read_text()) for d in (one, two)]
    assert evals[0]["pass_at_1"] == evals[1]["pass_at_1"]
    assert (one / "eval-epoch-2.jsonl").read_text() == (two / "eval-epoch-2.jsonl").read_text()


def test_sampled_rollouts_are_shared_out_without_overlap(weak_base_dir, tmp_path):
    path = rasft_recipe(tmp_path, weak_base_dir, temperature=1.0)
    run_ranks(tmp_path, ["train", str(path), "--out", str(tmp_path / "two")])
    refreshes = ledger(tmp_path / "two")
    selected = [r["problems_selected"] for r in records(tmp_path / "two", "refresh")]
    assert len(refreshes) == len(selected) == 2
    for rows, count in zip(refreshes, selected, strict=True):
        ids = [row["problem_id"] for row in rows]
        assert len(ids) == len(set(ids)) == count  # every selected problem, rolled out once
        shares = [{row["problem_id"] for row in rows if row["rank"] == r} for r in (0, 1)]
        assert shares[0] and shares[1] and not shares[0] & shares[1]
        assert shares[0] | shares[1] == set(ids)
        assert all(len(row["samples"]) == 2 for row in rows)


def wait_for_steps(run_dir: Path, count: int, processes) -> None:
    deadline = time.monotonic() + RANK_TIMEOUT
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count('"event": "step"') >= count:
            return
        assert all(p.poll() is None for p in processes), "a rank ended early"
        time.sleep(0.05)
    raise AssertionError(f"no {count} steps in {run_dir}")


def test_interrupted_run_resumes_on_the_same_world_size_only(tiny_llama_dir, tmp_path):
    path = recipe_file(tmp_path, tiny_llama_dir, output={"save_every": 1})
    straight = run_training(load_recipe(path), tmp_path / "straight", QUIET).run_dir
    run_dir = tmp_path / "two"
    args = ["train", str(path), "--out", str(run_dir)]
    processes = start_ranks(tmp_path, args, env={STOP_AFTER_ENV: "3"})
    outputs = [p.communicate(timeout=RANK_TIMEOUT)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert "interrupted" in outputs[0]
    stopped_at = read_checkpoint(list_checkpoints(run_dir)[0]).step
    assert stopped_at == 3

    with pytest.raises(TrainingError, match="over 2 process"):
        run_training(load_recipe(path), run_dir, QUIET, resume=True)
    run_ranks(tmp_path, [*args, "--resume"])
    assert largest_difference(adapters(straight), adapters(run_dir)) < TOLERANCE
    assert [r["step"] for r in records(run_dir, "step")] == list(range(1, 7))


def start_long_run(tmp_path: Path, model_dir: Path) -> tuple[Path, list]:
    """Two ranks on a 20-epoch run slowed by the checkpoint sleep, once it has made 2 steps."""
    path = recipe_file(tmp_path, model_dir, training={"epochs": 20})
    run_dir = tmp_path / "two"
    processes = start_ranks(
        tmp_path, ["train", str(path), "--out", str(run_dir)], env={SLEEP_ENV: "0.2"}
    )
    wait_for_steps(run_dir, 2, processes)
    return run_dir, processes


def test_a_killed_rank_ends_the_other_within_a_minute(tiny_llama_dir, tmp_path):
    _, processes = start_long_run(tmp_path, tiny_llama_dir)
    processes[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    output = processes[0].communicate(timeout=60)[0]
    assert time.monotonic() - killed < 60
    processes[1].wait()
    assert processes[0].returncode == EXIT_PEER_LOST, output
    assert "lost rank 1" in output
