"""What one run over several ranks exchanges, and how long it takes: 2 ranks over loopback.

Per optimizer step the ranks all-reduce the LoRA gradient sums (one float32 per trainable
parameter) and 5 step scalars; per refresh they all-gather the verified rollouts (JSON) and the
reference log-probs (float32 per response token). This script times those collectives on
loopback for the LoRA sizes of the model shapes in common.py (rank 16 on q/k/v/o/gate/up/down),
then estimates their time for 2-8 machines over 10 GbE and Thunderbolt 5 with the ring
all-reduce's 2 (N-1)/N bytes per rank.

    python benchmarks/distributed.py            # launches its 2 ranks itself

It then runs a small real RASFT run (SmolLM2-135M, the builtin model; synthetic data) over the
2 ranks with RASFT_MLX_TIME_COLLECTIVES=1 and reports the share of the optimizer steps' time
spent in the gradient all-reduce, and of the refreshes' time in the rollout and log-prob
gathers. Timing a collective evaluates its input first, so the run is a little slower than an
untimed one (the shares are upper bounds).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import SHAPES  # noqa: E402  (common.py puts the repo on sys.path)

LINKS_BYTES_PER_SECOND = {"10 GbE": 1.1e9, "Thunderbolt 5": 6.0e9}  # usable, not nominal
LINK_LATENCY_SECONDS = {"10 GbE": 50e-6, "Thunderbolt 5": 20e-6}
LORA_RANK = 16
REFRESH_PAYLOAD_BYTES = 2 * 1024 * 1024  # e.g. 256 problems x 4 rollouts x ~2 KB of JSON


def lora_parameters(shape: dict, rank: int = LORA_RANK) -> int:
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    head = hidden // shape["num_attention_heads"]
    kv = head * shape["num_key_value_heads"]
    projections = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden)]
    projections += [(hidden, inter), (hidden, inter), (inter, hidden)]
    return shape["num_hidden_layers"] * sum(rank * (a + b) for a, b in projections)


def worker() -> None:
    import mlx.core as mx

    import rasft_mlx.runtime.distributed as distributed

    results = {}
    for name, shape in SHAPES.items():
        count = lora_parameters(shape)
        grads = mx.ones((count,), dtype=mx.float32)
        mx.eval(distributed.all_sum(grads))  # warm-up
        started = time.perf_counter()
        for _ in range(5):
            mx.eval(distributed.all_sum(grads))
        results[name] = {"parameters": count, "bytes": count * 4}
        results[name]["all_reduce_seconds"] = (time.perf_counter() - started) / 5
    payload = b"x" * REFRESH_PAYLOAD_BYTES
    distributed.all_gather_bytes(payload)
    started = time.perf_counter()
    for _ in range(5):
        distributed.all_gather_bytes(payload)
    gather = (time.perf_counter() - started) / 5
    if distributed.is_main():
        print(json.dumps({"models": results, "refresh_gather_seconds": gather}))


def run_worker(run_dir: str) -> None:
    """One rank of a real 2-rank RASFT run; rank 0 prints the timings as JSON."""
    import rasft_mlx.runtime.distributed as distributed
    from rasft_mlx.commands.train import run_training
    from rasft_mlx.recipe.config import recipe_from_dict

    recipe = recipe_from_dict(
        {
            "model": {"path": "builtin:smollm2-135m"},
            "data": {"synthetic": {"n_train": 32, "n_test": 16, "min_level": 1, "max_level": 1}},
            "lora": {"rank": 8},
            "training": {"mode": "rasft", "epochs": 2, "batch_size": 8, "warmup_steps": 1},
            "rollout": {"k": 2, "max_new_tokens": 48, "batch_size": 32},
            "rasft": {"selection": "all"},
            "eval": {"max_new_tokens": 48, "batch_size": 16},
            "output": {"report": False},
        }
    )
    result = run_training(recipe, Path(run_dir))
    seconds = distributed.all_gather_json(dict(distributed.exchanged_seconds))
    if distributed.is_main():
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        print(
            json.dumps(
                {
                    "steps": result.steps,
                    "wall_time_split_seconds": summary["wall_time_split_seconds"],
                    "collective_seconds_per_rank": seconds,
                    "bytes_rank0": dict(distributed.exchanged_bytes),
                }
            )
        )


def launch(arguments: list[str], extra_env: dict | None = None) -> dict:
    """Run this script with `arguments` on 2 ranks over loopback; rank 0's last JSON line."""
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    hostfile = Path("/tmp") / f"rasft-bench-hosts-{os.getpid()}.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in ports]))
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "MLX_HOSTFILE": str(hostfile), "PYTHONPATH": root, **(extra_env or {})}
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, *arguments],
            env={**env, "MLX_RANK": str(r)},
            stdout=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
            text=True,
        )
        for r in range(2)
    ]
    output = processes[0].communicate()[0]
    processes[1].wait()
    return json.loads(output.strip().splitlines()[-1])


def real_run_shares(measured: dict) -> dict:
    """Shares of the train and refresh time spent in collectives, per rank (the larger)."""
    split = measured["wall_time_split_seconds"]
    step_kinds = ("gradients", "step scalars", "token counts")
    refresh_kinds = ("rollouts", "log-probs")
    per_rank = measured["collective_seconds_per_rank"]
    all_reduce = max(sum(r.get(k, 0.0) for k in step_kinds) for r in per_rank)
    waiting = max(r.get("waiting for other ranks", 0.0) for r in per_rank)
    gathers = max(sum(r.get(k, 0.0) for k in refresh_kinds) for r in per_rank)
    refresh_time = split.get("rollout", 0.0) + split.get("reference", 0.0)
    return {
        "steps": measured["steps"],
        "train_seconds": split.get("train", 0.0),
        "all_reduce_seconds": all_reduce,
        "all_reduce_share_of_train": all_reduce / max(split.get("train", 0.0), 1e-9),
        "waiting_seconds": waiting,
        "refresh_seconds": refresh_time,
        "gather_seconds": gathers,
        "gather_share_of_refresh": gathers / max(refresh_time, 1e-9),
        "gradient_bytes_per_step": measured["bytes_rank0"].get("gradients", 0) / measured["steps"],
    }


def ring_seconds(nbytes: int, ranks: int, link: str) -> float:
    steps = 2 * (ranks - 1)
    return (
        steps * LINK_LATENCY_SECONDS[link]
        + 2 * (ranks - 1) / ranks * nbytes / (LINKS_BYTES_PER_SECOND[link])
    )


def main() -> None:
    measured = launch(["--worker"])
    print(f"{'model (LoRA r=16)':<18} {'MB/step':>8} {'loopback 2 ranks':>17}  estimates (ms)")
    estimates = {}
    for name, row in measured["models"].items():
        cells = []
        for link in LINKS_BYTES_PER_SECOND:
            for ranks in (2, 4, 8):
                seconds = ring_seconds(row["bytes"], ranks, link)
                estimates[f"{name} {link} {ranks}"] = seconds
                cells.append(f"{link} x{ranks}: {seconds * 1e3:.1f}")
        print(
            f"{name:<18} {row['bytes'] / 1e6:>8.2f} {row['all_reduce_seconds'] * 1e3:>14.1f} ms  "
            + ", ".join(cells)
        )
    print(
        f"refresh all-gather of {REFRESH_PAYLOAD_BYTES / 1e6:.1f} MB per rank: "
        f"{measured['refresh_gather_seconds'] * 1e3:.1f} ms on loopback"
    )
    run_dir = Path("/tmp") / f"rasft-bench-run-{os.getpid()}"
    run = real_run_shares(launch(["--run", str(run_dir)], {"RASFT_MLX_TIME_COLLECTIVES": "1"}))
    print(
        f"real run (SmolLM2-135M, LoRA r=8, 2 ranks on loopback, {run['steps']} steps): "
        f"all-reduce {run['all_reduce_seconds']:.2f} s of {run['train_seconds']:.1f} s in "
        f"optimizer steps ({run['all_reduce_share_of_train']:.1%}; ranks waited "
        f"{run['waiting_seconds']:.1f} s more for each other); refresh gathers "
        f"{run['gather_seconds']:.2f} s of {run['refresh_seconds']:.1f} s of rollouts and "
        f"reference passes ({run['gather_share_of_refresh']:.1%}); "
        f"{run['gradient_bytes_per_step'] / 1e6:.1f} MB of gradients per step"
    )
    out = Path(__file__).resolve().parent / "results" / "distributed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"measured": measured, "estimates": estimates, "real_run": run}, indent=2)
    )


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker()
    elif "--run" in sys.argv:
        run_worker(sys.argv[sys.argv.index("--run") + 1])
    else:
        main()
