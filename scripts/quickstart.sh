#!/usr/bin/env bash
# Set up, then train SmolLM2-135M-Instruct on the synthetic arithmetic task and evaluate it, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/rasft-mlx train recipes/quickstart.yaml "$@"
