#!/usr/bin/env bash
# Runs every test: unit tests, doctests (the book's snippets too), the book
# build, and integration tests against a
# real Kafka broker. Starts the local broker if none answers (and stops it
# again at the end); uses a running one as it is.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

# Install what a fresh machine lacks (mdbook, chromium, cargo-fuzz, …).
[[ ${SETUP_DONE:-} == 1 ]] || bash "$here/setup.sh"

started=0
if ! "$here/broker/kafka.sh" status >/dev/null 2>&1; then
  "$here/broker/kafka.sh" start
  started=1
fi
cleanup() { if [[ $started == 1 ]]; then "$here/broker/kafka.sh" stop || true; fi; }
trap cleanup EXIT

# The book must build (its Rust snippets run as doctests of the apps crate).
mdbook build docs

# Integration tests run the programs as child processes: build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast "$@"
