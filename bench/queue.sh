#!/usr/bin/env bash
# Benchmark (not a test): the coordinator's queue under simulated workers, HTTP
# clients that register, lease, heartbeat, publish a tiny file and complete as
# fast as they can (no transcoding). Three setups: one coordinator on SQLite, one
# on PostgreSQL, two on PostgreSQL behind nginx; 10, 100 and 500 workers each.
# Prints task cycles/s, p50/p99 lease latency and each PostgreSQL setup's ratio to
# SQLite at the same worker count. The simulated workers run on the same machine
# and take their share of its cores.
# Usage: bench/queue.sh [SECONDS=8] [WORKERS=10,100,500]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export BENCH_SECONDS="${1:-8}"
export BENCH_WORKERS="${2:-10,100,500}"
# The sockets of 500 workers and their coordinators.
ulimit -n 65536 2>/dev/null || true
exec cargo bench -p drake --bench queue
