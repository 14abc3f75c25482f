//! The join rows' input. `users` mode writes `N` users (`user-<i>` →
//! `company-<i mod 100>`); `clicks` mode writes `N` clicks naming users
//! `0..USERS` (`user-<j>` → `/page-<i mod 50>`, `j` from a fixed seed), so
//! that every run sees the same clicks. Keys are partitioned as the Java
//! client does. Prints `records=N seconds=S`.
//!
//! `bench-join-input BOOTSTRAP TOPIC users|clicks N [USERS]`

use std::time::Instant;

use rdkafka::producer::BaseRecord;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(0);
    let users: u64 = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    let mode = args.get(3).map(String::as_str);
    if args.len() < 5 || !matches!(mode, Some("users" | "clicks")) {
        eprintln!("usage: bench-join-input BOOTSTRAP TOPIC users|clicks N [USERS]");
        std::process::exit(2);
    }
    let p = integration_tests::bulk_producer(&args[1]);
    let started = Instant::now();
    // A fixed linear congruential sequence: the same clicks every run.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..n {
        let (key, value) = if mode == Some("users") {
            (format!("user-{i}"), format!("company-{}", i % 100))
        } else {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (
                format!("user-{}", (x >> 33) % users),
                format!("/page-{}", i % 50),
            )
        };
        let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&args[2])
            .key(key.as_bytes())
            .payload(value.as_bytes());
        if let Err(e) = integration_tests::send_record(&p, rec) {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    }
    integration_tests::finish_bulk(&p);
    println!("records={n} seconds={:.3}", started.elapsed().as_secs_f64());
}
