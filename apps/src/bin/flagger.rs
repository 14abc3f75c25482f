//! Steps 2–4: apply the team's filter and produce an action per flagged user.

use clap::Parser;
use stream_dsl::prelude::*;

use apps::actions::flag_users;
use apps::cli::{fail, init_logging, run_topology, Common, RunOpts};
use apps::filters::for_team;

/// Flag users with the team's filter and produce actions (tutorial steps 2–4).
///
/// Run several instances with the same --team: they share the partitions of
/// `new_users` in consumer group team-N, and a stopped instance's
/// partitions move to the others. To run step 5 beside it, use `classroom`,
/// which does steps 3–5 in one program.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    run: RunOpts,
}

/// mimalloc, as in every program of the framework; counting allocations.
#[global_allocator]
static ALLOC: stream_core::alloc_count::Mimalloc = stream_core::alloc_count::MIMALLOC;

#[tokio::main]
async fn main() {
    init_logging();
    let Args { common, run } = Args::parse();
    let common = common.resolve().unwrap_or_else(|e| fail(e));
    let team = common.team().unwrap_or_else(|e| fail(e));
    let filter = for_team(&team).unwrap_or_else(|e| fail(e));
    let b = StreamsBuilder::new();
    flag_users(&b, &common.new_users(), &common.actions(), &team, filter);
    run_topology(b, common.streams_config(&team), &run).await;
}
