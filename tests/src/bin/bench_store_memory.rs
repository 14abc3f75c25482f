//! Resident memory of a sled state store as its number of entries grows,
//! without Kafka: which part of a program's peak RSS the store takes, and
//! whether sled's page cache bound (`state_cache_bytes`, sled's
//! `cache_capacity`) bounds it.
//!
//! Writes ENTRIES distinct keys (28-byte company-like names, as the
//! watchlist's) with VALUE_BYTES-byte values into one store of four tasks,
//! in commits of 3,000 changes as the stream thread hands them over, and
//! samples the process's RSS. `backend` writes through the framework's
//! [`SledBackend`] (state writer thread, redo record, checkpoint, sync after
//! each commit); `sled` inserts into plain sled trees with the same cache and
//! flushes after each commit, so the two separate sled's share from ours.
//!
//! Prints `mode=M entries=N value_bytes=V cache_mib=C rss_start_kib=A
//! rss_end_kib=B peak_rss_kib=P bytes_per_entry=E seconds=S`, with E the
//! growth of RSS from start to end per entry.
//!
//! `bench-store-memory ENTRIES VALUE_BYTES CACHE_MIB backend|sled`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use stream_core::store::{Changes, Checkpoint, StateBackend, StateDir};

/// mimalloc, as in every program of the framework.
#[global_allocator]
static ALLOC: stream_core::alloc_count::Mimalloc = stream_core::alloc_count::MIMALLOC;

/// Changes per commit (about what a 100 ms commit of the watchlist holds).
const COMMIT: u64 = 3_000;
/// Tasks sharing the state directory, each with its own tree.
const TASKS: u64 = 4;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed = (args.len() == 5)
        .then(|| {
            Some((
                args[1].parse::<u64>().ok()?,
                args[2].parse::<usize>().ok()?,
                args[3].parse::<u64>().ok()?,
                args[4].clone(),
            ))
        })
        .flatten();
    let Some((entries, value_bytes, cache_mib, mode)) = parsed else {
        fail("usage: bench-store-memory ENTRIES VALUE_BYTES CACHE_MIB backend|sled");
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&format!("temporary directory: {e}")));
    let rss_start = rss_kib();
    let started = Instant::now();
    let mut peak = rss_start;
    let mut sample = || peak = peak.max(rss_kib());
    match mode.as_str() {
        "backend" => {
            let (state, _) = StateDir::open_with_cache(dir.path(), "bench", cache_mib << 20)
                .unwrap_or_else(|e| fail(&format!("open the state directory: {e}")));
            let mut backends: Vec<_> = (0..TASKS)
                .map(|t| {
                    state
                        .backend(&format!("0_{t}"), &["counts".to_string()])
                        .unwrap_or_else(|e| fail(&format!("open task 0_{t}: {e}")))
                })
                .collect();
            let mut pending: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>> =
                vec![BTreeMap::new(); TASKS as usize];
            for i in 0..entries {
                let (task, key) = key_of(i);
                pending[task].insert(key, Some(value(i, value_bytes)));
                if (i + 1) % COMMIT == 0 || i + 1 == entries {
                    for (t, backend) in backends.iter_mut().enumerate() {
                        let changes: Changes = vec![std::mem::take(&mut pending[t])];
                        backend
                            .start_commit(Arc::new(changes), Checkpoint::default())
                            .wait()
                            .unwrap_or_else(|e| fail(&format!("commit: {e}")));
                    }
                    state.sync().unwrap_or_else(|e| fail(&format!("sync: {e}")));
                    sample();
                }
            }
        }
        "sled" => {
            let db = sled::Config::new()
                .path(dir.path().join("sled"))
                .cache_capacity(cache_mib << 20)
                .flush_every_ms(Some(1000))
                .open()
                .unwrap_or_else(|e| fail(&format!("open sled: {e}")));
            let trees: Vec<sled::Tree> = (0..TASKS)
                .map(|t| {
                    db.open_tree(format!("store/counts/0_{t}"))
                        .unwrap_or_else(|e| fail(&format!("open tree: {e}")))
                })
                .collect();
            for i in 0..entries {
                let (task, key) = key_of(i);
                trees[task]
                    .insert(key, value(i, value_bytes))
                    .unwrap_or_else(|e| fail(&format!("insert: {e}")));
                if (i + 1) % COMMIT == 0 || i + 1 == entries {
                    db.flush().unwrap_or_else(|e| fail(&format!("flush: {e}")));
                    sample();
                }
            }
        }
        other => fail(&format!("unknown mode `{other}`: backend or sled")),
    }
    let rss_end = rss_kib();
    let peak = peak.max(rss_end);
    println!(
        "mode={mode} entries={entries} value_bytes={value_bytes} cache_mib={cache_mib} rss_start_kib={rss_start} rss_end_kib={rss_end} peak_rss_kib={peak} bytes_per_entry={} seconds={:.1}",
        (rss_end.saturating_sub(rss_start) * 1024) / entries.max(1),
        started.elapsed().as_secs_f64()
    );
}

/// The task and key of entry `i`: a 28-byte name, spread over the tasks
/// and written in no particular key order.
fn key_of(i: u64) -> (usize, Vec<u8>) {
    let x = i
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
        .wrapping_add(0x6A09_E667_F3BC_C909);
    (
        (x % TASKS) as usize,
        format!("Company {x:016x} Ltd").into_bytes(),
    )
}

/// A value of `len` bytes (at least the entry's number).
fn value(i: u64, len: usize) -> Vec<u8> {
    let mut v = i.to_be_bytes().to_vec();
    v.resize(len.max(8), 7);
    v
}

/// The process's resident memory now, in KiB.
fn rss_kib() -> u64 {
    integration_tests::proc_status_kib("VmRSS").unwrap_or(0)
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-store-memory: {msg}");
    std::process::exit(1);
}
