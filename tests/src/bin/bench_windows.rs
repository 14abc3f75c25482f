//! Memory of emit-final: counts `TOPIC`'s records per key in one-hour
//! tumbling windows with `suppress(until_window_closes)`, in this process,
//! until every record is processed and committed; then prints the open
//! windows waiting in the suppression buffers and this process's peak RSS.
//! Fill the topic with `bench-fill` (N records over K keys: K windows stay
//! open, as their hour has not ended).
//!
//! `bench-windows BOOTSTRAP TOPIC RECORDS STATE_DIR [final|every]`
//!
//! Prints `records=N buffered=B seconds=S peak_rss_mib=M`.
//!
//! `BENCH_CLIENT_CONFIG="key=value;key=value"` passes client settings
//! through `StreamsConfig::extra`; `BENCH_STATE_CACHE_MIB` sets
//! `StreamsConfig::state_cache_bytes` (for measuring what each costs).

use std::time::{Duration, Instant};

use stream_core::runtime::{KafkaStreams, StreamsConfig};
use stream_core::serde::{BytesSerde, StringSerde};
use stream_dsl::prelude::*;

fn peak_rss_mib() -> f64 {
    integration_tests::proc_status_kib("VmHWM").map_or(f64::NAN, |kb| kb as f64 / 1024.0)
}

fn main() {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1)
        }
    };
    rt.block_on(bench());
}

async fn bench() {
    integration_tests::init_tracing("warn");
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: bench-windows BOOTSTRAP TOPIC RECORDS STATE_DIR [final|every]");
        std::process::exit(2);
    }
    let records: u64 = args[3].parse().unwrap_or(0);
    let final_only = args.get(5).is_none_or(|m| m == "final");
    let b = StreamsBuilder::new();
    let table = b
        .source_with(&args[2], Consumed::with(StringSerde, BytesSerde))
        .group_by_key()
        .windowed_by(TimeWindows::of_size(Duration::from_secs(3600)))
        .count(Materialized::as_store("hourly"));
    let table = if final_only {
        table.suppress(Suppressed::until_window_closes())
    } else {
        table
    };
    table
        .to_stream()
        .map(|w, n| (w.key, n.to_string()))
        .to_topic(&format!("{}-hourly", args[2]));
    let topology = match b.build() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    };
    let mut cfg = StreamsConfig::new(&format!("bench-windows-{}", std::process::id()), &args[1]);
    cfg.state_dir = args[4].clone().into();
    if let Ok(pairs) = std::env::var("BENCH_CLIENT_CONFIG") {
        for pair in pairs.split(';').filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once('=') {
                cfg.extra.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
    }
    if let Some(mib) = std::env::var("BENCH_STATE_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        cfg.state_cache_bytes = mib * 1024 * 1024;
    }
    let app = match KafkaStreams::new(topology, cfg) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    };
    let status = app.status();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    let start = Instant::now();
    let (mut processed, mut buffered) = (0, 0);
    while start.elapsed() < Duration::from_secs(1800) && !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tasks = status.tasks();
        processed = tasks.values().map(|t| t.metrics.processed).sum::<u64>();
        buffered = tasks
            .values()
            .map(|t| t.metrics.suppress_buffered)
            .sum::<u64>();
        if processed >= records && (!final_only || buffered > 0) {
            // One more commit interval: the buffers' committed size settles.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            buffered = status
                .tasks()
                .values()
                .map(|t| t.metrics.suppress_buffered)
                .sum();
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let _ = tx.send(());
    if let Ok(Err(e)) = run.await {
        eprintln!("error: {e}");
    }
    println!(
        "records={processed} buffered={buffered} seconds={seconds:.1} peak_rss_mib={:.1}",
        peak_rss_mib()
    );
    if processed < records {
        eprintln!("error: processed {processed} of {records} records within 30 minutes");
        std::process::exit(1);
    }
}
