#!/usr/bin/env bash
# Benchmark (not a test): one long 720p source through the `web` ladder, cut in
# time chunks and encoded whole, on W = 1, 2, 4 and 8 emulated machines: each
# worker runs in its own cgroup (v1) with a CPU quota of 2/W cores, so the farm
# has two cores' worth of CPU however many machines it has. Prints, per W and
# mode: time to done, time to first playable, the ideal (the job's CPU seconds,
# measured by cpuacct over every worker and its children, / 2 cores) and the
# ratios the chunking issue asks for. Under each chunked row, the floor of its first
# playable: the earliest any schedule could publish the lowest rung with the CPU its
# chunks, the audio and its join took in that run (each task's CPU read from its
# worker's cgroup). Needs root (cgroups).
# Usage: bench/chunked.sh [SECONDS=600] [WORKER_COUNTS="1 2 4 8"]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source bench/source.sh
secs="${1:-600}"
counts="${2:-1 2 4 8}"
[ "$(id -u)" = 0 ] || { echo "bench/chunked.sh needs root for its cgroups" >&2; exit 1; }

cargo build --release --bin drake >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# BENCH_SOURCE: a source made before (by bench_source, of SECONDS), to skip making it again.
src="${BENCH_SOURCE:-$work/src.mp4}"
[ -n "${BENCH_SOURCE:-}" ] || bench_source "$secs" "$src"
python3 bench/chunked.py "$PWD/target/release/drake" "$src" "$work" $counts
