#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): every part under its own timeout, all of it under a hard
# 7-minute cap; one JSON, rewritten after each part, at $OUT/gpu_check.json (./gpu_check.json
# without $OUT). On the offline GPU machine, install MLX first: source .gpu/b/activate.sh (see
# BENCHMARKS.md). `--smoke`: tiny shapes on the CPU (about a minute); other arguments pass through.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${OUT:-.}/gpu_check.json
if [[ " $* " == *" --smoke "* ]]; then
  eval "$("$python" -m rasft_mlx.runtime.blas)" # the fast BLAS for MLX's CPU backend
fi
exec timeout -k 10 420 "$python" benchmarks/gpu_check.py --json "$out" "$@"
