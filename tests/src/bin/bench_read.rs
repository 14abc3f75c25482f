//! The restore benchmark's ceiling: a plain consumer reading every record of
//! a topic (assigned, from the beginning, fetches at least as large as the
//! restore consumer's and librdkafka's full prefetch queue) and doing
//! nothing with them. Prints `records=N seconds=S`, timed from the
//! assignment: creating the client and reading metadata and watermarks are
//! not counted (a restore's time counts its watermark reads).
//!
//! `bench-read BOOTSTRAP TOPIC`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// mimalloc, as in every program of the framework; counting allocations.
#[global_allocator]
static ALLOC: stream_core::alloc_count::Mimalloc = stream_core::alloc_count::MIMALLOC;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: bench-read BOOTSTRAP TOPIC");
        std::process::exit(2);
    }
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &args[1])
        .set("group.id", format!("bench-read-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("max.partition.fetch.bytes", "8388608")
        .set("fetch.max.bytes", "67108864");
    let c: BaseConsumer = cc.create().unwrap_or_else(|e| fail(&e.to_string()));
    let md = c
        .fetch_metadata(Some(&args[2]), Duration::from_secs(10))
        .unwrap_or_else(|e| fail(&e.to_string()));
    let parts = md.topics()[0].partitions().len() as i32;
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        let (lo, hi) = c
            .fetch_watermarks(&args[2], p, Duration::from_secs(10))
            .unwrap_or_else(|e| fail(&e.to_string()));
        if hi > lo {
            ends.insert(p, hi);
            let _ = tpl.add_partition_offset(&args[2], p, Offset::Beginning);
        }
    }
    let started = Instant::now();
    c.assign(&tpl).unwrap_or_else(|e| fail(&e.to_string()));
    let mut n = 0u64;
    while !ends.is_empty() {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            n += 1;
            if m.offset() + 1 >= ends.get(&m.partition()).copied().unwrap_or(i64::MAX) {
                ends.remove(&m.partition());
            }
        }
    }
    println!("records={n} seconds={:.3}", started.elapsed().as_secs_f64());
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}
