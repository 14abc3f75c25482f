//! The Kafka runtime on a real broker: exact counts, compacted changelogs,
//! tail and full restores, SIGKILL crash loops, an instance joining and
//! leaving.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::*;
use rand::Rng;
use stream_core::runtime::{KafkaStreams, RuntimeError, RuntimeStatus, StreamsConfig};
use stream_dsl::prelude::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WORDS: u32 = 300;

fn counting_topology(input: &str, output: &str) -> stream_core::Topology {
    let b = StreamsBuilder::new();
    b.source(input)
        .group_by(|_k, v| v.clone())
        .count(Materialized::as_store("counts"))
        .to_topic(output);
    b.build().unwrap()
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), RuntimeError>>,
    status: Arc<RuntimeStatus>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.handle
            .await
            .expect("join")
            .expect("the application stopped cleanly");
    }
}

fn start(app: &str, input: &str, output: &str, state: &Path) -> Running {
    start_threads(app, input, output, state, 1)
}

fn start_threads(app: &str, input: &str, output: &str, state: &Path, threads: usize) -> Running {
    let mut cfg = StreamsConfig::new(app, &bootstrap());
    cfg.state_dir = state.to_path_buf();
    cfg.num_stream_threads = threads;
    cfg.extra.insert("session.timeout.ms".into(), "6000".into());
    failure_logs::in_process_log();
    let streams = KafkaStreams::new(counting_topology(input, output), cfg).unwrap();
    let status = streams.status();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(streams.run(async move {
        let _ = rx.await;
    }));
    Running {
        stop: Some(tx),
        handle,
        status,
    }
}

fn counts_of(topic: &str) -> BTreeMap<Vec<u8>, i64> {
    latest_per_key(topic)
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                i64::from_be_bytes(v.as_slice().try_into().expect("8-byte count")),
            )
        })
        .collect()
}

async fn wait_for_counts(
    output: &str,
    expected: &BTreeMap<Vec<u8>, i64>,
    secs: u64,
) -> BTreeMap<Vec<u8>, i64> {
    let out = output.to_string();
    let exp = expected.clone();
    tokio::task::spawn_blocking(move || {
        let mut last = BTreeMap::new();
        wait_until(Duration::from_secs(secs), || {
            last = counts_of(&out);
            last == exp
        });
        last
    })
    .await
    .unwrap()
}

fn restored_reads(status: &RuntimeStatus) -> (u64, bool) {
    let r = status.restores();
    (r.iter().map(|x| x.read).sum(), r.iter().any(|x| x.full))
}

/// A source topic that the cluster does not list yet when the instance
/// starts (created at once by the same script, and brokers list a new
/// topic only a moment after the controller accepted it) is looked up
/// again for a few seconds, not reported missing at the first lookup. The
/// topic is created 1.5 s after the start here: without that grace the
/// instance has stopped by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_wait_a_moment_for_a_source_topic_the_cluster_does_not_list_yet() {
    let (app, input, output) = (unique("late-topic"), unique("words"), unique("counts"));
    create_topic(&output, 1).await;
    let state = tempfile::tempdir().unwrap();
    let run = start(&app, &input, &output, state.path());
    // The scenario's delay, not a wait for Kafka: the topic appears late.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !run.handle.is_finished(),
        "the instance waits for its source topic instead of stopping"
    );
    create_topic(&input, 2).await;
    let mut expected = BTreeMap::new();
    produce_words(&bootstrap(), &input, 2_000, 40, &mut expected);
    let got = wait_for_counts(&output, &expected, 90).await;
    assert!(got == expected, "{}", diff_counts(&got, &expected));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_count_exactly_and_restore_only_the_tail_or_everything_when_state_is_gone() {
    let (app, input, output) = (unique("count"), unique("words"), unique("counts"));
    create_topic(&input, 3).await;
    create_topic(&output, 1).await;
    let state = tempfile::tempdir().unwrap();
    let mut expected = BTreeMap::new();
    produce_words(&bootstrap(), &input, 12_000, WORDS, &mut expected);

    let run = start(&app, &input, &output, state.path());
    let got = wait_for_counts(&output, &expected, 120).await;
    assert!(
        got == expected,
        "first run: {}",
        diff_counts(&got, &expected)
    );
    run.stop().await;

    let changelog = format!("{app}-counts-changelog");
    assert_eq!(
        partition_count(&changelog),
        Some(3),
        "changelog has the input's partition count"
    );
    let policy = topic_config(&changelog, "cleanup.policy")
        .await
        .unwrap_or_default();
    assert!(
        policy.contains("compact"),
        "changelog cleanup.policy is {policy}"
    );
    let changelog_len = read_all(&changelog, Duration::from_secs(60)).len() as u64;
    assert!(
        changelog_len >= WORDS as u64,
        "changelog holds {changelog_len} records"
    );

    // Restart with the state directory intact: only the tail is read.
    produce_words(&bootstrap(), &input, 200, WORDS, &mut expected);
    let run = start(&app, &input, &output, state.path());
    let got = wait_for_counts(&output, &expected, 120).await;
    assert!(
        got == expected,
        "tail restart: {}",
        diff_counts(&got, &expected)
    );
    let (read, full) = restored_reads(&run.status);
    assert!(!full, "local state existed, the restore must not be full");
    assert!(
        read * 100 < changelog_len,
        "tail restore read {read} of {changelog_len} changelog records (>= 1%)"
    );
    run.stop().await;

    // State directory deleted: full restore, still exact.
    std::fs::remove_dir_all(state.path().join(&app)).unwrap();
    let changelog_len = read_all(&changelog, Duration::from_secs(60)).len() as u64;
    produce_words(&bootstrap(), &input, 200, WORDS, &mut expected);
    let run = start(&app, &input, &output, state.path());
    let got = wait_for_counts(&output, &expected, 120).await;
    assert!(
        got == expected,
        "after full restore: {}",
        diff_counts(&got, &expected)
    );
    let (read, full) = restored_reads(&run.status);
    assert!(full, "with no local state the restore is full");
    assert!(
        read >= changelog_len / 2 && read > 0,
        "full restore read {read} of {changelog_len}"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_count_exactly_with_two_stream_threads_sharing_the_tasks() {
    let (app, input, output) = (unique("threads"), unique("words"), unique("counts"));
    create_topic(&input, 4).await;
    create_topic(&output, 1).await;
    let state = tempfile::tempdir().unwrap();
    let mut expected = BTreeMap::new();
    produce_words(&bootstrap(), &input, 10_000, WORDS, &mut expected);
    let run = start_threads(&app, &input, &output, state.path(), 2);
    let got = wait_for_counts(&output, &expected, 120).await;
    assert!(
        got == expected,
        "two threads: {}",
        diff_counts(&got, &expected)
    );
    // both threads' tasks report into one status: 4 + 4 tasks, once the
    // cooperative rebalance between the two consumers has settled
    let all_tasks = wait_until(Duration::from_secs(60), || run.status.tasks().len() == 8);
    assert!(
        all_tasks,
        "tasks in the status: {:?}",
        run.status.tasks().keys()
    );
    run.stop().await;
    // a restart with one thread keeps the state both threads wrote
    produce_words(&bootstrap(), &input, 500, WORDS, &mut expected);
    let run = start_threads(&app, &input, &output, state.path(), 1);
    let got = wait_for_counts(&output, &expected, 120).await;
    assert!(
        got == expected,
        "one thread after two: {}",
        diff_counts(&got, &expected)
    );
    let (_, full) = restored_reads(&run.status);
    assert!(!full, "the local state of both threads was kept");
    run.stop().await;
}

fn kill9(child: &mut Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
}

fn log_path(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_count_exactly_through_repeated_sigkill_crashes() {
    crash_loop("crash", &[]).await;
}

/// The same crash loop with a bound of one buffered change: whenever a
/// commit is in flight, the stream thread waits for its acknowledgements
/// and its state write before it reads on (the path a state writer slower
/// than processing takes), and counts stay exact through every SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_count_exactly_through_sigkill_crashes_when_processing_waits_for_each_state_write() {
    let http = format!("127.0.0.1:{}", free_port());
    crash_loop(
        "crash-wait",
        &[("COUNT_APP_MAX_BUFFERED", "1"), ("COUNT_APP_HTTP", &http)],
    )
    .await;
}

/// Feeds 20,000 words over 6 s while `count-app` (with `env`) is killed
/// with SIGKILL and restarted 6 times, then checks the counts are exact
/// and a SIGTERM stops it cleanly.
async fn crash_loop(name: &str, env: &[(&str, &str)]) {
    let (app, input, output) = (unique(name), unique("words"), unique("counts"));
    create_topic(&input, 2).await;
    create_topic(&output, 1).await;
    let state = tempfile::tempdir().unwrap();
    let log = log_path(&app);
    let spawn = || spawn_count_app_env(&app, &input, &output, state.path(), &log, env);
    let mut child = spawn();

    let producer_input = input.clone();
    let feeder = std::thread::spawn(move || {
        let mut expected = BTreeMap::new();
        for _ in 0..20 {
            produce_words(&bootstrap(), &producer_input, 1_000, WORDS, &mut expected);
            std::thread::sleep(Duration::from_millis(300));
        }
        expected
    });
    let mut rng = rand::thread_rng();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(800..3000)));
        kill9(&mut child);
        child = spawn();
    }
    let expected = feeder.join().unwrap();
    let got = wait_for_counts(&output, &expected, 180).await;
    // With an HTTP server, the last instance must have waited for its
    // commits (it ran through the end of the input).
    let http = env
        .iter()
        .find(|(k, _)| *k == "COUNT_APP_HTTP")
        .map(|(_, v)| *v);
    let waits = http.map(|a| {
        get(&format!("http://{a}/metrics"))
            .map(|(_, text)| metric_values(&text, "streams_commit_buffer_waits_total"))
            .unwrap_or_default()
    });
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(
        got == expected,
        "after 6 SIGKILLs: {} (log: {})",
        diff_counts(&got, &expected),
        log.display()
    );
    assert!(
        status.success(),
        "graceful stop after SIGTERM failed: {status} (log: {})",
        log.display()
    );
    if let Some(waits) = waits {
        assert!(
            waits.first().is_some_and(|&n| n > 0.0),
            "processing never waited for a commit's state write: {waits:?} (log: {})",
            log.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_count_exactly_when_a_second_instance_joins_and_leaves() {
    let (app, input, output) = (unique("scale"), unique("words"), unique("counts"));
    create_topic(&input, 4).await;
    create_topic(&output, 1).await;
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut expected = BTreeMap::new();
    let a = start(&app, &input, &output, s1.path());
    produce_words(&bootstrap(), &input, 4_000, WORDS, &mut expected);
    let b = start(&app, &input, &output, s2.path());
    produce_words(&bootstrap(), &input, 4_000, WORDS, &mut expected);
    let got = wait_for_counts(&output, &expected, 120).await;
    assert!(
        got == expected,
        "with two instances: {}",
        diff_counts(&got, &expected)
    );
    assert!(
        wait_until(Duration::from_secs(30), || !b.status.tasks().is_empty()),
        "the second instance never got a task"
    );
    b.stop().await;
    produce_words(&bootstrap(), &input, 4_000, WORDS, &mut expected);
    let got = wait_for_counts(&output, &expected, 120).await;
    assert!(
        got == expected,
        "after the second instance left: {}",
        diff_counts(&got, &expected)
    );
    a.stop().await;
}

/// Members of another kind hold the application's group (a Kafka Streams
/// application with the same id, or a consumer with another assignment
/// strategy, here round-robin only): the instance cannot join, says why
/// instead of blaming the cluster, waits, and counts exactly once they
/// leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_say_why_it_waits_while_members_of_another_protocol_hold_its_group() {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let (app, input, output) = (unique("proto"), unique("proto-in"), unique("proto-out"));
    create_topic(&input, 2).await;
    create_topic(&output, 1).await;
    let mut cfg = client_config();
    cfg.set("group.id", &app)
        .set("partition.assignment.strategy", "roundrobin");
    let other: BaseConsumer = cfg.create().expect("consumer");
    other.subscribe(&[input.as_str()]).expect("subscribe");
    let joined = wait_until(Duration::from_secs(60), || {
        let _ = other.poll(Duration::from_millis(100));
        other.assignment().is_ok_and(|a| a.count() > 0)
    });
    assert!(joined, "the round-robin consumer joined the group");

    let mut expected = BTreeMap::new();
    produce_words(&bootstrap(), &input, 500, 20, &mut expected);
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{app}.log"));
    let mut instance = Guard(spawn_count_app(
        &app,
        &input,
        &output,
        state.path(),
        &bootstrap(),
        None,
        &log,
    ));
    let said = wait_until(Duration::from_secs(60), || {
        let _ = other.poll(Duration::from_millis(100));
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("cannot join the consumer group"))
    });
    assert!(
        said,
        "the instance named the group's other protocol (log {})",
        log.display()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("waiting for the Kafka cluster"),
        "the refusal was blamed on the cluster (log {})",
        log.display()
    );

    // The other member leaves; the instance joins and counts.
    drop(other);
    let mut got = BTreeMap::new();
    let exact = wait_until(Duration::from_secs(120), || {
        got = counts_at(&bootstrap(), &output, Duration::from_secs(5));
        got == expected
    });
    let alive = matches!(instance.try_wait(), Ok(None));
    signal_and_wait(&mut instance, libc::SIGTERM);
    assert!(alive, "the instance kept running (log {})", log.display());
    assert!(
        exact,
        "after the other member left: {} (log {})",
        diff_counts(&got, &expected),
        log.display()
    );
}

/// The partition count of every topic at `bootstrap` whose name starts
/// with `prefix`.
fn topics_at(bootstrap: &str, prefix: &str) -> BTreeMap<String, usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = client_config_at(bootstrap).create().expect("consumer");
    let md = c
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .filter(|t| t.name().starts_with(prefix))
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect()
}

/// A broker that creates a topic a client asks about
/// (`auto.create.topics.enable`, Kafka's default, though not the
/// classroom's): the application still creates its internal topics itself,
/// with the partition counts and configs it planned. librdkafka's admin
/// client asks for that creation when it looks a topic up, so the lookup
/// before creating a repartition topic and a changelog used to create
/// both with the broker's one partition and no compaction: the instance
/// then failed to deliver to the partitions it expected. An internal topic
/// that someone else's lookup did create that way is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_create_its_internal_topics_itself_on_a_broker_that_creates_topics_on_request() {
    let cluster = OwnCluster::start_with(
        21_000,
        24_000,
        1,
        vec![("KAFKA_AUTO_CREATE_TOPICS", "true".to_string())],
    );
    let bs = cluster.bootstrap();
    let (app, input, output) = (unique("autocreate"), unique("words"), unique("counts"));
    create_topic_at(&bs, &input, 4, &[]).await;
    create_topic_at(&bs, &output, 1, &[]).await;
    let mut expected = BTreeMap::new();
    produce_words(&bs, &input, 2_000, 50, &mut expected);
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{app}.log"));
    let mut child = spawn_count_app(&app, &input, &output, state.path(), &bs, None, &log);
    let mut got = BTreeMap::new();
    let counted = wait_until(Duration::from_secs(90), || {
        got = counts_at(&bs, &output, Duration::from_secs(10));
        got == expected || child.try_wait().is_ok_and(|s| s.is_some())
    }) && got == expected;
    let internal = topics_at(&bs, &format!("{app}-"));
    let changelog = format!("{app}-counts-changelog");
    let policy = {
        use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> =
            client_config_at(&bs).create().expect("admin");
        admin
            .describe_configs(
                [&ResourceSpecifier::Topic(&changelog)],
                &AdminOptions::new(),
            )
            .await
            .ok()
            .and_then(|r| r.into_iter().flatten().next())
            .and_then(|r| r.get("cleanup.policy").and_then(|e| e.value.clone()))
            .unwrap_or_default()
    };
    signal_and_wait(&mut child, libc::SIGTERM);

    // Another application's repartition topic, created by a lookup that
    // asks for creation (librdkafka's producer default) before the
    // application's first start: its one partition is refused at start,
    // naming the topic, instead of failing deliveries later.
    let app2 = unique("autocreate");
    let suffix = internal
        .keys()
        .find(|t| t.ends_with("-repartition"))
        .and_then(|t| t.strip_prefix(&app))
        .unwrap_or("-counts-repartition")
        .to_string();
    let taken = format!("{app2}{suffix}");
    {
        use rdkafka::producer::Producer;
        let p = producer_at(&bs);
        let _ = p
            .client()
            .fetch_metadata(Some(&taken), Duration::from_secs(5));
    }
    let appeared = wait_until(Duration::from_secs(30), || {
        topics_at(&bs, &taken).get(&taken) == Some(&1)
    });
    let state2 = tempfile::tempdir().unwrap();
    let log2 = log_dir().join(format!("{app2}.log"));
    let mut second = spawn_count_app(&app2, &input, &output, state2.path(), &bs, None, &log2);
    let exit = wait_for_exit(&mut second, Duration::from_secs(60));
    if exit.is_none() {
        signal_and_wait(&mut second, libc::SIGKILL);
    }
    cluster.sh(&["stop"]);
    let said = std::fs::read_to_string(&log2).unwrap_or_default();

    assert!(
        counted,
        "counts: {} (log {})",
        diff_counts(&got, &expected),
        log.display()
    );
    let repartition: Vec<_> = internal
        .iter()
        .filter(|(t, _)| t.ends_with("-repartition"))
        .collect();
    assert_eq!(repartition.len(), 1, "internal topics: {internal:?}");
    assert_eq!(*repartition[0].1, 4, "internal topics: {internal:?}");
    assert_eq!(
        internal.get(&changelog),
        Some(&4),
        "internal topics: {internal:?}"
    );
    assert!(
        policy.contains("compact"),
        "changelog cleanup.policy is {policy:?}"
    );
    assert!(appeared, "a lookup did not create {taken}");
    assert!(
        exit.is_some_and(|s| !s.success()),
        "the second application did not stop: {exit:?} (log {})",
        log2.display()
    );
    assert!(
        said.contains(&taken) && said.contains("exists with 1 partitions, the topology needs 4"),
        "log {}: {said}",
        log2.display()
    );
}
