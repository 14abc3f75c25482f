//! A stream–global-table join for runtime tests: each user (`USERS`, any
//! key, value = a company id) left-joined with the global table of
//! companies (`COMPANIES`, id → name), written to `OUTPUT` as
//! `<company id>=<name or ?>`.
//!
//! `global-join-app APP_ID COMPANIES USERS OUTPUT STATE_DIR [BOOTSTRAP [HTTP_ADDR]]`

use stream_core::runtime::StreamsConfig;
use stream_dsl::prelude::*;

/// mimalloc, as in every program of the framework; counting allocations.
#[global_allocator]
static ALLOC: stream_core::alloc_count::Mimalloc = stream_core::alloc_count::MIMALLOC;

#[tokio::main]
async fn main() {
    integration_tests::init_tracing("info");
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: global-join-app APP_ID COMPANIES USERS OUTPUT STATE_DIR [BOOTSTRAP]");
        std::process::exit(2);
    }
    let bootstrap = args
        .get(6)
        .cloned()
        .unwrap_or_else(integration_tests::bootstrap);
    let b = StreamsBuilder::new();
    let companies = b.global_table(
        &args[2],
        Consumed::with(StringSerde, StringSerde),
        Materialized::as_store("companies"),
    );
    b.source(&args[3])
        .left_join_global(
            &companies,
            |_, id| id.clone(),
            |id, name| format!("{id}={}", name.unwrap_or_else(|| "?".into())),
        )
        .to_topic(&args[4]);
    let mut cfg = StreamsConfig::new(&args[1], &bootstrap);
    cfg.state_dir = args[5].clone().into();
    cfg.http = args.get(7).and_then(|a| a.parse().ok());
    let topology = match b.build() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let app = match stream_core::runtime::KafkaStreams::new(topology, cfg) {
        Ok(app) => stream_core::instance::Instance::new(app),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = app.run_until_signal().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
