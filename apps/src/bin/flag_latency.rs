//! How long after registering was each user flagged: a windowed join of
//! `actions` with `new_users`.

use std::time::Duration;

use clap::Parser;
use stream_core::instance::Instance;
use stream_core::runtime::KafkaStreams;

use apps::cli::{fail, init_logging, Common, Processing, RunOpts};
use apps::latency::{topology, LatencyOptions};

/// Join each action with the registrations of the user it names that lie
/// within the window, and write the time between them to
/// `<actions>-latency`.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    run: RunOpts,
    /// Output topic (default `<actions>-latency`).
    #[arg(long)]
    output: Option<String>,
    /// How far apart (seconds) a registration and an action may be.
    #[arg(long, default_value_t = 600)]
    window_secs: u64,
    /// Grace period in seconds.
    #[arg(long, default_value_t = 60)]
    grace_secs: u64,
    #[command(flatten)]
    processing: Processing,
}

#[tokio::main]
async fn main() {
    init_logging();
    let args = Args::parse();
    let common = args.common.resolve().unwrap_or_else(|e| fail(e));
    let team = common.team().unwrap_or_else(|e| fail(e));
    let options = LatencyOptions {
        new_users: common.new_users(),
        actions: common.actions(),
        output: args
            .output
            .clone()
            .unwrap_or_else(|| format!("{}-latency", common.actions())),
        window: Duration::from_secs(args.window_secs),
        grace: Duration::from_secs(args.grace_secs),
    };
    let topology = topology(&options).unwrap_or_else(|e| fail(e));
    let mut cfg = common.streams_config(&format!("{team}-latency"));
    args.processing.apply(&mut cfg).unwrap_or_else(|e| fail(e));
    args.run.apply(&mut cfg).unwrap_or_else(|e| fail(e));
    tracing::info!(new_users = %options.new_users, actions = %options.actions, output = %options.output, window_secs = args.window_secs, "flag latency");
    args.run.maintenance(&[(&topology, &cfg)]).await;
    let app = Instance::new(KafkaStreams::new(topology, cfg).unwrap_or_else(|e| fail(e)));
    if let Err(e) = app.run_until_signal().await {
        fail(e);
    }
}
