#!/usr/bin/env bash
# Installs what the tests need and a fresh machine lacks: Debian packages
# (JDK, Maven, build tools, Chromium and ChromeDriver for the status-page
# test), cargo-fuzz for the fuzz targets, mdBook for the book. Both
# tests/run.sh and .ci/run call it, so either works first on a new machine.
# Installs nothing that is already there.
set -euo pipefail

log() { echo "== tests/setup.sh: $*"; }

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || missing+=(zlib1g-dev)
# the status page's browser test drives Debian's Chromium through chromedriver
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "tests/setup.sh: cargo (Rust 1.80+) is required" >&2; exit 1; }
# the fuzz targets (tests/fuzz) run briefly in the test suite
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz 0.13.2"
  cargo install --locked cargo-fuzz --version 0.13.2
fi
# the book (docs/) is built with mdBook
if ! command -v mdbook >/dev/null 2>&1; then
  log "installing mdbook 0.5.4"
  cargo install --locked mdbook --version 0.5.4
fi
