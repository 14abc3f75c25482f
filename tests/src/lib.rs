//! Support for integration tests against a real broker.
//!
//! The broker address comes from `KAFKA_BOOTSTRAP` (default
//! `127.0.0.1:9092`, as started by `tests/broker/kafka.sh start`); the SCRAM
//! listener from `KAFKA_SASL_BOOTSTRAP` (default `127.0.0.1:9094`). Every
//! test makes its own topics and groups with [`unique`] names. Waiting is
//! always polling with a deadline, never a fixed sleep.

pub mod failure_logs;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The PLAINTEXT bootstrap address.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The SASL_PLAINTEXT (SCRAM) bootstrap address.
pub fn sasl_bootstrap() -> String {
    std::env::var("KAFKA_SASL_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9094".into())
}

/// `prefix-<random>`: a fresh topic, group or application name.
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::thread_rng().gen();
    format!("{prefix}-{n:016x}")
}

/// Client settings for the PLAINTEXT listener.
pub fn client_config() -> ClientConfig {
    client_config_at(&bootstrap())
}

/// Client settings for another broker.
pub fn client_config_at(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// An admin client.
pub fn admin() -> AdminClient<DefaultClientContext> {
    client_config().create().expect("admin client")
}

/// Creates a topic with `partitions` partitions and the given configs.
pub async fn create_topic_with(name: &str, partitions: i32, configs: &[(&str, &str)]) {
    create_topic_at(&bootstrap(), name, partitions, configs).await
}

/// Creates a topic on the broker at `bootstrap`.
pub async fn create_topic_at(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    create_topic_rf(bootstrap, name, partitions, 1, configs).await
}

/// Creates a topic with `rf` replicas on the cluster at `bootstrap`.
pub async fn create_topic_rf(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    rf: i32,
    configs: &[(&str, &str)],
) {
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(rf));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> =
        client_config_at(bootstrap).create().expect("admin client");
    let res = admin
        .create_topics(
            [&t],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    // Brokers list a topic some time after the controller accepted it,
    // each at its own pace; a test goes on once every broker it was given
    // lists it, as Kafka's own test clusters wait on every broker. A new
    // client with one bootstrap address asks that broker.
    for broker in bootstrap.split(',') {
        let client: BaseConsumer = client_config_at(broker).create().expect("a client");
        let listed = wait_until(Duration::from_secs(30), || {
            client
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .is_ok_and(|md| {
                    md.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && t.partitions().len() == partitions as usize
                    })
                })
        });
        assert!(
            listed,
            "topic {name} created but not listed by {broker} within 30 s"
        );
    }
}

/// Creates a plain topic.
pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_with(name, partitions, &[]).await
}

/// Deletes `topic`.
pub async fn delete_topic(topic: &str) {
    let deleted = admin()
        .delete_topics(&[topic], &rdkafka::admin::AdminOptions::new())
        .await
        .expect("delete a topic");
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
}

/// Creates a compacted topic.
pub async fn create_compacted_topic(name: &str, partitions: i32) {
    create_topic_with(name, partitions, &[("cleanup.policy", "compact")]).await
}

/// Counts the records a producer gave up on (a delivery report with an
/// error), so that a test or a benchmark filler notices input it failed to
/// write instead of blaming the program that reads it.
#[derive(Default)]
pub struct DeliveryCheck {
    failed: AtomicU64,
    first: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCheck {}

impl ProducerContext for DeliveryCheck {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            if self.failed.fetch_add(1, Ordering::SeqCst) == 0 {
                if let Ok(mut first) = self.first.lock() {
                    *first = Some(format!("{}[{}]: {e}", m.topic(), m.partition()));
                }
            }
        }
    }
}

impl DeliveryCheck {
    /// What was not delivered so far, if anything: how many records, and
    /// the first one's topic, partition and error.
    /// One atomic load while everything was delivered, so a benchmark may
    /// ask as often as it polls.
    pub fn failures(&self) -> Option<String> {
        let n = self.failed.load(Ordering::SeqCst);
        if n == 0 {
            return None;
        }
        let first = self.first.lock().ok().and_then(|f| f.clone());
        Some(format!(
            "records not delivered: {n} (the first: {})",
            first.unwrap_or_default()
        ))
    }
}

/// Errors a benchmark's reader met instead of records (a fetch refused, a
/// broker away): each of the first [`PollErrors::SHOWN`] is printed to
/// standard error, and the count goes out with the program's result, so
/// that a ceiling measured through errors says so instead of passing for
/// a clean read.
#[derive(Default)]
pub struct PollErrors {
    count: AtomicU64,
}

impl PollErrors {
    /// How many errors are printed; the rest are only counted.
    pub const SHOWN: u64 = 10;

    /// No errors yet.
    pub const fn new() -> Self {
        PollErrors {
            count: AtomicU64::new(0),
        }
    }

    /// Counts an error met reading `what`, and prints it while few have
    /// been.
    pub fn note(&self, what: &str, error: &dyn std::fmt::Display) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= Self::SHOWN {
            eprintln!("poll error {n} reading {what}: {error}");
        }
    }

    /// The errors counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The tests' and benchmark fillers' producer type.
pub type TestProducer = ThreadedProducer<DeliveryCheck>;

/// A producer that batches; call [`flush`] before reading what it wrote.
pub fn producer() -> TestProducer {
    producer_at(&bootstrap())
}

/// A producer for the broker at `bootstrap`.
pub fn producer_at(bootstrap: &str) -> TestProducer {
    let mut c = client_config_at(bootstrap);
    c.set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random");
    c.create_with_context(DeliveryCheck::default())
        .expect("producer")
}

/// Sends one record (blocking while the queue is full).
pub fn send(p: &TestProducer, topic: &str, key: Option<&[u8]>, value: &[u8]) {
    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(value);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    send_record(p, rec).expect("send");
}

/// The benchmark fillers' producer: batches of 20 ms, no compression,
/// keys partitioned as the Java client does; exits with a message if the
/// client cannot be created. End with [`finish_bulk`].
pub fn bulk_producer(bootstrap: &str) -> TestProducer {
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("partitioner", "murmur2_random")
        .set("compression.type", "none");
    checked_producer(&pc)
}

/// A benchmark program's producer from `config`, counting what it fails
/// to deliver (`DeliveryCheck`); exits with a message if the client
/// cannot be created.
pub fn checked_producer(config: &ClientConfig) -> TestProducer {
    match config.create_with_context(DeliveryCheck::default()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    }
}

/// Producer settings of the benchmark's plain-client programs (the
/// ceilings): idempotent, batching 100 ms as both frameworks' producers do
/// (faster here than 5 ms: 1.47–1.71 s against 1.75–1.87 s for the
/// ceiling, three runs each), keys partitioned as the Java client does.
pub fn plain_producer_config(bootstrap: &str) -> ClientConfig {
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", bootstrap)
        .set("linger.ms", "100")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random");
    pc
}

/// Consumer settings of the benchmark's plain-client programs (the
/// ceilings): librdkafka's defaults but for `fetch.queue.backoff.ms`, 10 ms
/// instead of 1 s. With the default, a partition whose prefetch queue was
/// full waits a second before its next fetch, and a reader that keeps
/// up at times finds every queue empty: the same ceiling run took 1.4 s or
/// 5.6 s by how its fetches fell. The framework's consumers wait 1 ms
/// (stream-core's `runtime/clients.rs`), with a far smaller prefetch; these
/// programs keep librdkafka's 100,000 records, and 1 ms made no difference
/// to them (the ceiling 1.31 s either way, the raw program 2.06 against
/// 2.08 s, medians of five rounds in turn).
pub fn plain_consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", "10");
    cc
}

/// Sends `rec`, waiting while the producer's queue is full; any other
/// error is returned.
pub fn send_record<C: ProducerContext<DeliveryOpaque = ()> + 'static>(
    p: &ThreadedProducer<C>,
    mut rec: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Runs a test or benchmark program's topology with `cfg` until SIGTERM;
/// a topology that cannot be built exits with status 2, a runtime error
/// with status 1, each with one line on stderr.
pub async fn run_program(
    topology: Result<stream_core::Topology, stream_core::TopologyError>,
    cfg: stream_core::runtime::StreamsConfig,
) {
    let topology = match topology {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let result = match stream_core::runtime::KafkaStreams::new(topology, cfg) {
        Ok(app) => {
            stream_core::instance::Instance::new(app)
                .run_until_signal()
                .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default`): the test and
/// benchmark programs' logging.
pub fn init_tracing(default: &str) {
    stream_core::logging::init(default);
}

/// Waits until every record sent is acknowledged; panics if any was not
/// delivered.
pub fn flush(p: &TestProducer) {
    p.flush(Duration::from_secs(60)).expect("flush");
    if let Some(failed) = p.context().failures() {
        panic!("{failed}");
    }
}

/// A benchmark filler's end: waits until every record sent is
/// acknowledged, and exits with status 1 and a message if that fails or
/// any record was not delivered.
pub fn finish_bulk(p: &TestProducer) {
    let failed = match p.flush(Duration::from_secs(120)) {
        Err(e) => Some(e.to_string()),
        Ok(()) => p.context().failures(),
    };
    if let Some(failed) = failed {
        eprintln!("error: {failed}");
        std::process::exit(1);
    }
}

/// A record read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Rec {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Timestamp (ms), `-1` when the record has none.
    pub timestamp: i64,
}

/// Reads every record of `topic` up to the high watermarks taken now
/// (read_committed), within `deadline`.
pub fn read_all(topic: &str, deadline: Duration) -> Vec<Rec> {
    read_all_with(client_config(), topic, deadline)
}

/// [`read_all`] with explicit client settings (e.g. SASL).
pub fn read_all_with(mut cfg: ClientConfig, topic: &str, deadline: Duration) -> Vec<Rec> {
    cfg.set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    let c: BaseConsumer = cfg.create().expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..parts {
        let (lo, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if hi > lo {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("tpl");
            ends.insert(p, hi);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    c.assign(&tpl).expect("assign");
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(Rec {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| k.to_vec()),
                value: m.payload().map(|v| v.to_vec()),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
                timestamp: m.timestamp().to_millis().unwrap_or(-1),
            });
        }
        let pos = c.position().expect("position");
        let done = ends.iter().all(|(p, hi)| {
            pos.find_partition(topic, *p)
                .map(|e| matches!(e.offset(), Offset::Offset(o) if o >= *hi))
                .unwrap_or(false)
        });
        if done {
            break;
        }
    }
    out
}

/// The latest value per key of `topic`, as compaction would keep it.
pub fn latest_per_key(topic: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for r in read_all(topic, Duration::from_secs(60)) {
        match r.value {
            Some(v) => m.insert(r.key.unwrap_or_default(), v),
            None => m.remove(&r.key.unwrap_or_default()),
        };
    }
    m
}

/// Polls `check` until it returns `true` or `deadline` passes.
pub fn wait_until(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The topic's configuration value for `key`, read through the admin API.
pub async fn topic_config(topic: &str, key: &str) -> Option<String> {
    use rdkafka::admin::ResourceSpecifier;
    let res = admin()
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .ok()?;
    res.into_iter().flatten().next()?.get(key)?.value.clone()
}

/// The partition count of `topic`, or `None` if it does not exist.
pub fn partition_count(topic: &str) -> Option<usize> {
    let c: BaseConsumer = client_config().create().ok()?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .ok()?;
    let t = md.topics().first()?;
    if t.error().is_some() {
        return None;
    }
    Some(t.partitions().len())
}

/// The path of a workspace binary (built by `cargo test --workspace` or
/// `cargo build --workspace`), next to the running test's own directory.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --workspace` (tests/run.sh does)",
        path.display()
    );
    path
}

/// A memory field of this process's `/proc/self/status` (`VmRSS`, `VmHWM`,
/// …), in KiB; `None` where it cannot be read.
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// A finished restore as the runtime logs it (`restored read=N
/// changelog_records=M seconds=S full=F task=T applied=A skipped=K`).
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreLine {
    /// The task (`1_0`).
    pub task: String,
    /// Changelog records read.
    pub read: u64,
    /// Records between the changelog partitions' start and end offsets.
    pub changelog_records: u64,
    /// Records applied to the stores.
    pub applied: u64,
    /// Records read but skipped (not committed, another application's,
    /// or written late).
    pub skipped: u64,
}

/// The value of `name=` in a log line (quotes removed).
pub fn log_field<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let value = line[at..].split_whitespace().next()?;
    Some(value.trim_matches('"'))
}

/// Every finished restore logged in `log`, in order (none if the log
/// cannot be read yet).
pub fn restores_logged(log: &std::path::Path) -> Vec<RestoreLine> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("restored read="))
        .filter_map(|l| {
            let number = |name| log_field(l, name)?.parse().ok();
            Some(RestoreLine {
                task: log_field(l, "task")?.to_string(),
                read: l
                    .split("restored read=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?,
                changelog_records: number("changelog_records")?,
                applied: number("applied")?,
                skipped: number("skipped")?,
            })
        })
        .collect()
}

/// `(read, changelog records)` summed over `restores` after the first
/// `skip` (the restores of a first start, which read whole changelogs).
pub fn restore_totals(restores: &[RestoreLine], skip: usize) -> (u64, u64) {
    restores
        .iter()
        .skip(skip)
        .fold((0, 0), |a, r| (a.0 + r.read, a.1 + r.changelog_records))
}

/// A directory under `target/test-logs` for a test's log files. A test
/// that fails prints the end of every file here its panic message names
/// ([`failure_logs`]).
pub fn log_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    failure_logs::install();
    dir
}

/// Runs `tests/broker/kafka.sh` with `args` (SCRAM users, ACLs).
pub fn kafka_sh(args: &[&str]) {
    kafka_sh_env(args, &[])
}

/// `kafka.sh` with `args`, and `env` added to its environment.
fn kafka_sh_command(args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("broker/kafka.sh");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script).args(args).envs(env.iter().copied());
    cmd
}

/// Runs `kafka.sh` with `args` and `env` once: whether it succeeded (for
/// polling, e.g. `status` until a restarted node answers).
pub fn kafka_sh_env_ok(args: &[&str], env: &[(&str, &str)]) -> bool {
    kafka_sh_command(args, env)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `tests/broker/kafka.sh` with `args` and extra environment
/// (`KAFKA_PORT`, `KAFKA_DATA_DIR` for a broker of the test's own). Kafka's
/// admin tools start a JVM each and can time out on a loaded machine: a
/// failed run is tried twice more (ACL and user changes are idempotent).
pub fn kafka_sh_env(args: &[&str], env: &[(&str, &str)]) {
    let run = || kafka_sh_command(args, env).output().expect("kafka.sh");
    let mut out = run();
    for _ in 0..2 {
        if out.status.success() {
            break;
        }
        eprintln!(
            "kafka.sh {args:?} failed ({}); trying again: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out = run();
    }
    assert!(
        out.status.success(),
        "kafka.sh {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts workspace binary `bin` with `args`, appending its output to `log`.
pub fn spawn_logged(bin: &str, args: &[String], log: &std::path::Path) -> std::process::Child {
    spawn_logged_env(bin, args, log, &[])
}

/// [`spawn_logged`] with extra environment variables.
pub fn spawn_logged_env(
    bin: &str,
    args: &[String],
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> std::process::Child {
    use std::process::{Command, Stdio};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    failure_logs::register(log);
    Command::new(workspace_bin(bin))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::from(f.try_clone().expect("log handle")))
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"))
}

/// How long a program may take to exit after a signal before the test
/// kills it and fails: a shutdown that never ends is a bug, not a wait.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(120);

/// Sends `signal` to `child` and waits for it to exit; panics (after
/// killing it) if it has not exited within [`EXIT_DEADLINE`].
pub fn signal_and_wait(child: &mut std::process::Child, signal: i32) {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    let deadline = Instant::now() + EXIT_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "process {} did not exit within {:?} of signal {signal}",
                    child.id(),
                    EXIT_DEADLINE
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The exit status of `child` once it exits by itself, or `None` if it is
/// still running after `deadline`.
pub fn wait_for_exit(
    child: &mut std::process::Child,
    deadline: Duration,
) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return Some(status);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Team 1's watchlist counts (hotmail users per company), recounted by
/// the test from every record of `new_users`.
pub fn team1_counts(new_users: &str) -> BTreeMap<String, i64> {
    use serde_json::Value;
    let mut m = BTreeMap::new();
    for r in read_all(new_users, Duration::from_secs(60)) {
        let Some(v) = r.value else { continue };
        let Ok(u) = serde_json::from_slice::<Value>(&v) else {
            continue;
        };
        let Some(email) = u.get("email").and_then(Value::as_str) else {
            continue;
        };
        let Some(company) = u.get("company_name").and_then(Value::as_str) else {
            continue;
        };
        if email.to_lowercase().contains("hotmail") {
            *m.entry(company.to_string()).or_insert(0) += 1;
        }
    }
    m
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The value of Prometheus metric `name` whose labels include every pair
/// of `labels`, from exposition text `text`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

/// Every value of metric `name` (any labels) in `text`.
pub fn metric_values(text: &str, name: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let n = series.split_once('{').map_or(series, |(n, _)| n);
            (n == name).then(|| value.parse().ok()).flatten()
        })
        .collect()
}

/// A child process that is killed when dropped, so that a failing test
/// (a panic before its clean stop) leaves no program running.
pub struct Guard(pub std::process::Child);

impl std::ops::Deref for Guard {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A base port for a broker of a test's own with `nodes` nodes: a multiple
/// of 10 in `lo..hi` whose ports `base + 10·i + {0,1,2,3}` all bind now.
/// Keep ranges below 32768, where Linux hands out ephemeral ports, so that no
/// client connection can be holding one when the broker starts.
pub fn broker_base_port(lo: u16, hi: u16, nodes: u16) -> u16 {
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let base = rng.gen_range(lo..hi) / 10 * 10;
        let free = (0..nodes).all(|i| {
            (0..4).all(|k| std::net::TcpListener::bind(("127.0.0.1", base + 10 * i + k)).is_ok())
        });
        if free {
            return base;
        }
    }
    panic!("no free block of ports in {lo}..{hi}");
}

/// A Kafka cluster of a test's own, on free ports, with its data in a
/// temporary directory, so that stopping or reconfiguring it disturbs no
/// other test. A test stops it where it is done with it
/// (`sh(&["stop"])`); dropping it stops it too, so a test that fails
/// before that leaves no broker running.
pub struct OwnCluster {
    /// Its first node's plain port (node `i` listens at `port + 10 * i`).
    pub port: u16,
    env: Vec<(&'static str, String)>,
    _data: tempfile::TempDir,
}

impl OwnCluster {
    /// Starts `nodes` brokers on ports between `lo` and `hi`.
    pub fn start(lo: u16, hi: u16, nodes: u16) -> Self {
        Self::start_with(lo, hi, nodes, Vec::new())
    }

    /// [`start`](Self::start) with more of `kafka.sh`'s environment
    /// (`KAFKA_SSL_KEYSTORE`, `KAFKA_AUTO_CREATE_TOPICS`, …).
    pub fn start_with(lo: u16, hi: u16, nodes: u16, extra: Vec<(&'static str, String)>) -> Self {
        let port = broker_base_port(lo, hi, nodes);
        let data = tempfile::tempdir().expect("a data directory");
        let mut env = vec![
            ("KAFKA_PORT", port.to_string()),
            ("KAFKA_DATA_DIR", data.path().display().to_string()),
            ("KAFKA_HEAP", "512m".to_string()),
        ];
        env.extend(extra);
        // A failing test shows the end of each broker's log.
        for i in 0..nodes {
            failure_logs::register(&data.path().join(format!("node{i}/server.log")));
        }
        let cluster = OwnCluster {
            port,
            env,
            _data: data,
        };
        cluster.sh(&["start", "--brokers", &nodes.to_string()]);
        cluster
    }

    /// Its first node's plain listener, `127.0.0.1:port`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// Runs `kafka.sh` on this cluster (failing the test if it fails).
    pub fn sh(&self, args: &[&str]) {
        kafka_sh_env(args, &self.env())
    }

    /// Runs `kafka.sh` on this cluster once: whether it succeeded.
    pub fn sh_ok(&self, args: &[&str]) -> bool {
        kafka_sh_env_ok(args, &self.env())
    }
}

impl Drop for OwnCluster {
    /// Stops the cluster (nothing to do if the test stopped it) before its
    /// data directory goes.
    fn drop(&mut self) {
        let _ = self.sh_ok(&["stop"]);
    }
}

/// Starts the `count-app` test program (group by value, count, write the
/// counts to `output`), appending its output to `log`. `rf` sets the
/// replication factor of its internal topics.
pub fn spawn_count_app(
    app: &str,
    input: &str,
    output: &str,
    state: &std::path::Path,
    bootstrap: &str,
    rf: Option<i32>,
    log: &std::path::Path,
) -> std::process::Child {
    let mut args = vec![
        app.to_string(),
        input.to_string(),
        output.to_string(),
        state.display().to_string(),
        bootstrap.to_string(),
    ];
    if let Some(rf) = rf {
        args.push(rf.to_string());
    }
    spawn_logged("count-app", &args, log)
}

/// [`spawn_count_app`] without a replication factor, with extra
/// environment variables (`COUNT_APP_*`, see the program's docs).
pub fn spawn_count_app_env(
    app: &str,
    input: &str,
    output: &str,
    state: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> std::process::Child {
    let args = [
        app.to_string(),
        input.to_string(),
        output.to_string(),
        state.display().to_string(),
        bootstrap(),
    ];
    spawn_logged_env("count-app", &args, log, env)
}

/// Produces `n` random words out of `distinct` (`w000`, `w001`, …) to
/// `topic` at `bootstrap`, adding each to `expected`.
pub fn produce_words(
    bootstrap: &str,
    topic: &str,
    n: usize,
    distinct: u32,
    expected: &mut BTreeMap<Vec<u8>, i64>,
) {
    let p = producer_at(bootstrap);
    let mut rng = rand::thread_rng();
    for _ in 0..n {
        let w = format!("w{:03}", rng.gen_range(0..distinct));
        send(&p, topic, None, w.as_bytes());
        *expected.entry(w.into_bytes()).or_insert(0) += 1;
    }
    flush(&p);
}

/// The latest count per key in `topic` at `bootstrap` (8-byte big-endian
/// values, as `count-app` writes them), read for at most `deadline`.
pub fn counts_at(bootstrap: &str, topic: &str, deadline: Duration) -> BTreeMap<Vec<u8>, i64> {
    let mut m = BTreeMap::new();
    for r in read_all_with(client_config_at(bootstrap), topic, deadline) {
        if let (Some(k), Some(v)) = (r.key, r.value) {
            let bytes: [u8; 8] = v.as_slice().try_into().expect("8-byte count");
            m.insert(k, i64::from_be_bytes(bytes));
        }
    }
    m
}

/// What differs between `got` and `want`, for an assertion message: how
/// many keys are wrong or missing, and the first few.
pub fn diff_counts<K: ShowKey + Ord>(got: &BTreeMap<K, i64>, want: &BTreeMap<K, i64>) -> String {
    let wrong: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{}: got {:?}, want {v}", k.show(), got.get(k)))
        .collect();
    let extra = got.keys().filter(|k| !want.contains_key(*k)).count();
    format!(
        "{} keys, {} wrong or missing, {extra} unexpected; first: {:?}",
        want.len(),
        wrong.len(),
        wrong.iter().take(5).collect::<Vec<_>>()
    )
}

/// A key as a person reads it in an assertion message.
pub trait ShowKey {
    /// The key as text.
    fn show(&self) -> String;
}

impl ShowKey for Vec<u8> {
    fn show(&self) -> String {
        String::from_utf8_lossy(self).into_owned()
    }
}

impl ShowKey for String {
    fn show(&self) -> String {
        self.clone()
    }
}

/// GET `url`: status code and body (`None` if nothing answered).
pub fn get(url: &str) -> Option<(u16, String)> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    match agent.get(url).call() {
        Ok(r) => Some((r.status(), r.into_string().unwrap_or_default())),
        Err(ureq::Error::Status(code, r)) => Some((code, r.into_string().unwrap_or_default())),
        Err(_) => None,
    }
}

/// GET `url` as JSON: status code and body; panics if nothing answers or
/// the body is not JSON.
pub fn get_json(url: &str) -> (u16, serde_json::Value) {
    let (code, body) = get(url).unwrap_or_else(|| panic!("no answer from {url}"));
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {body}"));
    (code, v)
}

#[cfg(test)]
mod restore_line_tests {
    use super::*;

    #[test]
    fn should_read_every_field_of_a_finished_restore_and_skip_other_lines() {
        let log = std::env::temp_dir().join(unique("restore-lines"));
        std::fs::write(
            &log,
            "2026-12-05T22:00:00Z  INFO stream_core::runtime::restore: restored read=250 changelog_records=300 seconds=\"0.25\" full=true task=1_3 applied=240 skipped=10\n\
             2026-12-05T22:00:01Z  INFO stream_core::runtime::restore: restoring read=100\n",
        )
        .expect("write the log");
        let got = restores_logged(&log);
        let _ = std::fs::remove_file(&log);
        assert_eq!(
            got,
            vec![RestoreLine {
                task: "1_3".into(),
                read: 250,
                changelog_records: 300,
                applied: 240,
                skipped: 10,
            }]
        );
        assert_eq!(restore_totals(&got, 0), (250, 300));
        assert_eq!(restore_totals(&got, 1), (0, 0));
        assert_eq!(log_field("a seconds=\"0.25\" b", "seconds"), Some("0.25"));
    }
}
