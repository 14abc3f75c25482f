//! The windowed row of the benchmark: counts `INPUT` per key in tumbling
//! windows of `WINDOW_MS` (no grace), every update (`every`) or one final
//! result per window (`final`, `suppress(until_window_closes)`), and writes
//! `key@start` → `{"flag_count":n}` to `OUTPUT`, as the Kafka Streams side
//! (`bench.Main windowed`) does. At-least-once, 100 ms commits; runs until
//! SIGTERM.
//!
//! `bench-windowed BOOTSTRAP APP_ID INPUT OUTPUT every|final WINDOW_MS STATE_DIR`

use std::time::Duration;

use stream_core::runtime::StreamsConfig;
use stream_core::serde::{BytesSerde, StringSerde};
use stream_dsl::prelude::*;

/// mimalloc, as in every program of the framework; counting allocations.
#[global_allocator]
static ALLOC: stream_core::alloc_count::Mimalloc = stream_core::alloc_count::MIMALLOC;

#[tokio::main]
async fn main() {
    integration_tests::init_tracing("warn");
    let args: Vec<String> = std::env::args().collect();
    let window_ms: Option<u64> = args.get(6).and_then(|w| w.parse().ok());
    let (8, Some(window_ms)) = (args.len(), window_ms) else {
        eprintln!(
            "usage: bench-windowed BOOTSTRAP APP_ID INPUT OUTPUT every|final WINDOW_MS STATE_DIR"
        );
        std::process::exit(2);
    };
    let b = StreamsBuilder::new();
    let table = b
        .source_with(&args[3], Consumed::with(StringSerde, BytesSerde))
        .group_by_key()
        .windowed_by(TimeWindows::of_size(Duration::from_millis(window_ms)))
        .count(Materialized::as_store("windowed-counts"));
    let table = if args[5] == "final" {
        table.suppress(Suppressed::until_window_closes())
    } else {
        table
    };
    table
        .to_stream()
        .map(|w, n| {
            (
                format!("{}@{}", w.key, w.window.start),
                format!("{{\"flag_count\":{n}}}"),
            )
        })
        .to_topic(&args[4]);
    let mut cfg = StreamsConfig::new(&args[2], &args[1]);
    cfg.state_dir = args[7].clone().into();
    cfg.commit_interval = Duration::from_millis(100);
    integration_tests::run_program(b.build(), cfg).await;
}
