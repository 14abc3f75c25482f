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

# The fuzz targets build into a directory kept between checkouts (see
# tests/tests/fuzz.rs); each clone adds its own builds of the workspace's
# crates there, so it is emptied once it passes 4 GB.
fuzz_cache="${STREAM_FUZZ_TARGET_DIR:-${HOME:-/nonexistent}/.cache/stream-fuzz-target}"
if [[ -d $fuzz_cache ]] && (( $(du -sk "$fuzz_cache" | cut -f1) > 4 * 1024 * 1024 )); then
  echo "== tests/run.sh: emptying the fuzz build cache $fuzz_cache (over 4 GB)"
  rm -rf "$fuzz_cache"
fi

# The book must build (its Rust snippets run as doctests of the apps crate).
mdbook build docs

# Integration tests run the programs as child processes: build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast "$@"
