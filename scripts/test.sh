#!/usr/bin/env bash
# Set up, then run the test suite (pytest); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The export round-trip tests load adapters with transformers + peft on CPU torch.
.venv/bin/python -m pip install -q "torch==2.13.0" "peft==0.21.2" "transformers>=4.45"
# The report tests: the trackers read back offline (~25 s to install), and the report opened in
# headless Chromium through selenium (Debian's chromium + chromedriver, ~1 min; skipped without).
.venv/bin/python -m pip install -q -e ".[report-wandb,report-tensorboard,report-trackio]" "selenium>=4.20"
if ! command -v chromedriver >/dev/null && [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
    || echo "warning: could not install chromium; the browser test of the report will be skipped"
fi
eval "$(.venv/bin/python -m rasft_mlx.runtime.blas)"
exec .venv/bin/python -m pytest "$@"
