//! Enrich `actions` with the user each names.

use clap::Parser;
use stream_core::http::TableView;
use stream_core::instance::Instance;
use stream_core::runtime::KafkaStreams;

use apps::cli::{fail, init_logging, Common, Processing, RunOpts};
use apps::enrich::{topology, EnrichOptions};

/// Join every action with the registration of the user it names.
///
/// Registrations (`new_users`) become a table keyed by email; each action
/// is written to `<actions>-enriched` with the user's name, company and
/// profession, or `user: null` when the user is not registered (yet).
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    run: RunOpts,
    /// Output topic (default `<actions>-enriched`).
    #[arg(long)]
    output: Option<String>,
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
    let options = EnrichOptions {
        new_users: common.new_users(),
        actions: common.actions(),
        output: args
            .output
            .clone()
            .unwrap_or_else(|| format!("{}-enriched", common.actions())),
    };
    let topology = topology(&options).unwrap_or_else(|e| fail(e));
    let mut cfg = common.streams_config(&format!("{team}-enrich"));
    args.processing.apply(&mut cfg).unwrap_or_else(|e| fail(e));
    args.run.apply(&mut cfg).unwrap_or_else(|e| fail(e));
    tracing::info!(new_users = %options.new_users, actions = %options.actions, output = %options.output, "enriching actions");
    let view = TableView::new("Users by email", apps::enrich::USERS_STORE).limit(100);
    args.run.maintenance(&[(&topology, &cfg)]).await;
    let app =
        Instance::new(KafkaStreams::new(topology, cfg).unwrap_or_else(|e| fail(e))).with_view(view);
    if let Err(e) = app.run_until_signal().await {
        fail(e);
    }
}
