//! Faults: damaged local state, an unusable state directory, the broker
//! going away for 30 seconds mid-run, a closed stderr, a panicking
//! processor (in processing, and in its factory, `init` or `close`), a
//! source topic deleted under a running program, an exactly-once instance
//! paused past its transaction timeout, an at-least-once instance paused
//! while another takes its partitions over, and exactly-once with a commit
//! interval longer than Kafka's default transaction timeout.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use integration_tests::*;

fn stop(child: &mut Child) -> std::process::ExitStatus {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    child.wait().unwrap()
}

fn produce(bootstrap: &str, topic: &str, n: usize, expected: &mut BTreeMap<Vec<u8>, i64>) {
    produce_words(bootstrap, topic, n, 50, expected)
}

fn counts(bootstrap: &str, topic: &str) -> BTreeMap<Vec<u8>, i64> {
    counts_at(bootstrap, topic, Duration::from_secs(30))
}

/// Waits up to 90 s for the counts in `output` to be `want`, and asserts
/// they got there.
fn assert_counts(output: &str, want: &BTreeMap<Vec<u8>, i64>, what: &str, log: &Path) {
    let bs = bootstrap();
    let ok = wait_until(Duration::from_secs(90), || counts(&bs, output) == *want);
    assert!(
        ok,
        "{what}: {} (log {})",
        diff_counts(&counts(&bs, output), want),
        log.display()
    );
}

/// [`assert_counts`], then stops `child` and asserts it stopped cleanly.
fn assert_counts_then_stop(
    child: &mut Child,
    output: &str,
    want: &BTreeMap<Vec<u8>, i64>,
    what: &str,
    log: &Path,
) {
    assert_counts(output, want, what, log);
    let status = stop(child);
    assert!(status.success(), "{what}: the stop: {status}");
}

/// A `count-app` of a test's own: its input (2 partitions) and output
/// topics, state directory and log.
struct CountApp {
    app: String,
    input: String,
    output: String,
    state: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl CountApp {
    /// Names (`name` in each) and creates them.
    async fn new(name: &str) -> CountApp {
        let (app, input, output) = (unique(name), unique("words"), unique("counts"));
        create_topic(&input, 2).await;
        create_topic(&output, 1).await;
        let log = log_dir().join(format!("{app}.log"));
        CountApp {
            app,
            input,
            output,
            state: tempfile::tempdir().unwrap(),
            log,
        }
    }

    /// Starts the program with `env` (`COUNT_APP_*`) added.
    fn spawn(&self, env: &[(&str, &str)]) -> Guard {
        Guard(spawn_count_app_env(
            &self.app,
            &self.input,
            &self.output,
            self.state.path(),
            &self.log,
            env,
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_move_damaged_state_aside_and_rebuild_it_from_the_changelog() {
    let (app, input, output) = (unique("damaged"), unique("words"), unique("counts"));
    create_topic(&input, 2).await;
    create_topic(&output, 1).await;
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{app}.log"));
    let mut expected = BTreeMap::new();
    produce(&bootstrap(), &input, 3_000, &mut expected);
    let mut child = spawn_count_app(
        &app,
        &input,
        &output,
        state.path(),
        &bootstrap(),
        None,
        &log,
    );
    assert!(
        wait_until(Duration::from_secs(90), || counts(&bootstrap(), &output)
            == expected),
        "first run"
    );
    assert!(stop(&mut child).success());

    // Damage sled's files: garbage over the start of every file.
    let sled_dir = state.path().join(&app).join("sled");
    let mut damaged = 0;
    for entry in walk(&sled_dir) {
        let len = std::fs::metadata(&entry).unwrap().len() as usize;
        if len > 0 {
            let mut bytes = std::fs::read(&entry).unwrap();
            for b in bytes.iter_mut().take(len.min(4096)) {
                *b = 0xA5;
            }
            std::fs::write(&entry, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "sled wrote files");

    produce(&bootstrap(), &input, 1_000, &mut expected);
    let mut child = spawn_count_app(
        &app,
        &input,
        &output,
        state.path(),
        &bootstrap(),
        None,
        &log,
    );
    let ok = wait_until(Duration::from_secs(90), || {
        counts(&bootstrap(), &output) == expected
    });
    assert!(stop(&mut child).success());
    assert!(
        ok,
        "counts after rebuilding damaged state (log {})",
        log.display()
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    let aside = std::fs::read_dir(state.path().join(&app))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("sled.damaged-"));
    assert!(
        (aside && logs.contains("moving it aside"))
            || logs.contains("does not match its checkpoint"),
        "the damage was detected and reported (log {})",
        log.display()
    );
    assert!(
        logs.contains("full=true"),
        "the state was rebuilt from the changelog"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_refuse_a_state_directory_it_cannot_write_with_a_clear_error() {
    let (app, input, output) = (unique("nostate"), unique("words"), unique("counts"));
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_count-app"))
        .args([
            &app,
            &input,
            &output,
            &file.join("state").display().to_string(),
            &bootstrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("error: state directory") && err.contains("cannot create"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_wait_out_a_broker_outage_and_lose_nothing() {
    // A broker of this test's own, so that stopping it disturbs no other test.
    let cluster = OwnCluster::start(21_000, 24_000, 1);
    let bs = cluster.bootstrap();
    let (app, input, output) = (unique("outage"), unique("words"), unique("counts"));
    create_topic_at(&bs, &input, 2, &[]).await;
    create_topic_at(&bs, &output, 1, &[]).await;
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{app}.log"));
    let mut expected = BTreeMap::new();
    produce(&bs, &input, 2_000, &mut expected);
    let mut child = spawn_count_app(&app, &input, &output, state.path(), &bs, None, &log);
    assert!(
        wait_until(Duration::from_secs(90), || counts(&bs, &output) == expected),
        "before the outage"
    );

    // The broker goes while the program works through a burst: what it
    // has sent and not had acknowledged times out (at-least-once holds
    // a record for less than the session timeout), and it rolls back to
    // its last commit instead of stopping.
    produce(&bs, &input, 50_000, &mut expected);
    cluster.sh(&["node", "kill", "0"]);
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(30) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the application exited during the outage (log {})",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    cluster.sh(&["node", "start", "0"]);
    produce(&bs, &input, 2_000, &mut expected);
    let ok = wait_until(Duration::from_secs(180), || {
        counts(&bs, &output) == expected
    });
    let got = counts(&bs, &output);
    let status = stop(&mut child);
    cluster.sh(&["stop"]);
    assert!(
        ok,
        "counts after the outage: {} (log {})",
        diff_counts(&got, &expected),
        log.display()
    );
    assert!(status.success(), "stopped cleanly after the outage");
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("waiting for the Kafka cluster") || logs.contains("waiting for the brokers"),
        "says what it waits for"
    );
    eprintln!(
        "records timed out during the outage: {}",
        logs.contains("could not be delivered in time")
    );
}

/// stderr a pipe whose reader has gone (`program 2>&1 | head`, a log
/// collector that died): the program keeps counting, commits, and stops on
/// SIGTERM. A logger that panics on the failed write once left sled's log
/// buffer sealed for good (its panic lands inside sled's buffer write), and
/// every later store write spun: commits never finished and SIGTERM never
/// ended the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_keep_counting_and_stop_cleanly_when_its_stderr_is_a_closed_pipe() {
    use std::io::BufRead;
    let (app, input, output) = (unique("closed-stderr"), unique("words"), unique("counts"));
    create_topic(&input, 2).await;
    create_topic(&output, 1).await;
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{app}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let bs = bootstrap();
    let args = [
        &app,
        &input,
        &output,
        &state.path().display().to_string(),
        &bs,
    ];
    // Debug level: sled logs from inside its buffer writes, the stream
    // thread for every commit.
    let mut child = Guard(
        Command::new(workspace_bin("count-app"))
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(out)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Read until the tasks are ready, then close the reading end.
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let started = Instant::now();
    let mut ready = false;
    while started.elapsed() < Duration::from_secs(90) {
        match lines.next() {
            Some(Ok(line)) if line.contains("restored read=") => {
                ready = true;
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(ready, "the program started and restored its tasks");
    drop(lines);

    let mut expected = BTreeMap::new();
    for round in 0..2 {
        produce(&bs, &input, 2_000, &mut expected);
        assert!(
            wait_until(Duration::from_secs(90), || counts(&bs, &output) == expected),
            "counts of round {round} with stderr closed"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the program is still running"
        );
    }
    signal_and_wait(&mut child, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "stopped cleanly on SIGTERM: {status}");

    // Its state and committed positions are whole: a normal restart counts on.
    produce(&bs, &input, 1_000, &mut expected);
    let mut child = Guard(spawn_count_app(
        &app,
        &input,
        &output,
        state.path(),
        &bs,
        None,
        &log,
    ));
    let ok = wait_until(Duration::from_secs(90), || counts(&bs, &output) == expected);
    let status = stop(&mut child);
    assert!(ok, "counts after a restart (log {})", log.display());
    assert!(status.success());
}

/// A processor that panics (here after the count's store change, before
/// its output record) stops the instance with the panic's message and a
/// failed exit, promptly, and commits nothing after it: restarted without
/// the fault, every count is exact, the panicking record's included once.
/// The panic once unwound through the consumer's drop, which waits forever
/// for the input queues the consumer's context still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_stop_on_a_panicking_processor_and_commit_nothing_after_it() {
    let f = CountApp::new("panic").await;
    let (input, output, log, bs) = (&f.input, &f.output, &f.log, bootstrap());
    let mut expected = BTreeMap::new();
    produce(&bs, input, 2_000, &mut expected);
    let p = producer_at(&bs);
    send(&p, input, None, b"boom");
    flush(&p);
    expected.insert(b"boom".to_vec(), 1);
    produce(&bs, input, 1_000, &mut expected);

    let spawn = |word: &str| f.spawn(&[("COUNT_APP_PANIC_ON", word)]);
    let mut child = spawn("boom");
    let status = wait_for_exit(&mut child, Duration::from_secs(90)).unwrap_or_else(|| {
        panic!(
            "the program did not stop after the panic (log {})",
            log.display()
        )
    });
    assert!(!status.success(), "a panic is a failed run: {status}");
    let logs = std::fs::read_to_string(log).unwrap();
    assert!(
        logs.contains("stream thread panicked: COUNT_APP_PANIC_ON: counted boom"),
        "the error names the panic (log {})",
        log.display()
    );

    produce(&bs, input, 500, &mut expected);
    let mut child = spawn("no-such-word");
    assert_counts_then_stop(
        &mut child,
        output,
        &expected,
        "counts after the restart",
        log,
    );
}

/// A processor's factory runs when its task opens (in a rebalance, inside
/// librdkafka's callback), its `init` once the task is restored (on the
/// restore thread), its `close` when the task closes (at shutdown here). A
/// panic in the first unwound through librdkafka's C code (undefined
/// behaviour); in `init` it ended the restore thread and left the task
/// restoring for good (the program still ran 90 s later). Each now stops
/// the program with exit status 1 and an error naming the panic, and a
/// restart without it counts exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_stop_with_an_error_naming_a_panic_in_a_processors_factory_init_or_close() {
    let f = CountApp::new("hooks").await;
    let (output, log, bs) = (&f.output, &f.log, bootstrap());
    let mut expected = BTreeMap::new();
    produce(&bs, &f.input, 1_000, &mut expected);
    let spawn = |env: &[(&str, &str)]| f.spawn(env);
    let logged = |hook: &str| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.contains("panicked") && text.contains(&format!("COUNT_APP_PANIC_IN: {hook}"))
    };
    for hook in ["make", "init"] {
        let mut child = spawn(&[("COUNT_APP_PANIC_IN", hook)]);
        let status = wait_for_exit(&mut child, Duration::from_secs(90)).unwrap_or_else(|| {
            panic!(
                "still running 90 s after a panic in {hook} (log {})",
                log.display()
            )
        });
        assert_eq!(
            status.code(),
            Some(1),
            "a panic in {hook}: an error exit, not an abort ({status}; log {})",
            log.display()
        );
        assert!(
            logged(hook),
            "the error names the panic in {hook} (log {})",
            log.display()
        );
    }

    let mut child = spawn(&[("COUNT_APP_PANIC_IN", "close")]);
    assert_counts(output, &expected, "counts with a close that panics", log);
    let status = stop(&mut child);
    assert_eq!(
        status.code(),
        Some(1),
        "a panic in close at shutdown: an error exit ({status}; log {})",
        log.display()
    );
    assert!(
        logged("close"),
        "the error names the panic in close (log {})",
        log.display()
    );

    produce(&bs, &f.input, 500, &mut expected);
    let mut child = spawn(&[]);
    assert_counts_then_stop(
        &mut child,
        output,
        &expected,
        "counts after the restart",
        log,
    );
}

/// A source topic deleted while the program runs stops the program with an
/// error that names the topic, as Kafka Streams stops with
/// `MissingSourceTopicException`. It once kept running with nothing to
/// read, logging librdkafka's "topic does not exist" once a second per
/// partition, for good. Nothing counted before the deletion is lost.
///
/// The topic created again and filled with more records than the state
/// processed, a restart without a reset refuses to start: the topic's id
/// is not the one the state was built from. Resuming at the state's
/// positions skipped the new topic's first records as already processed,
/// silently. After the reset the new topic's words are counted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_stop_when_a_source_topic_is_deleted_and_refuse_it_created_again_until_reset() {
    let (app, input, output) = (unique("deleted"), unique("words"), unique("counts"));
    create_topic(&input, 2).await;
    create_topic(&output, 1).await;
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{app}.log"));
    let bs = bootstrap();
    let spawn = |output: &str, env: &[(&str, &str)]| {
        Guard(spawn_count_app_env(
            &app,
            &input,
            output,
            state.path(),
            &log,
            env,
        ))
    };
    let failure = |child: &mut Guard, what: &str| {
        let status = wait_for_exit(child, Duration::from_secs(120)).unwrap_or_else(|| {
            panic!(
                "the program still runs 120 s after {what} (log {})",
                log.display()
            )
        });
        assert!(!status.success(), "{what}: a failed run, not {status}");
    };
    let logged = |text: &str| std::fs::read_to_string(&log).unwrap().contains(text);

    let mut expected = BTreeMap::new();
    produce(&bs, &input, 1_000, &mut expected);
    let mut child = spawn(&output, &[]);
    assert_counts(&output, &expected, "counts before the deletion", &log);

    delete_topic(&input).await;
    // librdkafka waits topic.metadata.propagation.max.ms (30 s) before it
    // takes a topic for deleted.
    failure(&mut child, "its source topic was deleted");
    assert!(
        logged(&format!("topic `{input}` does not exist"))
            && logged("deleted while the application ran"),
        "the error names the deleted topic (log {})",
        log.display()
    );
    assert_eq!(counts(&bs, &output), expected, "counts after the stop");

    // More records than the state processed: their offsets alone cannot
    // tell the new topic from the old.
    create_topic(&input, 2).await;
    let mut fresh = BTreeMap::new();
    produce(&bs, &input, 2_000, &mut fresh);
    let mut child = spawn(&output, &[]);
    failure(&mut child, "a restart on the new topic");
    assert!(
        logged(&format!(
            "topic `{input}` was deleted and created again since"
        )) && logged("reset the application"),
        "the error names the topic and the remedy (log {})",
        log.display()
    );

    let recount = unique("recounts");
    create_topic(&recount, 1).await;
    let status = wait_for_exit(
        &mut spawn(&recount, &[("COUNT_APP_RESET", "1")]),
        Duration::from_secs(120),
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the reset: {status:?} (log {})",
        log.display()
    );
    let mut child = spawn(&recount, &[]);
    assert_counts_then_stop(
        &mut child,
        &recount,
        &fresh,
        "counts of the new topic after the reset",
        &log,
    );
}

/// A reset run on one machine (input offsets to the latest, internal
/// topics deleted, that machine's state wiped) leaves another machine's
/// state behind. That state's changelog checkpoint lies past the end of the
/// changelog created anew: it is not the log the state was written to, so
/// it is rebuilt from the changelog, and the restart counts only what came
/// after the reset. It once kept the old state, its counts and its
/// positions in the deleted topics: the restore found nothing to read past
/// its checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_rebuild_state_left_behind_by_a_reset_run_on_another_machine() {
    let (app, input, output) = (unique("stale"), unique("words"), unique("counts"));
    create_topic(&input, 2).await;
    create_topic(&output, 1).await;
    let (here, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = log_dir().join(format!("{app}.log"));
    let bs = bootstrap();
    let spawn = |state: &Path, env: &[(&str, &str)]| {
        Guard(spawn_count_app_env(&app, &input, &output, state, &log, env))
    };

    let mut before = BTreeMap::new();
    produce(&bs, &input, 1_000, &mut before);
    let mut child = spawn(here.path(), &[]);
    assert_counts_then_stop(
        &mut child,
        &output,
        &before,
        "counts before the reset",
        &log,
    );

    let status = wait_for_exit(
        &mut spawn(elsewhere.path(), &[("COUNT_APP_RESET", "latest")]),
        Duration::from_secs(120),
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the reset: {status:?} (log {})",
        log.display()
    );

    // Counts of the words after the reset only; a key counted before and
    // not after keeps its old record in the output topic.
    let mut after = BTreeMap::new();
    produce(&bs, &input, 500, &mut after);
    let mut want = before.clone();
    want.extend(after.iter().map(|(k, v)| (k.clone(), *v)));
    let mut child = spawn(here.path(), &[]);
    assert_counts_then_stop(&mut child, &output, &want, "counts after the reset", &log);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("the changelog ends before the local checkpoint"),
        "the rebuild is said (log {})",
        log.display()
    );
}

/// A source topic deleted and created again at once, while the program
/// runs, is not reported missing (librdkafka waits 30 s for that); it sees
/// the new topic's id and fetches the new log from the old position, finds
/// it out of range and moves the fetch to the log's start. The task once
/// took every record of the new log for one already processed (its offset
/// below the task's position) and dropped it, silently, for good. Now the
/// program stops with an error naming the input and the remedy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_stop_when_a_source_topic_is_replaced_under_it() {
    let (app, input, output) = (unique("replaced"), unique("words"), unique("counts"));
    create_topic(&input, 2).await;
    create_topic(&output, 1).await;
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{app}.log"));
    let bs = bootstrap();
    let mut expected = BTreeMap::new();
    produce(&bs, &input, 1_000, &mut expected);
    let mut child = Guard(spawn_count_app(
        &app,
        &input,
        &output,
        state.path(),
        &bs,
        None,
        &log,
    ));
    assert_counts(
        &output,
        &expected,
        "counts before the topic was replaced",
        &log,
    );

    delete_topic(&input).await;
    create_topic(&input, 2).await;
    produce(&bs, &input, 100, &mut BTreeMap::new());
    let status = wait_for_exit(&mut child, Duration::from_secs(120)).unwrap_or_else(|| {
        panic!(
            "the program still runs 120 s after its source topic was replaced (log {})",
            log.display()
        )
    });
    assert!(
        !status.success(),
        "a replaced source topic is a failed run: {status}"
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains(&format!("input {input}["))
            && logs.contains("a fetch found its log replaced")
            && logs.contains("reset the application"),
        "the error names the input and the remedy (log {})",
        log.display()
    );
    assert_eq!(counts(&bs, &output), expected, "counts after the stop");
}

/// The sum of the high watermarks of `topic`'s partitions: it counts
/// records of open transactions too (and transaction markers).
fn high_watermarks(topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = client_config().create().expect("consumer");
    let parts = partition_count(topic).expect("the topic exists") as i32;
    (0..parts)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .sum()
}

/// Sends words (as [`produce`]) at about 200 a second until `stop` is set;
/// returns them counted.
fn feed_until(
    topic: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<BTreeMap<Vec<u8>, i64>> {
    std::thread::spawn(move || {
        let mut sent = BTreeMap::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            produce(&bootstrap(), &topic, 20, &mut sent);
            std::thread::sleep(Duration::from_millis(100));
        }
        sent
    })
}

/// Adds `more` into `counts`.
fn add_counts(counts: &mut BTreeMap<Vec<u8>, i64>, more: BTreeMap<Vec<u8>, i64>) {
    for (k, n) in more {
        *counts.entry(k).or_insert(0) += n;
    }
}

/// A `count-app` of its own (`name` in its names), started exactly-once
/// with commits every `commit_ms` after 1,000 words were sent; returns it,
/// the words sent and the running program.
async fn exactly_once_after_words(
    name: &str,
    commit_ms: &str,
) -> (CountApp, BTreeMap<Vec<u8>, i64>, Guard) {
    let f = CountApp::new(name).await;
    let mut expected = BTreeMap::new();
    produce(&bootstrap(), &f.input, 1_000, &mut expected);
    let child = f.spawn(&[
        ("COUNT_APP_EXACTLY_ONCE", "1"),
        ("COUNT_APP_COMMIT_MS", commit_ms),
    ]);
    (f, expected, child)
}

/// An exactly-once instance paused (a laptop put to sleep) for longer than
/// its transaction and session timeouts, with no other instance to take
/// over: meanwhile the transaction coordinator aborts its open transaction
/// and fences its producer, and the group drops it. Woken, it finds its
/// transaction lost (fenced at the commit, or its records refused inside
/// the open transaction), aborts it or replaces its producer, rejoins,
/// reprocesses from its last commit and counts on exactly. It once stopped with "Fatal
/// error: This instance has been fenced by a newer instance", though no
/// other instance existed (Kafka Streams treats the fence as its tasks
/// having migrated and carries on).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_keep_counting_exactly_once_after_sleeping_past_its_transaction_timeout() {
    // Commits every 5 s: a transaction is open nearly all the time, so
    // the pause falls inside one.
    let (f, mut expected, mut child) = exactly_once_after_words("asleep", "5000").await;
    let (output, log, bs) = (&f.output, &f.log, bootstrap());
    assert_counts(output, &expected, "counts before the pause", log);
    let committed = high_watermarks(output);
    let stop_feed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = feed_until(f.input.clone(), stop_feed.clone());
    assert!(
        wait_until(Duration::from_secs(60), || high_watermarks(output)
            > committed),
        "records of a new transaction in the output (log {})",
        log.display()
    );
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGSTOP);
    }
    // The sleep itself, not a wait for Kafka: longer than the session
    // timeout (10 s) and than the transaction timeout (10 s) plus the
    // coordinator's check for expired transactions (every 10 s).
    std::thread::sleep(Duration::from_secs(25));
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGCONT);
    }
    stop_feed.store(true, std::sync::atomic::Ordering::Relaxed);
    add_counts(&mut expected, feeder.join().expect("the feeder"));
    produce(&bs, &f.input, 1_000, &mut expected);
    let exact = wait_until(Duration::from_secs(90), || {
        child.0.try_wait().ok().flatten().is_some() || counts(&bs, output) == expected
    });
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the instance kept running after its sleep (log {})",
        log.display()
    );
    assert!(
        exact,
        "counts after the pause: {} (log {})",
        diff_counts(&counts(&bs, output), &expected),
        log.display()
    );
    // How the lost transaction shows depends on timing: fenced at the
    // commit (the producer is replaced), or its records refused inside
    // the open transaction, which is then aborted (or, if the abort meets
    // the fence, the producer replaced).
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        [
            "replaced the fenced one",
            "aborting the failed transaction",
            "transaction aborted; reprocessing",
        ]
        .iter()
        .any(|m| text.contains(m)),
        "the instance found its transaction lost and rolled back (log {})",
        log.display()
    );
    let status = stop(&mut child.0);
    assert!(status.success(), "the stop: {status}");
}

/// Exactly-once with a commit interval longer than Kafka's default
/// transaction timeout (10 s): the transaction timeout is raised to fit
/// (twice the interval), so transactions last until their commit. With
/// the timeout left at 10 s, the coordinator aborted every transaction
/// before its commit and the instance stopped, fenced, 10 to 20 s in.
/// (Kafka Streams refuses to start with such settings.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_commit_exactly_once_at_a_commit_interval_longer_than_the_default_transaction_timeout(
) {
    // Longer than the transaction timeout plus the coordinator's check for
    // expired transactions (every 10 s): the first commit comes after the
    // coordinator would have aborted the transaction.
    let (f, expected, mut child) = exactly_once_after_words("slowcommit", "25000").await;
    let (output, log) = (&f.output, &f.log);
    assert_counts(output, &expected, "counts after the first commit", log);
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the instance is running (log {})",
        log.display()
    );
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        !text.contains("fenced"),
        "no transaction timed out (log {})",
        log.display()
    );
    let status = stop(&mut child.0);
    assert!(status.success(), "the stop: {status}");
}

/// An at-least-once instance A paused (SIGSTOP) past its session while
/// instance B takes its partitions over and counts everything; then A
/// wakes. At-least-once cannot fence A, and before the guard A's
/// producer sent the records it held at the pause as soon as it woke:
/// counts from its older state, after B's, so the output and the
/// changelogs ended at A's stale values (34 of 50 words in a measured
/// run). Now what A held times out unsent (its delivery timeout is
/// below the session timeout) and A sends nothing more until the group
/// confirms its partitions. The output must end at the true counts, and
/// so must the counts after a restart from the changelogs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_keep_a_paused_instances_stale_counts_out_under_at_least_once() {
    let f = CountApp::new("alos-paused").await;
    let bs = bootstrap();
    let mut expected = BTreeMap::new();
    produce(&bs, &f.input, 1_000, &mut expected);
    let mut a = f.spawn(&[]);
    assert_counts(&f.output, &expected, "counts before the pause", &f.log);
    // A burst, and the pause while A works through it: its producer holds
    // records and its consumer input it has not processed yet.
    produce(&bs, &f.input, 30_000, &mut expected);
    unsafe {
        libc::kill(a.0.id() as i32, libc::SIGSTOP);
    }
    let restores_of_a = restores_logged(&f.log).len();
    let state_b = tempfile::tempdir().unwrap();
    let log_b = log_dir().join(format!("{}-b.log", f.app));
    let mut b = Guard(spawn_count_app_env(
        &f.app,
        &f.input,
        &f.output,
        state_b.path(),
        &log_b,
        &[],
    ));
    let logs = format!("logs {} {}", f.log.display(), log_b.display());
    // A's session expires (10 s) and B restores all four tasks.
    assert!(
        wait_until(Duration::from_secs(90), || restores_logged(&log_b).len()
            >= 4),
        "B took every task over ({logs})"
    );
    assert_counts(&f.output, &expected, "B's counts", &log_b);
    unsafe {
        libc::kill(a.0.id() as i32, libc::SIGCONT);
    }
    // A rejoins and gets a task back (a restore logged after the wake):
    // whatever it held at the pause went out, or timed out, before that.
    assert!(
        wait_until(Duration::from_secs(90), || restores_logged(&f.log).len()
            > restores_of_a),
        "A rejoined the group ({logs})"
    );
    let got = counts(&bs, &f.output);
    assert_eq!(
        got,
        expected,
        "the output after A woke: {} ({logs})",
        diff_counts(&got, &expected)
    );
    let status = stop(&mut a.0);
    assert!(status.success(), "A's stop: {status}");
    let status = stop(&mut b.0);
    assert!(status.success(), "B's stop: {status}");
    // Restored from the changelogs by one instance (A's local state plus
    // the changelog's tail), one more of each word counts on from the
    // true values.
    let mut a = f.spawn(&[]);
    let words: Vec<Vec<u8>> = expected.keys().cloned().collect();
    let p = producer_at(&bs);
    for w in &words {
        send(&p, &f.input, None, w);
        *expected.entry(w.clone()).or_insert(0) += 1;
    }
    flush(&p);
    // Records librdkafka had built into a produce request before the
    // pause go out when A wakes, past both guards: changes from A's older
    // state after B's. The restore skips them (a change older than one
    // already applied to the same key, `task::late_writes`); applied, they
    // left 26 of 50 counts stale in one run of nine.
    let restart_exact = wait_until(Duration::from_secs(60), || {
        counts(&bs, &f.output) == expected
    });
    let got = counts(&bs, &f.output);
    let status = stop(&mut a.0);
    assert!(status.success(), "the restarted A's stop: {status}");
    assert!(
        restart_exact,
        "counts after a restart from the changelogs: {} ({logs})",
        diff_counts(&got, &expected)
    );
    let text = std::fs::read_to_string(&f.log).unwrap_or_default();
    eprintln!(
        "A after its pause: paused found {}, late changes skipped by a restore {}",
        text.contains("this process was paused"),
        text.contains("restore skipped changes older")
    );
}
