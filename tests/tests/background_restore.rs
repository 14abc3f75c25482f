//! Restore in the background, on a real broker: one task restores a
//! changelog of 6,000,000 records (15,000,000 in an optimized build) while the other keeps processing (its lag,
//! sampled through `/metrics`, stays within a few seconds of input); the
//! restoring task processes right after its restore; a restore longer than
//! `max.poll.interval.ms` completes without eviction; an instance joining
//! mid-restore never makes a task restore from scratch twice on one
//! instance; a changelog truncated past the checkpoint is rebuilt.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::*;
use rdkafka::producer::BaseRecord;
use stream_core::http::Server;
use stream_core::runtime::{KafkaStreams, RuntimeError, RuntimeStatus, StreamsConfig};
use stream_dsl::prelude::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const KEYS: u64 = 100_000;

/// `max.poll.interval.ms` (and the session timeout) of the instance whose
/// restore must outlive it.
const MAX_POLL_MS: &str = "3000";

/// Records of the restore that must outlive [`MAX_POLL_MS`]. An optimized
/// build restores far faster than a debug one (6,000,000 records in about
/// 2 s on a 2-core machine, under the limit), so it restores more.
const BIG_RESTORE: u64 = if cfg!(debug_assertions) {
    6_000_000
} else {
    15_000_000
};

/// Records per task of the restores that an instance joining mid-restore
/// interrupts: enough that they outlast the new instance's start in either
/// build.
const JOIN_RESTORE: u64 = if cfg!(debug_assertions) {
    2_000_000
} else {
    6_000_000
};

fn topology(input: &str, output: &str) -> stream_core::Topology {
    let b = StreamsBuilder::new();
    b.source(input)
        .group_by_key()
        .count(Materialized::as_store("counts"))
        .to_topic(output);
    b.build().unwrap()
}

struct Running {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), RuntimeError>>,
    status: Arc<RuntimeStatus>,
    http: Option<(SocketAddr, JoinHandle<()>)>,
}

async fn start(
    app: &str,
    input: &str,
    output: &str,
    state: &Path,
    extra: &[(&str, &str)],
    http: bool,
) -> Running {
    let mut cfg = StreamsConfig::new(app, &bootstrap());
    cfg.state_dir = state.to_path_buf();
    cfg.extra.insert("session.timeout.ms".into(), "6000".into());
    for (k, v) in extra {
        cfg.extra.insert(k.to_string(), v.to_string());
    }
    failure_logs::in_process_log();
    let streams = KafkaStreams::new(topology(input, output), cfg).unwrap();
    let status = streams.status();
    let http = if http {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let server = Server::bind(addr, streams.handle(), Vec::new())
            .await
            .unwrap();
        Some((addr, server.spawn()))
    } else {
        None
    };
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(streams.run(async move {
        let _ = rx.await;
    }));
    Running {
        stop,
        handle,
        status,
        http,
    }
}

async fn stop(r: Running) {
    let _ = r.stop.send(());
    if let Some((_, h)) = r.http {
        h.abort();
    }
    r.handle.await.expect("join").expect("stopped cleanly");
}

/// Writes `n` count records for keys `k0`..`k{KEYS-1}` (in turn) into
/// partition `partition` of `changelog`; returns each key's last count.
fn fill_changelog(changelog: &str, partition: i32, n: u64) -> BTreeMap<Vec<u8>, i64> {
    let p = bulk_producer(&bootstrap());
    let mut last = BTreeMap::new();
    let keys: Vec<Vec<u8>> = (0..KEYS).map(|k| format!("k{k}").into_bytes()).collect();
    for i in 0..n {
        let key = &keys[(i % KEYS) as usize];
        let count = (i / KEYS + 1) as i64;
        let value = count.to_be_bytes();
        let rec = BaseRecord::to(changelog)
            .partition(partition)
            .key(key.as_slice())
            .payload(value.as_slice());
        send_record(&p, rec).expect("send changelog record");
        if i + KEYS >= n {
            last.insert(key.clone(), count);
        }
    }
    flush(&p);
    last
}

fn send_to(p: &TestProducer, topic: &str, partition: i32, key: &str) {
    let rec = BaseRecord::to(topic)
        .partition(partition)
        .key(key.as_bytes())
        .payload(b"x".as_slice());
    send_record(p, rec).expect("send");
}

fn counts(output: &str) -> BTreeMap<Vec<u8>, i64> {
    counts_at(&bootstrap(), output, Duration::from_secs(60))
}

async fn wait_counts(
    output: &str,
    want: &BTreeMap<Vec<u8>, i64>,
    secs: u64,
) -> BTreeMap<Vec<u8>, i64> {
    let (out, want) = (output.to_string(), want.clone());
    tokio::task::spawn_blocking(move || {
        let mut got = BTreeMap::new();
        wait_until(Duration::from_secs(secs), || {
            got = counts(&out);
            want.iter().all(|(k, v)| got.get(k) == Some(v))
        });
        got
    })
    .await
    .unwrap()
}

/// One `/metrics` sample during the restore.
#[derive(Debug, Clone, Copy)]
struct Sample {
    restoring: bool,
    lag: f64,
    processed: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_process_one_task_while_another_restores_6m_records_without_eviction() {
    let (app, input, output) = (unique("bg-restore"), unique("words"), unique("counts"));
    create_topic(&input, 2).await;
    create_topic(&output, 1).await;
    let changelog = format!("{app}-counts-changelog");
    create_compacted_topic(&changelog, 2).await;
    let restored = tokio::task::spawn_blocking({
        let changelog = changelog.clone();
        move || fill_changelog(&changelog, 0, BIG_RESTORE)
    })
    .await
    .unwrap();

    // Input keeps arriving on partition 1 (task 0_1, nothing to restore)
    // at 1,000 records a second for the whole test.
    let feeding = Arc::new(AtomicBool::new(true));
    let fed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let feeder = {
        let (feeding, fed, input) = (feeding.clone(), fed.clone(), input.clone());
        std::thread::spawn(move || {
            let p = producer();
            let started = Instant::now();
            let mut n = 0u64;
            while feeding.load(Ordering::SeqCst) {
                send_to(&p, &input, 1, &format!("w{}", n % 50));
                n += 1;
                fed.store(n, Ordering::SeqCst);
                let due = started + Duration::from_millis(n);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            flush(&p);
            n
        })
    };

    // max.poll.interval.ms at its floor (the session timeout, 3 s; the
    // test broker allows sessions down to 1 s): a restore inside the poll
    // loop's callback would be evicted.
    let state = tempfile::tempdir().unwrap();
    let run = start(
        &app,
        &input,
        &output,
        state.path(),
        &[
            ("session.timeout.ms", MAX_POLL_MS),
            ("max.poll.interval.ms", MAX_POLL_MS),
        ],
        true,
    )
    .await;
    let metrics_url = format!("http://{}/metrics", run.http.as_ref().unwrap().0);
    let input2 = input.clone();
    let samples = tokio::task::spawn_blocking(move || {
        let mut samples = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut seen_restoring = false;
        while Instant::now() < deadline {
            if let Some((200, text)) = get(&metrics_url) {
                let restoring = metric(&text, "streams_task_restoring", &[("task", "0_0")]);
                let lag = metric(
                    &text,
                    "streams_consumer_lag",
                    &[("topic", input2.as_str()), ("partition", "1")],
                );
                let processed = metric(&text, "streams_task_records_in_total", &[("task", "0_1")]);
                if let (Some(r), Some(lag), Some(processed)) = (restoring, lag, processed) {
                    seen_restoring |= r == 1.0;
                    samples.push(Sample {
                        restoring: r == 1.0,
                        lag,
                        processed,
                    });
                    if seen_restoring && r == 0.0 {
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        samples
    })
    .await
    .unwrap();
    let during: Vec<Sample> = samples.iter().copied().filter(|s| s.restoring).collect();
    // The input that arrived before the group assigned its partitions is
    // a backlog task 0_1 starts with: a broker that delays a group's first
    // rebalance (Kafka's default, 3 s) hands it over 3,000 records at
    // once. The bound holds from the first sample under it on, which must
    // come within two seconds (8 samples) of the restore's start.
    let caught_up = during.iter().position(|s| s.lag <= 3_000.0);
    let Some(caught_up) = caught_up.filter(|&k| k < 8) else {
        panic!("task 0_1 did not work off its backlog while task 0_0 restored: {during:?}");
    };
    let backlog = during[0].lag;
    let during = &during[caught_up..];
    assert!(
        during.len() >= 8,
        "too few samples during the restore: {samples:?}"
    );
    // Task 0_1 processed during the restore, and its lag stayed small:
    // 3,000 records is three seconds of input.
    let first = during.first().unwrap().processed;
    let last = during.last().unwrap().processed;
    assert!(
        last - first >= 1_000.0,
        "task 0_1 processed {} records during the restore",
        last - first
    );
    let worst = during.iter().map(|s| s.lag).fold(0.0, f64::max);
    assert!(
        worst <= 3_000.0,
        "lag of the processing task reached {worst} records (> 3 s): {during:?}"
    );

    // The restore outlived max.poll.interval.ms, no member was evicted (no
    // task restored twice), and the restored task processes at once.
    let restores = run.status.restores();
    let big = restores
        .iter()
        .find(|r| r.task.partition == 0)
        .expect("task 0_0 restored");
    assert_eq!(big.read, BIG_RESTORE);
    println!(
        "restore of task 0_0: {} records in {:.1} s; task 0_1 meanwhile: {} records processed, worst lag {worst} records over {} samples (a backlog of {backlog} records at the assignment worked off in {caught_up} samples)",
        big.read,
        big.seconds,
        last - first,
        during.len()
    );
    let max_poll_s = MAX_POLL_MS.parse::<f64>().unwrap() / 1000.0;
    assert!(
        big.seconds > max_poll_s,
        "restore took {:.1} s, not longer than max.poll.interval.ms",
        big.seconds
    );
    assert_eq!(
        restores.len(),
        2,
        "one restore per task, no eviction: {restores:?}"
    );
    let p = producer();
    let mut want = BTreeMap::new();
    for k in ["k1", "k2", "k99999"] {
        send_to(&p, &input, 0, k);
        want.insert(k.as_bytes().to_vec(), restored[k.as_bytes()] + 1);
    }
    flush(&p);
    let started = Instant::now();
    let got = wait_counts(&output, &want, 60).await;
    assert!(
        want.iter().all(|(k, v)| got.get(k) == Some(v)),
        "restored task's counts: {}",
        diff_counts(&got, &want)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    feeding.store(false, Ordering::SeqCst);
    let n = feeder.join().unwrap();
    // Task 0_1's counts are exact too.
    let mut want1 = BTreeMap::new();
    for i in 0..n {
        *want1
            .entry(format!("w{}", i % 50).into_bytes())
            .or_insert(0) += 1;
    }
    let got = wait_counts(&output, &want1, 60).await;
    assert!(
        want1.iter().all(|(k, v)| got.get(k) == Some(v)),
        "{}",
        diff_counts(&got, &want1)
    );
    stop(run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_not_restore_a_task_from_scratch_twice_when_an_instance_joins_mid_restore() {
    let (app, input, output) = (unique("bg-join"), unique("words"), unique("counts"));
    create_topic(&input, 2).await;
    create_topic(&output, 1).await;
    let changelog = format!("{app}-counts-changelog");
    create_compacted_topic(&changelog, 2).await;
    let (c0, c1) = (changelog.clone(), changelog.clone());
    let r0 = tokio::task::spawn_blocking(move || fill_changelog(&c0, 0, JOIN_RESTORE));
    let r1 = tokio::task::spawn_blocking(move || fill_changelog(&c1, 1, JOIN_RESTORE));
    let (r0, r1) = (r0.await.unwrap(), r1.await.unwrap());

    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(&app, &input, &output, sa.path(), &[], false).await;
    // B joins while A is in the middle of restoring both tasks.
    let status = a.status.clone();
    let mid = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(60), || {
            status
                .tasks()
                .values()
                .flat_map(|t| t.restore.iter())
                .map(|p| p.read)
                .sum::<u64>()
                > 200_000
        })
    })
    .await
    .unwrap();
    assert!(mid, "A never got going");
    let b = start(&app, &input, &output, sb.path(), &[], false).await;
    // Both tasks run somewhere, then new input counts on top of the
    // restored state.
    let ready = {
        let (sa, sb) = (a.status.clone(), b.status.clone());
        tokio::task::spawn_blocking(move || {
            wait_until(Duration::from_secs(180), || {
                let running = |s: &RuntimeStatus| {
                    s.tasks()
                        .values()
                        .filter(|t| t.state == stream_core::runtime::TaskState::Running)
                        .count()
                };
                running(&sa) + running(&sb) == 2
            })
        })
        .await
        .unwrap()
    };
    assert!(
        ready,
        "tasks never both ran: A {:?} B {:?}",
        a.status.tasks(),
        b.status.tasks()
    );
    let p = producer();
    for part in [0, 1] {
        for k in ["k3", "k77"] {
            send_to(&p, &input, part, k);
        }
    }
    flush(&p);
    // Each key was sent to both partitions: each task adds one to its own
    // restored count; the output (one topic) keeps the latest per key, so
    // check each task's store through the output of its own partition.
    let want0: BTreeMap<Vec<u8>, i64> = ["k3", "k77"]
        .iter()
        .map(|k| (k.as_bytes().to_vec(), r0[k.as_bytes()] + 1))
        .collect();
    let want1: BTreeMap<Vec<u8>, i64> = ["k3", "k77"]
        .iter()
        .map(|k| (k.as_bytes().to_vec(), r1[k.as_bytes()] + 1))
        .collect();
    let out = output.clone();
    let seen = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        wait_until(Duration::from_secs(90), || {
            all = read_all(&out, Duration::from_secs(30));
            let has = |want: &BTreeMap<Vec<u8>, i64>| {
                want.iter().all(|(k, v)| {
                    all.iter().any(|r| {
                        r.key.as_deref() == Some(k.as_slice())
                            && r.value.as_deref() == Some(v.to_be_bytes().as_slice())
                    })
                })
            };
            has(&want0) && has(&want1)
        })
    })
    .await
    .unwrap();
    assert!(seen, "both tasks count on top of their restored state");
    // No task restored from scratch twice on the same instance (restores
    // cut short by the rebalance included), and A's cut-short restores
    // were resumed, not repeated: per task, A read at most the changelog.
    let mut cut_short = 0;
    for (name, s) in [("A", &a.status), ("B", &b.status)] {
        let mut full: BTreeMap<String, usize> = BTreeMap::new();
        let mut read: BTreeMap<String, u64> = BTreeMap::new();
        for r in s.restores().iter() {
            if r.full {
                *full.entry(r.task.to_string()).or_insert(0) += 1;
            }
            *read.entry(r.task.to_string()).or_insert(0) += r.read;
            cut_short += usize::from(r.abandoned);
        }
        assert!(
            full.values().all(|&n| n <= 1),
            "{name} restored from scratch twice: {:?}",
            s.restores()
        );
        assert!(
            read.values().all(|&n| n <= JOIN_RESTORE),
            "{name} read a changelog more than once: {:?}",
            s.restores()
        );
    }
    assert!(
        cut_short >= 1,
        "the join interrupted no restore: A {:?} B {:?}",
        a.status.restores(),
        b.status.restores()
    );
    stop(b).await;
    stop(a).await;
}
