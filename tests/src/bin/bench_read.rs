//! The restore benchmark's ceiling: a plain consumer reading every record of
//! a topic (assigned, from the beginning) and doing nothing with them, five
//! times:
//! - with the restore consumer's own settings, one record per poll;
//! - with the same settings, a batch at a time (as restore reads);
//! - with the same settings but fetch responses of up to 16 MiB, which
//!   carry several partitions each (the restore consumer's setting
//!   before its responses were held to one partition's fetch), a batch at
//!   a time;
//! - with the settings restore read with before (a 5,000-record prefetch,
//!   4 MiB fetches, a 10 ms back-off), a batch at a time;
//! - with librdkafka's full prefetch queue and larger fetches, one record
//!   per poll.
//!
//! Prints `records=N restore_settings_s=A batch_s=B wide_s=W earlier_s=C
//! prefetch_s=D seconds=S`, S the fastest, each timed from the
//! assignment: creating the client and reading metadata and watermarks are
//! not counted (a restore's time counts its watermark reads).
//!
//! Every read sets `fetch.queue.backoff.ms` low: librdkafka's default
//! (1 s) idles a partition for a second whenever its prefetch is full,
//! which made the full-prefetch read take 2.2 s for 1,000,000 records the
//! other reads took 0.2 s for.
//!
//! `bench-read BOOTSTRAP TOPIC`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use stream_core::runtime::batch::{read_batch, BatchBuffer, Batched, BATCH};
use stream_core::runtime::RESTORE_FETCH_SETTINGS;

/// mimalloc, as in every program of the framework; counting allocations.
#[global_allocator]
static ALLOC: stream_core::alloc_count::Mimalloc = stream_core::alloc_count::MIMALLOC;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: bench-read BOOTSTRAP TOPIC");
        std::process::exit(2);
    }
    // The restore consumer's own settings (stream-core's `restore_consumer`).
    let mut restore_settings = vec![("isolation.level", "read_committed")];
    restore_settings.extend_from_slice(RESTORE_FETCH_SETTINGS);
    let restore_settings = restore_settings.as_slice();
    let (n, restore_s) = read_all(&args[1], &args[2], restore_settings, false);
    // The same settings, reading batches of records (as restore does).
    let (b, batch_s) = read_all(&args[1], &args[2], restore_settings, true);
    // The same, with responses that carry several partitions' fetches.
    let wide_settings: Vec<(&str, &str)> = restore_settings
        .iter()
        .map(|&(k, v)| {
            if k == "fetch.max.bytes" {
                (k, "16777216")
            } else {
                (k, v)
            }
        })
        .collect();
    let (w, wide_s) = read_all(&args[1], &args[2], &wide_settings, true);
    // The settings restore read with before: a smaller prefetch, bigger
    // fetches.
    let (e, earlier_s) = read_all(
        &args[1],
        &args[2],
        &[
            ("isolation.level", "read_committed"),
            ("fetch.wait.max.ms", "10"),
            ("max.partition.fetch.bytes", "4194304"),
            ("fetch.max.bytes", "16777216"),
            ("queued.max.messages.kbytes", "32768"),
            ("queued.min.messages", "5000"),
            ("fetch.queue.backoff.ms", "10"),
        ],
        true,
    );
    // librdkafka's full prefetch queue (100,000 records, 64 MiB) and
    // larger fetches.
    let (m, prefetch_s) = read_all(
        &args[1],
        &args[2],
        &[
            ("fetch.wait.max.ms", "10"),
            ("max.partition.fetch.bytes", "8388608"),
            ("fetch.max.bytes", "67108864"),
            ("fetch.queue.backoff.ms", "1"),
        ],
        false,
    );
    if [b, w, e, m].iter().any(|&x| x != n) {
        fail(&format!(
            "the five reads saw {n}, {b}, {w}, {e} and {m} records"
        ));
    }
    println!(
        "records={n} restore_settings_s={restore_s:.3} batch_s={batch_s:.3} wide_s={wide_s:.3} earlier_s={earlier_s:.3} prefetch_s={prefetch_s:.3} seconds={:.3} poll_errors={}",
        restore_s.min(batch_s).min(wide_s).min(earlier_s).min(prefetch_s),
        POLL_ERRORS.count()
    );
}

/// Reads every record of `topic` once with `settings`; returns the records
/// read and the seconds from the assignment to the last record.
fn read_all(bootstrap: &str, topic: &str, settings: &[(&str, &str)], batches: bool) -> (u64, f64) {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-read-{}", std::process::id()))
        .set("enable.auto.commit", "false");
    for (k, v) in settings {
        cc.set(*k, *v);
    }
    let c: BaseConsumer = cc.create().unwrap_or_else(|e| fail(&e.to_string()));
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| fail(&e.to_string()));
    let parts = md.topics()[0].partitions().len() as i32;
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        let (lo, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap_or_else(|e| fail(&e.to_string()));
        if hi > lo {
            ends.insert(p, hi);
            let _ = tpl.add_partition_offset(topic, p, Offset::Beginning);
        }
    }
    let started = Instant::now();
    c.assign(&tpl).unwrap_or_else(|e| fail(&e.to_string()));
    let mut n = 0u64;
    let mut buf = BatchBuffer::default();
    while batches && !ends.is_empty() {
        let batch = read_batch(&c, &mut buf, BATCH, Duration::from_millis(100));
        for item in batch.iter() {
            match item {
                Batched::Record(m) => {
                    n += 1;
                    if m.offset() + 1 >= ends.get(&m.partition()).copied().unwrap_or(i64::MAX) {
                        ends.remove(&m.partition());
                    }
                }
                Batched::Error { code, .. } => POLL_ERRORS.note(topic, &code),
            }
        }
    }
    while !ends.is_empty() {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                n += 1;
                if m.offset() + 1 >= ends.get(&m.partition()).copied().unwrap_or(i64::MAX) {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => POLL_ERRORS.note(topic, &e),
            None => {}
        }
    }
    (n, started.elapsed().as_secs_f64())
}

/// Errors the five reads met instead of records.
static POLL_ERRORS: integration_tests::PollErrors = integration_tests::PollErrors::new();

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}
