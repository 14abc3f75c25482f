//! Step 1: print every record of `new_users` and its parsed email.
//!
//! Piped into a reader that stops early (`consume | head`), it stops by
//! itself, as on SIGTERM, at the first record it cannot print; the records
//! read up to then count as consumed, as `head` leaves the rest unread.

use std::io::Write;
use std::sync::Arc;

use clap::Parser;
use stream_core::serde::BytesSerde;
use stream_dsl::prelude::*;

use apps::cli::{fail, init_logging, run_topology_until, Common, RunOpts};
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
    // Set once stdout's reader has gone (`consume | head`): the program
    // then stops as on SIGTERM.
    let reader_gone = Arc::new(tokio::sync::Notify::new());
    let notify = reader_gone.clone();
    let b = StreamsBuilder::new();
    b.source_with(&common.new_users(), Consumed::with(BytesSerde, BytesSerde))
        .for_each_with_meta(move |m, _k, v| {
            let email = match serde_json::from_slice::<User>(v) {
                Ok(u) => format!("  email: {}", u.email),
                Err(e) => format!("  not a valid user: {e}"),
            };
            let mut out = std::io::stdout().lock();
            let written = writeln!(
                out,
                "{}:{}:{}: {}\n{email}",
                m.topic,
                m.partition,
                m.offset,
                String::from_utf8_lossy(v)
            );
            match written {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => notify.notify_one(),
                Err(e) => panic!("cannot write to stdout: {e}"),
            }
        });
    run_topology_until(
        b,
        common.streams_config(&team),
        &run,
        reader_gone.notified(),
    )
    .await;
}
