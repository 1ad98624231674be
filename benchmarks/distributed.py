"""What one run over several ranks exchanges, and how long it takes: 2 ranks over loopback.

Per optimizer step the ranks all-reduce the LoRA gradient sums (one float32 per trainable
parameter) and 5 step scalars; per refresh they all-gather the verified rollouts (JSON) and the
reference log-probs (float32 per response token). This script times those collectives on
loopback for the LoRA sizes of the model shapes in common.py (rank 16 on q/k/v/o/gate/up/down),
then estimates their time for 2-8 machines over 10 GbE and Thunderbolt 5 with the ring
all-reduce's 2 (N-1)/N bytes per rank.

    python benchmarks/distributed.py            # launches its 2 ranks itself
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

    import rasft_mlx.distributed as distributed

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


def ring_seconds(nbytes: int, ranks: int, link: str) -> float:
    steps = 2 * (ranks - 1)
    return (
        steps * LINK_LATENCY_SECONDS[link]
        + 2 * (ranks - 1) / ranks * nbytes / (LINKS_BYTES_PER_SECOND[link])
    )


def main() -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    hostfile = Path("/tmp") / f"rasft-bench-hosts-{os.getpid()}.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in ports]))
    root = str(Path(__file__).resolve().parents[1])
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker"],
            env={
                **os.environ,
                "MLX_RANK": str(r),
                "MLX_HOSTFILE": str(hostfile),
                "PYTHONPATH": root,
            },
            stdout=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    output = processes[0].communicate()[0]
    processes[1].wait()
    measured = json.loads(output.strip().splitlines()[-1])
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
    out = Path(__file__).resolve().parent / "results" / "distributed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"measured": measured, "estimates": estimates}, indent=2))


if __name__ == "__main__":
    worker() if "--worker" in sys.argv else main()
