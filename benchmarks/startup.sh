#!/bin/bash
# Wall time of one `dspark-jax generate` command, first with empty start-up caches (no compiled XLA programs,
# no stored scheduler profile) and then again, for plain decoding, the default and DSpark under the hardware
# scheduler, at T = 1 and 0. The caches live in a temporary XDG_CACHE_HOME seeded with the built CPU kernels
# and tokenizers, so the user's own caches are neither used nor touched.
# Results: docs/performance.md, "Start-up of one command".
#     benchmarks/startup.sh ["prompt"] [max new tokens]
set -euo pipefail
cd "$(dirname "$0")/.."
prompt=${1:-"Explain in a few sentences how a bicycle stays upright."}
tokens=${2:-128}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
unset JAX_COMPILATION_CACHE_DIR
for temperature in 1 0; do
  for drafter in "none" "default" "dspark --schedule hardware"; do
    rm -rf "$scratch/dspark-jax"
    mkdir -p "$scratch/dspark-jax"
    cp -r ~/.cache/dspark-jax/packed_linear-*.so ~/.cache/dspark-jax/tokenizers "$scratch/dspark-jax/" 2>/dev/null || true
    for run in first again; do
      start=$EPOCHREALTIME
      # shellcheck disable=SC2086  # $drafter is a drafter and its flags
      XDG_CACHE_HOME=$scratch .venv/bin/dspark-jax generate --chat --prompt "$prompt" --temperature "$temperature" \
          --max-new-tokens "$tokens" --drafter $drafter > "$scratch/$run.txt" 2> "$scratch/$run.err"
      wall=$(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $start }")
      printf 'T=%s %-28s %-6s %6s s   %s\n' "$temperature" "$drafter" "$run" "$wall" "$(tail -1 "$scratch/$run.err")"
    done
    cmp -s "$scratch/first.txt" "$scratch/again.txt" || echo "T=$temperature $drafter: the two runs wrote different text"
  done
done
