#!/usr/bin/env bash
# Keep a comparison's results in git so a later session can resume it: copy OUT's results files
# and every run dir's small files (summary, recipe, metrics, eval answers, drift) to DEST, leaving
# out weights, checkpoints, rollout logs and HTML pages (compare rewrites them). `--restore DEST
# OUT` copies them back; compare then reuses each finished run (its summary.json) and trains only
# what is missing.
#   scripts/keep_compare.sh runs/staged-compare docs/results/staged/kept
#   scripts/keep_compare.sh --restore docs/results/staged/kept runs/staged-compare
set -euo pipefail
if [[ "${1:-}" == "--restore" ]]; then
  src=$2 dest=$3
  mkdir -p "$dest"
  cp -r "$src"/. "$dest"/
  echo "restored $(find "$src" -name summary.json | wc -l) finished runs into $dest"
  exit 0
fi
src=$1 dest=$2
mkdir -p "$dest"
small_files() {  # the files of one dir worth keeping
  (cd "$1" && find . -type f -not -path '*/checkpoints/*' -not -path '*/adapters*' \
    -not -path '*/rollouts/*' -not -name '*.safetensors' -not -name '*.npz' -not -name report.html -print0)
}
for entry in "$src"/*; do
  name=$(basename "$entry")
  if [[ -f "$entry" ]]; then
    [[ "$name" == *.html ]] || cp "$entry" "$dest/$name"  # pages: compare rewrites them
  elif [[ -f "$entry/summary.json" || "$name" == base || "$name" == figures ]]; then  # finished runs, base eval, figures
    small_files "$entry" | while IFS= read -r -d '' file; do
      mkdir -p "$dest/$name/$(dirname "$file")"
      cp "$entry/$file" "$dest/$name/$file"
    done
  fi
done
echo "kept $(find "$dest" -name summary.json | wc -l) finished runs in $dest ($(du -sh "$dest" | cut -f1))"
