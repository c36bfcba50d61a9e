#!/usr/bin/env bash
# Benchmark (not a test): what measuring quality (PSNR of every frame, SSIM of
# sampled frames) costs. The web ladder's four rungs of a 720p source from one
# decode, with and without `--no-quality`, alternating; prints the median CPU
# seconds (user + system) of each and their ratio.
# Usage: bench/quality.sh [RUNS=5] [SECONDS=30]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source bench/source.sh
runs="${1:-5}"
secs="${2:-30}"

cargo build --release --bin drake >&2
drake="$PWD/target/release/drake"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src="$work/src.mp4"
bench_source "$secs" "$src"

# CPU seconds (user + system) of one ladder transcode.
cpu() {
  rm -rf "$work/out"
  local args=()
  for r in 240p 360p 480p 720p; do args+=(--rendition "$r" --out "$work/out/$r"); done
  /usr/bin/time -f "%U %S" -o "$work/time" "$drake" transcode "$src" --profile web "${args[@]}" "$@" >/dev/null 2>"$work/err" \
    || { cat "$work/err" >&2; exit 1; }
  awk '{print $1 + $2}' "$work/time"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

: > "$work/on"; : > "$work/off"
for i in $(seq "$runs"); do
  cpu >> "$work/on"
  cpu --no-quality >> "$work/off"
done
on=$(median < "$work/on"); off=$(median < "$work/off")
echo "measured:   CPU s $(tr '\n' ' ' < "$work/on")(median $on)"
echo "unmeasured: CPU s $(tr '\n' ' ' < "$work/off")(median $off)"
awk -v on="$on" -v off="$off" 'BEGIN {printf "cost of measuring quality: %.2f%% of the encode'\''s CPU time (ratio %.4f)\n", (on / off - 1) * 100, on / off}'
