//! Short cargo-fuzz runs of the fuzz targets in `tests/fuzz/` (the JSON
//! deserialization path and config parsing), from the committed seeds.
//! Longer runs by hand: see docs/testing.md.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the fuzz targets are built: a directory kept between checkouts
/// (`STREAM_FUZZ_TARGET_DIR`, else `~/.cache/stream-fuzz-target`), so that
/// their dependencies (librdkafka's C build above all) are compiled once
/// per machine rather than once per clone; `tests/run.sh` empties it when
/// it passes 4 GB. Without a home directory, the crate's own `target`.
fn fuzz_target_dir(fuzz_dir: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("STREAM_FUZZ_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME") {
        Some(home) => Path::new(&home).join(".cache/stream-fuzz-target"),
        None => fuzz_dir.join("target"),
    }
}

/// Runs `target` for `seconds` with libFuzzer; panics on a finding.
fn fuzz(target: &str, seconds: u32) {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let work = tempfile::tempdir().unwrap();
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/fuzz-artifacts")
        .join(target);
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new("cargo")
        .current_dir(&fuzz_dir)
        // cargo-fuzz instruments with -Z flags; this lets the stable toolchain accept them
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "--fuzz-dir", ".", "-O", target])
        .arg("--target-dir")
        .arg(fuzz_target_dir(&fuzz_dir))
        .arg(work.path())
        .arg(fuzz_dir.join("seeds").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .output()
        .expect("cargo fuzz (install with `cargo install cargo-fuzz`; .ci/run does)");
    let log = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    assert!(
        out.status.success(),
        "fuzz target {target} found a failure (inputs in {}):\n{}",
        artifacts.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    let runs: u64 = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("Done ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(
        runs > 1_000,
        "{target}: only {runs} runs in {seconds}s:\n{log}"
    );
    eprintln!("{target}: {runs} runs in {seconds}s, no failure");
}

#[test]
fn should_survive_fuzzed_json_input() {
    fuzz("json_input", 20);
}

#[test]
fn should_survive_fuzzed_config_files() {
    fuzz("config", 20);
}
