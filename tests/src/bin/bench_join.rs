//! The join row of the benchmark: every click (`CLICKS`, keyed by user)
//! joined with its user's row of the table read from `USERS` (inner
//! stream–table join), written to `OUTPUT` as `{"user","page","company"}`,
//! as the Kafka Streams side (`bench.Main join`) does. At-least-once,
//! 100 ms commits; runs until SIGTERM.
//!
//! `bench-join BOOTSTRAP APP_ID USERS CLICKS OUTPUT STATE_DIR`

use std::time::Duration;

use stream_core::runtime::StreamsConfig;
use stream_dsl::prelude::*;

/// mimalloc, as in every program of the framework; counting allocations.
#[global_allocator]
static ALLOC: stream_core::alloc_count::Mimalloc = stream_core::alloc_count::MIMALLOC;

#[tokio::main]
async fn main() {
    integration_tests::init_tracing("warn");
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: bench-join BOOTSTRAP APP_ID USERS CLICKS OUTPUT STATE_DIR");
        std::process::exit(2);
    }
    let b = StreamsBuilder::new();
    let users = b.table(
        &args[3],
        Consumed::with(StringSerde, StringSerde),
        Materialized::as_store("users"),
    );
    b.source(&args[4])
        .join(&users, |page, company| (page, company))
        .map(|user, (page, company)| {
            // Written by hand, field order fixed, as the Java side writes it.
            let v = format!(r#"{{"user":"{user}","page":"{page}","company":"{company}"}}"#);
            (user, v)
        })
        .to_topic(&args[5]);
    let mut cfg = StreamsConfig::new(&args[2], &args[1]);
    cfg.state_dir = args[6].clone().into();
    cfg.commit_interval = Duration::from_millis(100);
    integration_tests::run_program(b.build(), cfg).await;
}
