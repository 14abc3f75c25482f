//! Counts the committed records of a topic as they arrive (read_committed),
//! from the beginning, until `EXPECTED` have been seen; prints the seconds
//! since `START_EPOCH_MS` when the last one was readable.
//!
//! The reader must not set the pace: librdkafka's consumer waits a second
//! (`fetch.queue.backoff.ms`) whenever its queue holds
//! `queued.min.messages` (100,000) records of a partition, which capped it
//! near 120,000 records a second whenever a program wrote faster than
//! that; it waits 10 ms here, as the ceiling's reader does.
//!
//! `bench-count BOOTSTRAP TOPIC EXPECTED START_EPOCH_MS [TIMEOUT_S]`

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: bench-count BOOTSTRAP TOPIC EXPECTED START_EPOCH_MS [TIMEOUT_S]");
        std::process::exit(2);
    }
    let expected: u64 = args[3].parse().unwrap_or(0);
    let start_ms: u128 = args[4].parse().unwrap_or(0);
    let timeout = Duration::from_secs(args.get(5).and_then(|s| s.parse().ok()).unwrap_or(1800));
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &args[1])
        .set("group.id", format!("bench-count-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("fetch.queue.backoff.ms", "10");
    let c: BaseConsumer = match cc.create() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    };
    if let Err(e) = c.subscribe(&[&args[2]]) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let began = Instant::now();
    let mut seen = 0u64;
    // Room for a key per record expected (up to 16 million): growing a
    // table of millions of keys rehashes every one of them, on the cores
    // the measured program needs.
    let mut latest: HashMap<Vec<u8>, i64> = HashMap::with_capacity(expected.min(1 << 24) as usize);
    while seen < expected {
        if began.elapsed() > timeout {
            eprintln!(
                "error: saw {seen} of {expected} records within {}s",
                timeout.as_secs()
            );
            std::process::exit(1);
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            seen += 1;
            // A count's `flag_count` (a JSON object), else a hash of the
            // whole value.
            let count = m.payload().map(|p| {
                p.starts_with(b"{")
                    .then(|| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .flatten()
                    .and_then(|v| v.get("flag_count").and_then(|n| n.as_i64()))
                    .unwrap_or_else(|| {
                        let mut h = DefaultHasher::new();
                        p.hash(&mut h);
                        h.finish() as i64
                    })
            });
            if let (Some(k), Some(n)) = (m.key(), count) {
                latest.insert(k.to_vec(), n);
            }
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    // Order-independent digest of the latest count (or value) per key.
    let digest = latest.iter().fold(0u64, |acc, (k, n)| {
        let mut h = DefaultHasher::new();
        (k, n).hash(&mut h);
        acc.wrapping_add(h.finish())
    });
    println!(
        "records={seen} seconds={:.3} keys={} digest={digest:016x}",
        (now.saturating_sub(start_ms)) as f64 / 1000.0,
        latest.len()
    );
}
