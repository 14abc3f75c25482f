//! A stream–global-table join for runtime tests: each user (`USERS`, any
//! key, value = a company id) left-joined with the global table of
//! companies (`COMPANIES`, id → name), written to `OUTPUT` as
//! `<company id>=<name or ?>`.
//!
//! `global-join-app APP_ID COMPANIES USERS OUTPUT STATE_DIR [BOOTSTRAP]`

use stream_core::runtime::StreamsConfig;
use stream_dsl::prelude::*;

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
    integration_tests::run_program(b.build(), cfg).await;
}
