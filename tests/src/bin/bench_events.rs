//! Writes the windowed benchmark's input: `N` records over `KEYS` keys
//! (`key-<i mod KEYS>`, value `x`, partitioned like the Java client) whose
//! timestamps spread evenly over `SPAN_MS` of event time from an
//! hour-aligned start two hours ago, in order; then one record per partition
//! (`end-<p>`, explicitly on partition `p`) one hour later, so that every
//! window of the `N` records closes on every partition. Prints
//! `records=N windows=W outputs_every=E`: `W` distinct (key, window) pairs
//! for tumbling windows of `WINDOW_MS` (the emit-final output), `E` = N +
//! PARTITIONS (the emit-every-update output).
//!
//! `bench-events BOOTSTRAP TOPIC N KEYS SPAN_MS WINDOW_MS PARTITIONS`

use std::collections::HashSet;

use rdkafka::producer::BaseRecord;

/// Where event time starts: the hour two hours before now, so that
/// windows of any size dividing an hour start on its grid, and the broker's
/// time-based retention (7 days by default) keeps the records.
fn epoch_ms() -> i64 {
    const HOUR: i64 = 3_600_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    now - now % HOUR - 2 * HOUR
}

fn send(p: &integration_tests::TestProducer, rec: BaseRecord<'_, [u8], [u8]>) {
    if let Err(e) = integration_tests::send_record(p, rec) {
        eprintln!("error: {e}");
        std::process::exit(1)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize| {
        args.get(i)
            .and_then(|s| s.parse::<i64>().ok())
            .filter(|n| *n > 0)
    };
    let (8, Some(n), Some(keys), Some(span), Some(window), Some(parts)) =
        (args.len(), num(3), num(4), num(5), num(6), num(7))
    else {
        eprintln!("usage: bench-events BOOTSTRAP TOPIC N KEYS SPAN_MS WINDOW_MS PARTITIONS");
        std::process::exit(2);
    };
    let p = integration_tests::bulk_producer(&args[1]);
    let epoch = epoch_ms();
    let mut windows = HashSet::new();
    for i in 0..n {
        let key = format!("key-{}", i % keys);
        let ts = epoch + span * i / n;
        windows.insert((i % keys, ts - ts % window));
        send(
            &p,
            BaseRecord::to(&args[2])
                .key(key.as_bytes())
                .payload(&b"x"[..])
                .timestamp(ts),
        );
    }
    for part in 0..parts {
        let key = format!("end-{part}");
        send(
            &p,
            BaseRecord::to(&args[2])
                .key(key.as_bytes())
                .payload(&b"x"[..])
                .partition(part as i32)
                .timestamp(epoch + span + 3_600_000),
        );
    }
    integration_tests::finish_bulk(&p);
    println!(
        "records={n} windows={} outputs_every={}",
        windows.len(),
        n + parts
    );
}
