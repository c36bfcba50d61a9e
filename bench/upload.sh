#!/usr/bin/env bash
# Benchmark (not a test): `drake submit` of one large file to a local coordinator,
# by tus (resumable: 32 MiB chunks each with its sha256, written in place and
# completed by a rename) against one multipart request (the ideal: one stream, no
# resumability). Prints the median wall time of each and their ratio, and the
# coordinator's peak RSS. Both on this machine, in this run, alternating.
# Usage: bench/upload.sh [MIB=1024] [RUNS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
MIB="${1:-1024}"
RUNS="${2:-3}"
cargo build -q -p drake
DRAKE="$(pwd)/target/debug/drake"
WORK="$(mktemp -d)"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap 'kill $COORD 2>/dev/null || true; rm -rf "$WORK"' EXIT
head -c $((MIB * 1024 * 1024)) /dev/urandom > "$WORK/upload.bin"
"$DRAKE" coordinator --data "$WORK/data" --listen "127.0.0.1:$PORT" > "$WORK/coordinator.log" 2>&1 &
COORD=$!
for _ in $(seq 50); do [ -s "$WORK/data/admin-token" ] && break; sleep 0.1; done
TOKEN=$(cat "$WORK/data/admin-token")

# Seconds of one submit (each is a new job).
run() { # MODE THRESHOLD
  local start
  start=$(date +%s%N)
  DRAKE_STATE_DIR="$WORK/state" "$DRAKE" submit "$WORK/upload.bin" --coordinator "http://127.0.0.1:$PORT" \
    --token "$TOKEN" --tus-threshold "$2" > /dev/null
  echo "$1 $(( ($(date +%s%N) - start) / 1000000 ))" >> "$WORK/times"
}
for _ in $(seq "$RUNS"); do
  run tus 0
  run multipart 999999999999
  # The jobs (random bytes) fail at their probe; their sources go, so the disk does not fill.
  rm -rf "$WORK/data/storage/jobs"
done
median() { grep "^$1 " "$WORK/times" | awk '{print $2}' | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
TUS=$(median tus)
MULTIPART=$(median multipart)
awk -v t="$TUS" -v m="$MULTIPART" -v mib="$MIB" -v runs="$RUNS" 'BEGIN {
  printf "upload of %d MiB, median of %d: tus %.2f s, multipart %.2f s, ratio tus/multipart %.2f\n", mib, runs, t / 1000, m / 1000, t / m }'
echo "coordinator peak RSS: $(awk '/VmHWM/ {print int($2 / 1024) " MiB"}' /proc/$COORD/status)"
