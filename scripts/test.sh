#!/usr/bin/env bash
# Set up, then run the test suite (pytest); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The export round-trip tests load adapters with transformers + peft on CPU torch.
.venv/bin/python -m pip install -q "torch==2.13.0" "peft==0.21.2" "transformers>=4.45"
eval "$(.venv/bin/python -m rasft_mlx.blas)"
exec .venv/bin/python -m pytest "$@"
