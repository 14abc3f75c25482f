//! The watchlist's Kafka traffic written with the plain rdkafka client: what
//! the topology's topics cost without any framework. Beside the ceiling
//! (`bench-ceiling`, which reads the users and produces one record per
//! flagged user), this program does the rest of what the watchlist sends
//! through Kafka, as a program would that counts in memory:
//!
//! - each flagged user of INPUT (team-1's filter) is produced to REPARTITION
//!   keyed by its company, with no value;
//! - each record read back from REPARTITION adds one to its company's count
//!   in a hash map, and produces the new count to CHANGELOG (8 bytes,
//!   big-endian) and `{"team","company","flag_count"}` to OUTPUT.
//!
//! It keeps no state on disk, commits no positions, writes no headers and
//! drops nothing it has seen twice: it is neither durable nor exact after a
//! crash. It runs until stopped; the benchmark times it as it times the
//! frameworks, until OUTPUT holds a count for every flagged user, and checks
//! its counts by the same digest. A record the broker did not acknowledge
//! stops it with status 1, naming the first (`integration_tests::DeliveryCheck`).
//!
//! Its clients are set as the ceiling's: producer batching 100 ms (as both
//! frameworks'), consumer with librdkafka's default prefetch but for the
//! wait after a full queue (`integration_tests::plain_consumer_config`).
//!
//! With `THREADS` > 1, that many threads each read their share of the
//! partitions of both topics (partition `p` with `p % THREADS == t`, as a
//! stream thread reads its tasks' partitions) with their own consumer and
//! produce through one shared producer.
//!
//! `bench-raw-watchlist BOOTSTRAP INPUT REPARTITION CHANGELOG OUTPUT [THREADS]`

use std::collections::HashMap;
use std::time::Duration;

use apps::filters::for_team;
use apps::user::{User, WatchlistEntry};
use integration_tests::TestProducer;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use stream_core::serde::{JsonSerde, Serde};

/// mimalloc, as in every program of the framework.
#[global_allocator]
static ALLOC: stream_core::alloc_count::Mimalloc = stream_core::alloc_count::MIMALLOC;

/// The topics one run reads and writes.
struct Topics<'a> {
    input: &'a str,
    repartition: &'a str,
    changelog: &'a str,
    output: &'a str,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !(6..=7).contains(&args.len()) {
        eprintln!(
            "usage: bench-raw-watchlist BOOTSTRAP INPUT REPARTITION CHANGELOG OUTPUT [THREADS]"
        );
        std::process::exit(2);
    }
    let bootstrap = &args[1];
    let topics = Topics {
        input: &args[2],
        repartition: &args[3],
        changelog: &args[4],
        output: &args[5],
    };
    let threads: i32 = args.get(6).and_then(|t| t.parse().ok()).unwrap_or(1).max(1);
    let producer =
        integration_tests::checked_producer(&integration_tests::plain_producer_config(bootstrap));
    std::thread::scope(|s| {
        for t in 0..threads {
            let (producer, topics) = (&producer, &topics);
            s.spawn(move || run_share(bootstrap, topics, producer, t, threads));
        }
    });
}

/// Reads partitions `p` with `p % threads == share` of the input and the
/// repartition topic from their beginning, forever.
fn run_share(
    bootstrap: &str,
    topics: &Topics<'_>,
    producer: &TestProducer,
    share: i32,
    threads: i32,
) {
    let consumer: BaseConsumer = integration_tests::plain_consumer_config(
        bootstrap,
        &format!("raw-watchlist-{}", std::process::id()),
    )
    .create()
    .unwrap_or_else(|e| fail(&e.to_string()));
    let mut tpl = TopicPartitionList::new();
    for topic in [topics.input, topics.repartition] {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap_or_else(|e| fail(&e.to_string()));
        let parts = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
        for p in (0..parts).filter(|p| p % threads == share) {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap_or_else(|e| fail(&e.to_string()));
        }
    }
    consumer
        .assign(&tpl)
        .unwrap_or_else(|e| fail(&e.to_string()));
    let filter = for_team("team-1").unwrap_or_else(|e| fail(&e));
    // Parsed as the framework parses it (stream-core's JSON serde).
    let users = JsonSerde::<User>::new();
    let mut counts: HashMap<Vec<u8>, i64> = HashMap::new();
    let send = |rec: BaseRecord<'_, [u8], [u8]>| {
        if let Err(e) = integration_tests::send_record(producer, rec) {
            fail(&e.to_string());
        }
    };
    loop {
        // A record the broker refused would leave the output short and the
        // run waiting: say so and stop instead.
        if let Some(failed) = producer.context().failures() {
            fail(&failed);
        }
        let m = match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                POLL_ERRORS.note("the input or the repartition topic", &e);
                continue;
            }
            None => continue,
        };
        if m.topic() == topics.input {
            let Some(user) = m.payload().and_then(|v| users.deserialize(v).ok()) else {
                continue;
            };
            if filter.matches(&user) {
                send(BaseRecord::to(topics.repartition).key(user.company_name.as_bytes()));
            }
            continue;
        }
        let Some(company) = m.key() else { continue };
        let n = counts.entry(company.to_vec()).or_insert(0);
        *n += 1;
        send(
            BaseRecord::to(topics.changelog)
                .key(company)
                .payload(&n.to_be_bytes()[..]),
        );
        let entry = WatchlistEntry {
            team: "team-1".into(),
            company: String::from_utf8_lossy(company).into_owned(),
            flag_count: *n,
        };
        send(
            BaseRecord::to(topics.output)
                .key(company)
                .payload(&entry.to_json()[..]),
        );
    }
}

/// Errors the reading threads met instead of records (the program runs
/// until stopped, so they are printed, not totalled).
static POLL_ERRORS: integration_tests::PollErrors = integration_tests::PollErrors::new();

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}
