"""fp32 matmul throughput of MLX on the CPU: run with and without an optimised BLAS preloaded."""

from __future__ import annotations

import argparse
import json
import os
import time

import mlx.core as mx


def measure_matmul_gflops(n: int, repeats: int) -> float:
    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a @ b)
    start = time.perf_counter()
    for _ in range(repeats):
        mx.eval(a @ b)
    elapsed = time.perf_counter() - start
    return 2 * n**3 * repeats / elapsed / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args()
    gflops = measure_matmul_gflops(args.n, args.repeats)
    preload = os.environ.get("LD_PRELOAD", "")
    row = {
        "n": args.n,
        "gflops": round(gflops, 2),
        "ld_preload": preload,
        "device": str(mx.default_device()),
    }
    print(f"{'n':>6} {'GFLOP/s':>9}  LD_PRELOAD")
    print(f"{args.n:>6} {gflops:>9.1f}  {preload or '-'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
