//! Steps 2–4: apply the team's filter and produce an action per flagged user.

use clap::Parser;
use stream_dsl::prelude::*;

use apps::cli::{fail, init_logging, run_topology, Common, RunOpts};
use apps::filters::for_team;
use apps::user::{Action, User};

/// Flag users with the team's filter and produce actions (tutorial steps 2–4).
///
/// Run several instances with the same --team: they share the partitions of
/// `new_users` in consumer group team-N, and a stopped instance's
/// partitions move to the others.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    run: RunOpts,
}

#[tokio::main]
async fn main() {
    init_logging();
    let Args { common, run } = Args::parse();
    let common = common.resolve().unwrap_or_else(|e| fail(e));
    let team = common.team().unwrap_or_else(|e| fail(e));
    let filter = for_team(&team).unwrap_or_else(|e| fail(e));
    let b = StreamsBuilder::new();
    let t = team.clone();
    b.source_with(&common.new_users(), Consumed::<String, User>::json())
        .filter(move |_, u| filter.matches(u))
        .map_values(move |u| Action {
            customer: u.email,
            action_type: filter.action_type.into(),
            reason: filter.reason.into(),
            team: t.clone(),
        })
        .peek(|_, a| tracing::info!(customer = %a.customer, reason = %a.reason, "flagged"))
        .to_topic_with(&common.actions(), Produced::<String, Action>::json());
    run_topology(b, common.streams_config(&team), &run).await;
}
