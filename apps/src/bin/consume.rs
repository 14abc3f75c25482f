//! Step 1: print every record of `new_users` and its parsed email.

use clap::Parser;
use stream_core::serde::BytesSerde;
use stream_dsl::prelude::*;

use apps::cli::{fail, init_logging, run_topology, Common, RunOpts};
use apps::user::User;

/// Print each record as topic:partition:offset: value, then its email (tutorial step 1).
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
    let args = Args::parse();
    let run = args.run;
    let common = args.common.resolve().unwrap_or_else(|e| fail(e));
    let team = common.team().unwrap_or_else(|e| fail(e));
    let b = StreamsBuilder::new();
    b.source_with(&common.new_users(), Consumed::with(BytesSerde, BytesSerde))
        .for_each_with_meta(|m, _k, v| {
            println!(
                "{}:{}:{}: {}",
                m.topic,
                m.partition,
                m.offset,
                String::from_utf8_lossy(v)
            );
            match serde_json::from_slice::<User>(v) {
                Ok(u) => println!("  email: {}", u.email),
                Err(e) => println!("  not a valid user: {e}"),
            }
        });
    run_topology(b, common.streams_config(&team), &run).await;
}
