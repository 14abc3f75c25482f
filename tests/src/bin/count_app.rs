//! A counting application for runtime tests: counts the values of an input
//! topic (group by value → repartition → count) into an output topic.
//!
//! `count-app APP_ID INPUT OUTPUT STATE_DIR [BOOTSTRAP [REPLICATION_FACTOR]]`

use stream_core::runtime::StreamsConfig;
use stream_dsl::prelude::*;

#[tokio::main]
async fn main() {
    integration_tests::init_tracing("info");
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: count-app APP_ID INPUT OUTPUT STATE_DIR [BOOTSTRAP]");
        std::process::exit(2);
    }
    let bootstrap = args
        .get(5)
        .cloned()
        .unwrap_or_else(integration_tests::bootstrap);
    let b = StreamsBuilder::new();
    b.source(&args[2])
        .group_by(|_k, v| v.clone())
        .count(Materialized::as_store("counts"))
        .to_topic(&args[3]);
    let mut cfg = StreamsConfig::new(&args[1], &bootstrap);
    cfg.state_dir = args[4].clone().into();
    cfg.replication_factor = args.get(6).and_then(|r| r.parse().ok());
    integration_tests::run_program(b.build(), cfg).await;
}
