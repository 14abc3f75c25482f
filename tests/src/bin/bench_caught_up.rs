//! Waits until consumer group `GROUP` has committed offsets at the end of
//! every partition of `TOPIC` (an application has read a table's topic),
//! or exits 1 after `TIMEOUT_S`. Prints `seconds=S`.
//!
//! `bench-caught-up BOOTSTRAP GROUP TOPIC [TIMEOUT_S]`

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: bench-caught-up BOOTSTRAP GROUP TOPIC [TIMEOUT_S]");
        std::process::exit(2);
    }
    let timeout = Duration::from_secs(args.get(4).and_then(|s| s.parse().ok()).unwrap_or(300));
    let c: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &args[1])
        .set("group.id", &args[2])
        .set("enable.auto.commit", "false")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    };
    let topic = &args[3];
    let started = Instant::now();
    loop {
        if started.elapsed() > timeout {
            eprintln!(
                "error: group {} did not catch up on {topic} within {}s",
                args[2],
                timeout.as_secs()
            );
            std::process::exit(1);
        }
        let done = (|| -> Option<bool> {
            let md = c.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
            let parts = md.topics().first()?.partitions().len() as i32;
            let mut tpl = TopicPartitionList::new();
            for p in 0..parts {
                tpl.add_partition(topic, p);
            }
            let committed = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
            for p in 0..parts {
                let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(5)).ok()?;
                let at = match committed.find_partition(topic, p)?.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                if at < high {
                    return Some(false);
                }
            }
            Some(true)
        })();
        if done == Some(true) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("seconds={:.3}", started.elapsed().as_secs_f64());
}
