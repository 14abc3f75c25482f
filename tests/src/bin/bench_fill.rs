//! Writes `N` records over `KEYS` keys (`key-<i>` → 8-byte big-endian
//! count), keyed and partitioned like the Java client: the input of the
//! benchmark's key-scaling and restore rows (whose changelogs `count-app`
//! writes from it). Prints `records=N seconds=S`.
//!
//! `bench-fill BOOTSTRAP TOPIC N KEYS`

use std::time::Instant;

use rdkafka::producer::BaseRecord;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: bench-fill BOOTSTRAP TOPIC N KEYS");
        std::process::exit(2);
    }
    let n: u64 = args[3].parse().unwrap_or(0);
    let keys: u64 = args[4].parse().unwrap_or(1).max(1);
    let p = integration_tests::bulk_producer(&args[1]);
    let started = Instant::now();
    for i in 0..n {
        let key = format!("key-{}", i % keys);
        let value = (i / keys + 1).to_be_bytes();
        let rec: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&args[2]).key(key.as_bytes()).payload(&value);
        if let Err(e) = integration_tests::send_record(&p, rec) {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    }
    integration_tests::finish_bulk(&p);
    println!("records={n} seconds={:.3}", started.elapsed().as_secs_f64());
}
