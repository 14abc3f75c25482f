//! Prints a team's current watchlist: its latest count per company from the
//! `watchlist` topic, the companies at or over the threshold first, and
//! checks them against a recount of `new_users`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use apps::cli::{fail, init_logging, print_report, Common};
use apps::filters::for_team;
use apps::user::{User, WatchlistEntry};

/// Print the team's watchlist and compare it with a recount of new_users.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Companies at or over this count are listed.
    #[arg(long, default_value_t = 3)]
    threshold: i64,
    /// How many companies to list.
    #[arg(long, default_value_t = 25)]
    top: usize,
    /// Wait up to this many seconds for the watchlist to match the recount.
    #[arg(long, default_value_t = 0)]
    wait_secs: u64,
}

/// A record's key and value, as read (either may be absent).
type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Every record of `topic` up to the current end.
fn read_topic(common: &Common, topic: &str) -> Result<Vec<KeyValue>, String> {
    let mut cfg = common.streams_config("watchlist-report").client_config();
    cfg.set("group.id", "watchlist-report")
        .set("enable.auto.commit", "false");
    let c: BaseConsumer = cfg.create().map_err(|e| e.to_string())?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let parts = md
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0) as i32;
    if parts == 0 {
        return Err(format!("topic {topic} does not exist"));
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..parts {
        let (lo, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        if hi > lo {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
            ends.insert(p, hi);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    c.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ends.is_empty() && Instant::now() < deadline {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                out.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)));
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            None => {}
        }
        // Done by the consumer's position, not by the last record's
        // offset: a topic written with transactions (the watchlist under
        // exactly-once) ends with a commit marker, which is never
        // delivered as a record.
        let positions = c.position().map_err(|e| e.to_string())?;
        ends.retain(|p, end| {
            !matches!(
                positions.find_partition(topic, *p).map(|e| e.offset()),
                Some(Offset::Offset(o)) if o >= *end
            )
        });
    }
    Ok(out)
}

fn main() {
    init_logging();
    let args = Args::parse();
    let common = args.common.resolve().unwrap_or_else(|e| fail(e));
    let team = common.team().unwrap_or_else(|e| fail(e));
    let filter = for_team(&team).unwrap_or_else(|e| fail(e));
    let started = Instant::now();
    loop {
        let mut recount: BTreeMap<String, i64> = BTreeMap::new();
        for (_, v) in read_topic(&common, &common.new_users()).unwrap_or_else(|e| fail(e)) {
            if let Some(u) = v.and_then(|v| serde_json::from_slice::<User>(&v).ok()) {
                if filter.matches(&u) {
                    *recount.entry(u.company_name).or_insert(0) += 1;
                }
            }
        }
        let mut published: BTreeMap<String, i64> = BTreeMap::new();
        for (_, v) in read_topic(&common, &common.watchlist()).unwrap_or_else(|e| fail(e)) {
            if let Some(e) = v
                .and_then(|v| WatchlistEntry::from_json(&v))
                .filter(|e| e.team == team)
            {
                published.insert(e.company, e.flag_count);
            }
        }
        let matches = recount == published;
        if matches || started.elapsed() >= Duration::from_secs(args.wait_secs) {
            let mut top: Vec<(&String, &i64)> = published
                .iter()
                .filter(|(_, n)| **n >= args.threshold)
                .collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let mut report = format!(
                "Watchlist of {team}: {} companies at or over {} flagged users\n{:>6}  company\n",
                top.len(),
                args.threshold,
                "count"
            );
            for (company, n) in top.iter().take(args.top) {
                report.push_str(&format!("{n:>6}  {company}\n"));
            }
            if top.len() > args.top {
                report.push_str(&format!("   ...  and {} more\n", top.len() - args.top));
            }
            report.push_str(&format!(
                "{} companies published; recount of {}: {}\n",
                published.len(),
                common.new_users(),
                if matches {
                    "every count matches"
                } else {
                    "MISMATCH"
                }
            ));
            print_report(&report);
            if !matches {
                std::process::exit(1);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
