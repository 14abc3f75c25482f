//! A counting application for runtime tests: counts the values of an input
//! topic (group by value → repartition → count) into an output topic.
//!
//! `count-app APP_ID INPUT OUTPUT STATE_DIR [BOOTSTRAP [REPLICATION_FACTOR]]`
//!
//! `COUNT_APP_STANDBYS=N` sets `num_standby_replicas`; `COUNT_APP_HTTP=ADDR`
//! serves the HTTP status on ADDR; `COUNT_APP_ASSIGNOR=S` sets
//! `partition.assignment.strategy`; `COUNT_APP_BY_KEY=1` counts keys
//! instead (no repartition: one task per input partition);
//! `COUNT_APP_STATE_CACHE_MIB=N` sets `state_cache_bytes` (sled's cache);
//! `COUNT_APP_MAX_BUFFERED=N` sets `max_buffered_changes`;
//! `COUNT_APP_EXACTLY_ONCE=1` processes exactly once;
//! `COUNT_APP_COMMIT_MS=N` sets the commit interval;
//! `COUNT_APP_EXTRA=k=v,k=v` adds client settings (`StreamsConfig::extra`);
//! `COUNT_APP_PANIC_ON=WORD` panics in a processor after counting WORD
//! (after the store change, before the output record);
//! `COUNT_APP_PANIC_IN=make|init|close` adds a pass-through processor
//! after the count whose factory, `init` or `close` panics;
//! `COUNT_APP_RESET=1` (or `latest`) resets the application (input
//! offsets to the earliest, or the latest; internal topics and local state
//! deleted) and exits.

use stream_core::runtime::StreamsConfig;
use stream_dsl::prelude::*;

/// mimalloc, as in every program of the framework; counting allocations.
#[global_allocator]
static ALLOC: stream_core::alloc_count::Mimalloc = stream_core::alloc_count::MIMALLOC;

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
    let grouped = if std::env::var("COUNT_APP_BY_KEY").is_ok_and(|v| v == "1") {
        b.source(&args[2]).group_by_key()
    } else {
        b.source(&args[2]).group_by(|_k, v| v.clone())
    };
    let counts = grouped.count(Materialized::as_store("counts"));
    if let Ok(hook) = std::env::var("COUNT_APP_PANIC_IN") {
        // A pass-through processor whose factory, `init` or `close` panics.
        if hook == "make" {
            counts
                .to_stream()
                .process::<String, i64, _>(
                    || -> PanicIn { panic!("COUNT_APP_PANIC_IN: make") },
                    &[],
                )
                .to_topic(&args[3]);
        } else {
            counts
                .to_stream()
                .process::<String, i64, _>(move || PanicIn(hook.clone()), &[])
                .to_topic(&args[3]);
        }
    } else {
        match std::env::var("COUNT_APP_PANIC_ON") {
            // After the count's store change, before its output record.
            Ok(word) => counts
                .to_stream()
                .peek(move |k, _| {
                    if *k == word {
                        panic!("COUNT_APP_PANIC_ON: counted {word}");
                    }
                })
                .to_topic(&args[3]),
            Err(_) => counts.to_topic(&args[3]),
        }
    }
    let mut cfg = StreamsConfig::new(&args[1], &bootstrap);
    cfg.state_dir = args[4].clone().into();
    cfg.replication_factor = args.get(6).and_then(|r| r.parse().ok());
    if let Some(n) = std::env::var("COUNT_APP_STANDBYS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.num_standby_replicas = n;
    }
    cfg.http = std::env::var("COUNT_APP_HTTP")
        .ok()
        .and_then(|v| v.parse().ok());
    if let Some(mib) = std::env::var("COUNT_APP_STATE_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        cfg.state_cache_bytes = mib << 20;
    }
    if let Some(n) = std::env::var("COUNT_APP_MAX_BUFFERED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.max_buffered_changes = n;
    }
    if std::env::var("COUNT_APP_EXACTLY_ONCE").is_ok_and(|v| v == "1") {
        cfg.processing_guarantee = stream_core::runtime::ProcessingGuarantee::ExactlyOnce;
    }
    if let Some(ms) = std::env::var("COUNT_APP_COMMIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.commit_interval = std::time::Duration::from_millis(ms);
    }
    if let Ok(s) = std::env::var("COUNT_APP_ASSIGNOR") {
        cfg.assignment_strategy = s;
    }
    for kv in std::env::var("COUNT_APP_EXTRA")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((k, v)) = kv.split_once('=') {
            cfg.extra.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    let topology = b.build();
    if let Ok(to) = std::env::var("COUNT_APP_RESET") {
        use stream_core::runtime::reset;
        let to = if to == "latest" {
            reset::ResetTo::Latest
        } else {
            reset::ResetTo::Earliest
        };
        let topology = match topology {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        };
        let plan = reset::plan_reset(&topology, &cfg, to);
        let done = match plan {
            Ok(plan) => reset::execute_reset(&topology, &cfg, &plan).await,
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    integration_tests::run_program(topology, cfg).await;
}

/// Forwards every record; panics in the hook it names (`init`, `close`).
struct PanicIn(String);

impl stream_core::Processor for PanicIn {
    fn process(
        &mut self,
        ctx: &mut stream_core::Context<'_>,
        record: stream_core::Record,
    ) -> Result<(), stream_core::ProcessError> {
        ctx.forward(record);
        Ok(())
    }

    fn init(
        &mut self,
        _ctx: &mut stream_core::Context<'_>,
    ) -> Result<(), stream_core::ProcessError> {
        if self.0 == "init" {
            panic!("COUNT_APP_PANIC_IN: init");
        }
        Ok(())
    }

    fn close(&mut self) {
        if self.0 == "close" {
            panic!("COUNT_APP_PANIC_IN: close");
        }
    }
}
