//! Steps 3–5 of a team in one program: actions for flagged users, and the
//! watchlist of companies with flagged users, in the team's one group.

use std::future::Future;

use clap::Parser;
use stream_core::http::TableView;
use stream_core::instance::Instance;
use stream_core::runtime::{shutdown_signal, KafkaStreams, RuntimeError};
use stream_dsl::prelude::*;
use tokio::sync::watch;

use apps::actions::flag_users;
use apps::cli::{fail, init_logging, Common, RunOpts};
use apps::filters::for_team;
use apps::watchlist::{topology, Changelog, Mode, Options, Topics, STORE};

/// A team's steps 3–5 in one program (the classroom's one group per team).
///
/// Flags users with the team's filter and writes an action per flagged
/// user to `actions` (steps 3–4: the partitions of `new_users` are shared
/// out among every running copy of this program in group team-N, so two
/// copies count as "scaled"), and counts flagged users per company into
/// `watchlist` (step 5, with an ALERT at the threshold).
///
/// The count needs every user of the team's filter, and the classroom
/// grants no topic a team could re-key users through, so each copy counts
/// all of `new_users` itself, outside the group, with its position kept in
/// its local state: two copies publish the same, exact counts. A first run
/// with no local state counts from the beginning of `new_users`.
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
    /// Commit interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    commit_interval_ms: u64,
}

/// Runs `app` until `stop` turns true.
fn run_until(
    app: Instance,
    mut stop: watch::Receiver<bool>,
) -> impl Future<Output = Result<(), RuntimeError>> {
    app.run(async move {
        let _ = stop.wait_for(|s| *s).await;
    })
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
    let base = common.streams_config(&team);
    let commit = std::time::Duration::from_millis(args.commit_interval_ms);

    // Steps 3–4: a member of group team-N, sharing the partitions.
    let b = StreamsBuilder::new();
    flag_users(&b, &common.new_users(), &common.actions(), &team, filter);
    let mut actions_cfg = base.clone();
    args.run.apply(&mut actions_cfg).unwrap_or_else(|e| fail(e));
    actions_cfg.http = None;
    actions_cfg.state_dir = base.state_dir.join("actions");
    actions_cfg.commit_interval = commit;
    let actions_topology = b.build().unwrap_or_else(|e| fail(e));

    // Step 5: every partition, outside the group.
    let options = Options {
        threshold: args.threshold,
        mode: Mode::SingleInstance,
        topics: Topics {
            new_users: common.new_users(),
            watchlist: common.watchlist(),
        },
        changelog: Changelog::Watchlist,
        ..Options::new(&team, filter)
    };
    let watchlist_topology = topology(&options).unwrap_or_else(|e| fail(e));
    let mut watchlist_cfg = base.clone();
    args.run
        .apply(&mut watchlist_cfg)
        .unwrap_or_else(|e| fail(e));
    watchlist_cfg.outside_group = true;
    watchlist_cfg.state_dir = base.state_dir.join("watchlist");
    watchlist_cfg.commit_interval = commit;
    tracing::info!(team = %team, filter = filter.rule, threshold = args.threshold, "classroom: actions in group {team}, watchlist from every partition");

    let view = TableView::new(
        &format!("Watchlist of {team}: flagged users per company"),
        STORE,
    )
    .highlight_at(args.threshold as f64)
    .limit(200);
    args.run
        .maintenance(&[
            (&actions_topology, &actions_cfg),
            (&watchlist_topology, &watchlist_cfg),
        ])
        .await;
    let actions =
        Instance::new(KafkaStreams::new(actions_topology, actions_cfg).unwrap_or_else(|e| fail(e)));
    let counts = Instance::new(
        KafkaStreams::new(watchlist_topology, watchlist_cfg).unwrap_or_else(|e| fail(e)),
    )
    .with_view(view);
    let (stop, stopped) = watch::channel(false);
    let a = run_until(actions, stopped.clone());
    let w = run_until(counts, stopped);
    tokio::pin!(a, w);
    // The first to end (a signal or a failure) stops the other.
    let first = tokio::select! {
        _ = shutdown_signal() => None,
        r = &mut a => Some(("actions", r)),
        r = &mut w => Some(("watchlist", r)),
    };
    let _ = stop.send(true);
    let (ra, rw) = match first {
        None => (a.await, w.await),
        Some(("actions", r)) => (r, w.await),
        Some((_, r)) => (a.await, r),
    };
    if let Err(e) = ra.and(rw) {
        fail(e);
    }
}
