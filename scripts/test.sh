#!/usr/bin/env bash
# Set up, then run the test suite (pytest); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
eval "$(.venv/bin/python -m rasft_mlx.blas)"
exec .venv/bin/python -m pytest "$@"
