//! Step 5: count flagged users per company; every change goes to the
//! compacted `watchlist` topic, which is also the count store's changelog.

use clap::Parser;
use stream_core::runtime::{KafkaStreams, RuntimeError};

use apps::cli::{fail, init_logging, Common, RunOpts};
use apps::filters::for_team;
use apps::watchlist::{topology, Changelog, Mode, Options, Topics, STORE};
use stream_core::http::TableView;
use stream_core::instance::Instance;

/// Watch companies with many flagged users (tutorial step 5).
///
/// Counts the team's flagged users per company in a local sled store,
/// publishes every count change to `watchlist` as
/// {"team","company","flag_count"} keyed by the company, logs an ALERT when
/// a company reaches the threshold, and after a crash restores the counts
/// from `watchlist` (only this team's records) before processing new users.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    run: RunOpts,
    /// Flagged users at which a company raises an ALERT.
    #[arg(long, default_value_t = 3)]
    threshold: i64,
    /// Count without a repartition topic, all partitions in one task. For
    /// clusters where the repartition topic cannot be created. Correct only
    /// while this is the group's only instance: it stops if another joins.
    #[arg(long)]
    single_instance: bool,
    /// Start from empty counts when there is no local state and `watchlist`
    /// cannot be read (counts then restart at zero).
    #[arg(long)]
    allow_empty_state: bool,
    /// Log the counts to a private compacted changelog topic instead of the
    /// shared `watchlist` (where another team's later record for a company
    /// can compact ours away). Needs the right to create that topic.
    #[arg(long)]
    private_changelog: bool,
    /// at-least-once or exactly-once (needs transactional-id rights).
    #[arg(long, default_value = "at-least-once")]
    guarantee: String,
    /// Commit interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    commit_interval_ms: u64,
}

/// mimalloc, counting allocations (reported in `/metrics` and at exit; the
/// benchmark reads allocations per record from it).
#[global_allocator]
static ALLOC: stream_core::alloc_count::Mimalloc = stream_core::alloc_count::MIMALLOC;

#[tokio::main]
async fn main() {
    init_logging();
    let args = Args::parse();
    let common = args.common.resolve().unwrap_or_else(|e| fail(e));
    let team = common.team().unwrap_or_else(|e| fail(e));
    let filter = for_team(&team).unwrap_or_else(|e| fail(e));
    let mode = if args.single_instance {
        Mode::SingleInstance
    } else {
        Mode::Repartition
    };
    let options = Options {
        threshold: args.threshold,
        mode,
        topics: Topics {
            new_users: common.new_users(),
            watchlist: common.watchlist(),
        },
        changelog: if args.private_changelog {
            Changelog::Private
        } else {
            Changelog::Watchlist
        },
        ..Options::new(&team, filter)
    };
    let topology = topology(&options).unwrap_or_else(|e| fail(e));
    let mut cfg = common.streams_config(&team);
    cfg.processing_guarantee = args.guarantee.parse().unwrap_or_else(|e: String| fail(e));
    cfg.single_instance = args.single_instance;
    cfg.allow_empty_state = args.allow_empty_state;
    cfg.commit_interval = std::time::Duration::from_millis(args.commit_interval_ms);
    args.run.apply(&mut cfg).unwrap_or_else(|e| fail(e));
    tracing::info!(team = %team, filter = filter.rule, threshold = args.threshold, ?mode, "watchlist");
    let view = TableView::new(
        &format!("Watchlist of {team}: flagged users per company"),
        STORE,
    )
    .highlight_at(args.threshold as f64)
    .limit(200);
    args.run.maintenance(&[(&topology, &cfg)]).await;
    let app =
        Instance::new(KafkaStreams::new(topology, cfg).unwrap_or_else(|e| fail(e))).with_view(view);
    let status = app.streams().status();
    let result = app.run_until_signal().await;
    if let Some(n) = stream_core::alloc_count::allocations() {
        tracing::info!(
            allocations = n,
            processed = status.processed_total(),
            "allocations since start"
        );
    }
    match result {
        Ok(()) => {}
        Err(e @ RuntimeError::NotAuthorized { .. })
            if !args.single_instance && e.to_string().contains("repartition") =>
        {
            fail(format!(
                "{e}. Or run one instance with --single-instance, which needs no repartition topic"
            ))
        }
        Err(e) => fail(e),
    }
}
