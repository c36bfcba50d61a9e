#!/usr/bin/env bash
# Benchmark (not a test): the audio task of a film with several languages
# (`drake transcode --audio`), one thread against a thread a track, and the
# ffmpeg CLI encoding the same tracks in one command, on the same machine in the
# same run. Prints median wall and CPU seconds, the ratio to ffmpeg, and the ratio
# to the ideal: one thread's wall time over min(cores, tracks).
# Usage: bench/audio_tracks.sh [RUNS=3] [SECONDS=300] [TRACKS=4]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
runs="${1:-3}"
secs="${2:-300}"
tracks="${3:-4}"

cargo build --release --bin drake >&2
drake="$PWD/target/release/drake"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cores=$(nproc)

# A small picture and TRACKS languages of coloured noise, each AAC as uploads carry it.
inputs=(-f lavfi -i "testsrc2=s=320x240:r=10:d=$secs")
maps=(-map 0)
colours=(pink brown white blue violet velvet pink brown)
for k in $(seq 0 $((tracks - 1))); do
  inputs+=(-f lavfi -i "anoisesrc=d=$secs:c=${colours[$((k % 8))]}:r=48000:a=0.2:seed=$k")
  maps+=(-map $((k + 1)))
done
ffmpeg -hide_banner -loglevel error -y "${inputs[@]}" "${maps[@]}" -ac 2 -c:v libx264 -preset ultrafast \
  -c:a aac -b:a 160k "$work/src.mp4"

# Runs a command, printing "wall_seconds cpu_seconds".
measure() { /usr/bin/time -f "%e %U %S" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; };
  awk '{print $1, $2 + $3}' "$work/time"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

: > "$work/f"
for i in $(seq "$runs"); do
  measure ffmpeg -hide_banner -loglevel error -y -i "$work/src.mp4" -map 0:a -c:a aac -b:a 128k -ac 2 -ar 48000 \
    -f mp4 "$work/ff.mp4" >> "$work/f"
done
fw=$(cut -d' ' -f1 "$work/f" | median)

printf "%-6s %8s %8s %10s %9s %10s\n" cores wall_s cpu_s ffmpeg_s vs_ffmpeg vs_ideal
for c in 1 "$cores"; do
  : > "$work/d"
  for i in $(seq "$runs"); do
    rm -rf "$work/out"
    measure "$drake" transcode "$work/src.mp4" --rendition 240p --audio --out "$work/out" --cores "$c" >> "$work/d"
  done
  dw=$(cut -d' ' -f1 "$work/d" | median); dc=$(cut -d' ' -f2 "$work/d" | median)
  one="${one:-$dw}"
  awk -v c="$c" -v t="$tracks" -v dw="$dw" -v dc="$dc" -v fw="$fw" -v one="$one" 'BEGIN {
    n = (c < t) ? c : t
    printf "%-6s %8.2f %8.2f %10.2f %9.3f %10.3f\n", c, dw, dc, fw, dw/fw, dw/(one/n) }'
done
echo "($runs runs each, medians; source: ${secs} s, $tracks AAC tracks of noise; ideal: 1 core's wall over min(cores, tracks))"
