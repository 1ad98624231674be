#!/usr/bin/env bash
# Issue #31's stress check, outside CI: the two-rank SIGTERM tests N times each (default 20),
# on an idle machine and then with a CPU burner on every core; prints runs, failures and hangs.
#   scripts/stress_stops.sh [N] [both|idle|busy]
set -u
cd "$(dirname "$0")/.."
runs=${1:-20}
which=${2:-both}
eval "$(.venv/bin/python -m rasft_mlx.runtime.blas)"
stress() {
  local label=$1 failed=0 hung=0
  for i in $(seq "$runs"); do
    RASFT_STOP_BOTH_RANKS=1 timeout 300 .venv/bin/python -m pytest -q -p no:cacheprovider \
      tests/test_distributed_signals.py -k one_rank_alone >"/tmp/stress-stops-$label-$i.log" 2>&1
    code=$?
    if [[ $code == 124 ]]; then hung=$((hung + 1)); elif [[ $code != 0 ]]; then failed=$((failed + 1)); fi
  done
  echo "$label: $runs runs x 2 tests (SIGTERM to rank 0, to rank 1): $failed failed, $hung hung"
}
[[ $which != busy ]] && stress idle
[[ $which == idle ]] && exit 0
burners=()
for _ in $(seq "$(nproc)"); do (while :; do :; done) & burners+=($!); done
trap 'kill "${burners[@]}" 2>/dev/null' EXIT
stress busy
