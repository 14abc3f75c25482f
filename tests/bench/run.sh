#!/usr/bin/env bash
# The benchmark, from one command: builds the programs (release) and the
# Kafka Streams side, starts the local broker if none runs, and runs
# tests/bench/run.py with the given options (see --help). Default: 1,000,000
# users, 3 runs, commit intervals 100 ms and 1 s, both guarantees, restore of
# a 1,000,000-record changelog. Writes docs/benchmarks.md and docs/benchmarks.svg.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
cargo build --release --quiet -p apps -p integration-tests --bins
(cd tests/bench/kstreams && mvn -q -B package -DskipTests)
started=0
if ! tests/broker/kafka.sh status >/dev/null 2>&1; then
  tests/broker/kafka.sh start >/dev/null
  started=1
fi
cleanup() { if [[ $started == 1 ]]; then tests/broker/kafka.sh stop || true; fi; }
trap cleanup EXIT
python3 tests/bench/run.py "$@"
