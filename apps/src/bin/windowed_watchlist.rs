//! The watchlist per time window: flagged users per company per window
//! (event time of the registration), one final count per company and
//! window once it closes, an ALERT per window at the threshold.

use std::time::Duration;

use clap::Parser;
use stream_core::http::TableView;
use stream_core::instance::Instance;
use stream_core::runtime::KafkaStreams;

use apps::cli::{fail, init_logging, Common, Processing, RunOpts};
use apps::filters::for_team;
use apps::windowed_watchlist::{topology, WindowedOptions};

/// Count the team's flagged users per company per time window.
///
/// Windows are tumbling, by the registration's Kafka timestamp, with a
/// grace period for registrations that arrive out of order; a window's
/// final count is written to `<watchlist>-windowed` once stream time
/// passes its end + grace. Registrations later than that are kept in the
/// dead-letter topic with their window.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    run: RunOpts,
    /// Flagged users in one window at which a company raises an ALERT.
    #[arg(long, default_value_t = 3)]
    threshold: i64,
    /// Window size in seconds.
    #[arg(long, default_value_t = 60)]
    window_secs: u64,
    /// Grace period in seconds.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
    /// Output topic (default `<watchlist>-windowed`).
    #[arg(long)]
    output: Option<String>,
    /// Close windows while the input is quiet: after this many seconds
    /// without a registration, stream time follows the wall clock.
    #[arg(long)]
    idle_advance_secs: Option<u64>,
    #[command(flatten)]
    processing: Processing,
}

/// mimalloc, as in every program of the framework; counting allocations.
#[global_allocator]
static ALLOC: stream_core::alloc_count::Mimalloc = stream_core::alloc_count::MIMALLOC;

#[tokio::main]
async fn main() {
    init_logging();
    let args = Args::parse();
    let common = args.common.resolve().unwrap_or_else(|e| fail(e));
    let team = common.team().unwrap_or_else(|e| fail(e));
    let filter = for_team(&team).unwrap_or_else(|e| fail(e));
    let options = WindowedOptions {
        team: team.clone(),
        filter,
        threshold: args.threshold,
        size: Duration::from_secs(args.window_secs.max(1)),
        grace: Duration::from_secs(args.grace_secs),
        new_users: common.new_users(),
        output: args
            .output
            .clone()
            .unwrap_or_else(|| format!("{}-windowed", common.watchlist())),
    };
    let topology = topology(&options).unwrap_or_else(|e| fail(e));
    let mut cfg = common.streams_config(&format!("{team}-windowed"));
    args.processing.apply(&mut cfg).unwrap_or_else(|e| fail(e));
    cfg.idle_advance = args.idle_advance_secs.map(Duration::from_secs);
    args.run.apply(&mut cfg).unwrap_or_else(|e| fail(e));
    tracing::info!(team = %team, filter = filter.rule, window_secs = args.window_secs, grace_secs = args.grace_secs, output = %options.output, "windowed watchlist");
    let view = TableView::new(
        &format!(
            "Windowed watchlist of {team}: flagged users per company and window (open windows)"
        ),
        apps::windowed_watchlist::STORE,
    )
    .highlight_at(args.threshold as f64)
    .limit(200);
    args.run.maintenance(&[(&topology, &cfg)]).await;
    let app =
        Instance::new(KafkaStreams::new(topology, cfg).unwrap_or_else(|e| fail(e))).with_view(view);
    if let Err(e) = app.run_until_signal().await {
        fail(e);
    }
}
