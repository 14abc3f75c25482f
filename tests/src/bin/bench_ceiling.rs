//! The benchmark's ceiling: a plain rdkafka program with no framework and no
//! state. Reads every record of the input topic, parses it, and produces one
//! small keyed record per flagged user (team-1's filter). Prints
//! `flagged=N seconds=S`.
//!
//! Its consumer reads with librdkafka's default prefetch but for the wait
//! after a full queue (`integration_tests::plain_consumer_config`).
//!
//! With `THREADS` > 1, that many threads each read their share of the
//! input partitions with their own consumer (as a stream thread reads its
//! tasks' partitions) and produce through one shared producer — the
//! ceiling for a framework running as many stream threads.
//!
//! With `--eos COMMIT_MS`, each thread has its own transactional producer
//! (as a stream thread does under exactly-once) and commits a transaction
//! every `COMMIT_MS`: its records and its consumer's positions, waiting
//! for each commit before it reads on. That is the plain way to use
//! Kafka's transactions, not a ceiling: a framework can go on reading and
//! processing while a commit is under way. It shows what the protocol
//! costs a program that does not.
//!
//! A record the broker did not acknowledge ends the run with status 1 and
//! names the first (`integration_tests::DeliveryCheck`): a ceiling that
//! lost output would look faster than it is.
//!
//! `bench-ceiling BOOTSTRAP INPUT OUTPUT [THREADS] [--eos COMMIT_MS]`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use apps::filters::for_team;
use apps::user::User;
use integration_tests::TestProducer;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use stream_core::serde::{JsonSerde, Serde};

/// mimalloc, as in every program of the framework; counting allocations.
#[global_allocator]
static ALLOC: stream_core::alloc_count::Mimalloc = stream_core::alloc_count::MIMALLOC;

/// How long a transaction call may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let eos: Option<Duration> = match args.iter().position(|a| a == "--eos") {
        Some(i) if i + 1 < args.len() => {
            let ms = args[i + 1]
                .parse()
                .unwrap_or_else(|_| fail("--eos takes milliseconds"));
            args.drain(i..i + 2);
            Some(Duration::from_millis(ms))
        }
        Some(_) => fail("--eos takes milliseconds"),
        None => None,
    };
    if !(4..=5).contains(&args.len()) {
        eprintln!("usage: bench-ceiling BOOTSTRAP INPUT OUTPUT [THREADS] [--eos COMMIT_MS]");
        std::process::exit(2);
    }
    let (bootstrap, input, output) = (&args[1], &args[2], &args[3]);
    let threads: i32 = args.get(4).and_then(|t| t.parse().ok()).unwrap_or(1).max(1);
    let started = Instant::now();
    // One producer shared by the threads; under --eos each has its own.
    let shared = eos.is_none().then(|| new_producer(bootstrap, None));
    let flagged: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let shared = shared.as_ref();
                s.spawn(move || match shared {
                    Some(p) => read_share(bootstrap, input, output, p, t, threads, None),
                    None => {
                        let id = format!("ceiling-{}-{t}", std::process::id());
                        let own = new_producer(bootstrap, Some(&id));
                        own.init_transactions(TXN_TIMEOUT)
                            .unwrap_or_else(|e| fail(&e.to_string()));
                        read_share(bootstrap, input, output, &own, t, threads, eos)
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    if let Some(p) = &shared {
        integration_tests::finish_bulk(p);
    }
    println!(
        "flagged={flagged} seconds={:.3} poll_errors={}",
        started.elapsed().as_secs_f64(),
        POLL_ERRORS.count()
    );
}

/// The ceiling's producer (`integration_tests::plain_producer_config`),
/// transactional with `transactional_id`.
fn new_producer(bootstrap: &str, transactional_id: Option<&str>) -> TestProducer {
    let mut pc = integration_tests::plain_producer_config(bootstrap);
    if let Some(id) = transactional_id {
        pc.set("transactional.id", id);
    }
    integration_tests::checked_producer(&pc)
}

/// Commits the open transaction with `consumer`'s positions; opens the
/// next one when `reopen`.
fn commit(consumer: &BaseConsumer, producer: &TestProducer, reopen: bool) {
    let done = (|| {
        let positions = consumer.position()?;
        if let Some(group) = consumer.group_metadata() {
            producer.send_offsets_to_transaction(&positions, &group, TXN_TIMEOUT)?;
        }
        producer.commit_transaction(TXN_TIMEOUT)?;
        if reopen {
            producer.begin_transaction()?;
        }
        Ok::<(), rdkafka::error::KafkaError>(())
    })();
    done.unwrap_or_else(|e| fail(&e.to_string()));
}

/// Reads partitions `p` with `p % threads == share` of `input` to their end,
/// producing one record per flagged user; returns how many. With
/// `transactions`, in transactions committed that often.
fn read_share(
    bootstrap: &str,
    input: &str,
    output: &str,
    producer: &TestProducer,
    share: i32,
    threads: i32,
    transactions: Option<Duration>,
) -> u64 {
    let mut cc = integration_tests::plain_consumer_config(
        bootstrap,
        &format!("ceiling-{}", std::process::id()),
    );
    if transactions.is_some() {
        cc.set("isolation.level", "read_committed");
    }
    let consumer: BaseConsumer = cc.create().unwrap_or_else(|e| fail(&e.to_string()));
    let md = consumer
        .fetch_metadata(Some(input), Duration::from_secs(10))
        .unwrap_or_else(|e| fail(&e.to_string()));
    let parts = md.topics()[0].partitions().len() as i32;
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in (0..parts).filter(|p| p % threads == share) {
        let (lo, hi) = consumer
            .fetch_watermarks(input, p, Duration::from_secs(10))
            .unwrap_or_else(|e| fail(&e.to_string()));
        if hi > lo {
            ends.insert(p, hi);
            let _ = tpl.add_partition_offset(input, p, Offset::Beginning);
        }
    }
    consumer
        .assign(&tpl)
        .unwrap_or_else(|e| fail(&e.to_string()));
    let filter = for_team("team-1").unwrap_or_else(|e| fail(&e));
    // Parsed as the framework parses it (stream-core's JSON serde).
    let users = JsonSerde::<User>::new();
    let mut flagged = 0u64;
    if transactions.is_some() {
        producer
            .begin_transaction()
            .unwrap_or_else(|e| fail(&e.to_string()));
    }
    let mut last_commit = Instant::now();
    while !ends.is_empty() {
        if transactions.is_some_and(|every| last_commit.elapsed() >= every) {
            commit(&consumer, producer, true);
            last_commit = Instant::now();
        }
        let m = match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                POLL_ERRORS.note(input, &e);
                continue;
            }
            None => continue,
        };
        if m.offset() + 1 >= ends.get(&m.partition()).copied().unwrap_or(i64::MAX) {
            ends.remove(&m.partition());
        }
        let Some(user) = m.payload().and_then(|v| users.deserialize(v).ok()) else {
            continue;
        };
        if filter.matches(&user) {
            flagged += 1;
            let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(output)
                .key(user.company_name.as_bytes())
                .payload(b"1");
            if let Err(e) = integration_tests::send_record(producer, rec) {
                fail(&e.to_string());
            }
        }
    }
    if transactions.is_some() {
        commit(&consumer, producer, false);
        // A committed transaction had every record delivered; this names
        // one that was not, should the commit not have said so.
        if let Some(failed) = producer.context().failures() {
            fail(&failed);
        }
    }
    flagged
}

/// Errors the reading threads met instead of records.
static POLL_ERRORS: integration_tests::PollErrors = integration_tests::PollErrors::new();

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}
