//! Exactly-once on a real broker: a SIGKILL crash loop in which every
//! company's committed sequence of counts is exactly 1, 2, 3, …, a restart
//! that reads only the changelog's tail, a paused zombie that writes
//! nothing a read_committed consumer sees, and a restart with fewer stream
//! threads that aborts what the thread no longer run left open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use apps::filters::for_team;
use apps::user::{User, WatchlistEntry};
use integration_tests::*;
use rand::Rng;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

struct Setup {
    app: String,
    new_users: String,
    watchlist: String,
}

async fn setup(name: &str) -> Setup {
    let s = Setup {
        app: unique(name),
        new_users: unique("new_users"),
        watchlist: unique("watchlist"),
    };
    create_topic(&s.new_users, 2).await;
    create_compacted_topic(&s.watchlist, 2).await;
    s
}

/// Runs the watchlist on `state` with `guarantee` and the flags `more`,
/// its output appended to `log`.
fn watchlist(s: &Setup, state: &Path, guarantee: &str, more: &[&str], log: &Path) -> Child {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(workspace_bin("watchlist"));
    cmd.args([
        "--team",
        "team-1",
        "--application-id",
        &s.app,
        "--new-users-topic",
        &s.new_users,
    ])
    .args([
        "--watchlist-topic",
        &s.watchlist,
        "--bootstrap-servers",
        &bootstrap(),
    ])
    .args([
        "--state-dir",
        &state.display().to_string(),
        "--guarantee",
        guarantee,
    ]);
    cmd.args(more)
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .expect("spawn watchlist")
}

fn feed(s: &Setup, count: u64, rate: u64) -> Child {
    let seed: u64 = rand::thread_rng().gen();
    Command::new(workspace_bin("fake-users"))
        .args([
            "--new-users-topic",
            &s.new_users,
            "--bootstrap-servers",
            &bootstrap(),
        ])
        .args([
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fake-users")
}

fn signal(child: &Child, sig: i32) {
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn recount(new_users: &str) -> BTreeMap<String, i64> {
    let filter = for_team("team-1").unwrap();
    let mut m = BTreeMap::new();
    for r in read_all(new_users, Duration::from_secs(60)) {
        if let Some(u) = r
            .value
            .and_then(|v| serde_json::from_slice::<User>(&v).ok())
        {
            if filter.matches(&u) {
                *m.entry(u.company_name).or_insert(0) += 1;
            }
        }
    }
    m
}

/// Every company's committed `flag_count` values, in log order.
fn sequences(watchlist: &str) -> BTreeMap<String, Vec<i64>> {
    let mut m: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut recs = read_all(watchlist, Duration::from_secs(60));
    recs.sort_by_key(|r| (r.partition, r.offset));
    for r in recs {
        if let Some(e) = r
            .value
            .and_then(|v| WatchlistEntry::from_json(&v))
            .filter(|e| e.team == "team-1")
        {
            m.entry(e.company).or_default().push(e.flag_count);
        }
    }
    m
}

fn latest(seqs: &BTreeMap<String, Vec<i64>>) -> BTreeMap<String, i64> {
    seqs.iter()
        .filter_map(|(k, v)| v.last().map(|n| (k.clone(), *n)))
        .collect()
}

fn wait_final(s: &Setup, secs: u64) -> (BTreeMap<String, i64>, BTreeMap<String, Vec<i64>>) {
    let expected = recount(&s.new_users);
    let mut seqs = BTreeMap::new();
    wait_until(Duration::from_secs(secs), || {
        seqs = sequences(&s.watchlist);
        latest(&seqs) == expected
    });
    (expected, seqs)
}

fn crash_loop(
    guarantee: &str,
    kills: usize,
) -> (
    Setup,
    BTreeMap<String, i64>,
    BTreeMap<String, Vec<i64>>,
    PathBuf,
) {
    let rt = tokio::runtime::Handle::current();
    let s = tokio::task::block_in_place(|| rt.block_on(setup("eos")));
    let state = tempfile::tempdir().unwrap().keep();
    let log = log_dir().join(format!("{}.log", s.app));
    let instance = unique("instance");
    let mut feeder = feed(&s, 20_000, 1_500);
    let mut app = watchlist(
        &s,
        &state,
        guarantee,
        &["--group-instance-id", &instance],
        &log,
    );
    // The kills start once the first counts are committed, so that the
    // restarts have a changelog to restore from (on a loaded machine a
    // program can take longer to start than the gap between two kills).
    assert!(
        wait_until(Duration::from_secs(60), || !sequences(&s.watchlist)
            .is_empty()),
        "the first counts were committed (log {})",
        log.display()
    );
    let mut rng = rand::thread_rng();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.gen_range(600..1600)));
        signal(&app, libc::SIGKILL);
        let _ = app.wait();
        app = watchlist(
            &s,
            &state,
            guarantee,
            &["--group-instance-id", &instance],
            &log,
        );
    }
    assert!(feeder.wait().unwrap().success());
    let (expected, seqs) = wait_final(&s, 240);
    signal(&app, libc::SIGTERM);
    let _ = app.wait();
    (s, expected, seqs, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_commit_each_count_exactly_once_through_a_sigkill_loop() {
    let (s, expected, seqs, log) = crash_loop("exactly-once", 10);
    assert!(expected.values().any(|&n| n >= 3));
    assert_eq!(
        latest(&seqs),
        expected,
        "final counts (log {})",
        log.display()
    );
    for (company, seq) in &seqs {
        let want: Vec<i64> = (1..=seq.len() as i64).collect();
        assert_eq!(
            seq,
            &want,
            "{company}: committed counts must be 1, 2, 3, … with no repeat and no gap (log {})",
            log.display()
        );
    }
    // With the state directory intact, restarts read only the changelog's tail.
    let reads = restores_logged(&log);
    let (read, total) = restore_totals(&reads, 4);
    assert!(
        reads.len() > 4 && total > 0,
        "restores were logged: {reads:?}"
    );
    // A SIGKILL can lose the last commit's sled write (sled is flushed right
    // after each commit, not inside it), so a restart may re-read up to one
    // commit's changes per task; under load one commit can hold over a
    // thousand. The bound says: far from the whole changelog.
    assert!(
        read * 4 < total,
        "restarts read {read} of {total} changelog records (summed over {} restores): 25% or more",
        reads.len() - 4
    );
    assert!(
        reads.iter().skip(4).all(|r| r.read <= r.changelog_records),
        "no restart read more than its changelog: {reads:?}"
    );
    eprintln!(
        "tail restores read {read} of {total} changelog records ({:.2}%)",
        read as f64 * 100.0 / total as f64
    );
    report_matches(&s);
}

/// `watchlist-report` on a watchlist written with transactions: it finds
/// every count matching, and reads to the end of each topic without
/// waiting out its 120 s read limit (a transactional topic ends with a
/// commit marker, never delivered as a record: a read that waited for the
/// last offset as a record ran until that limit, twice a round).
fn report_matches(s: &Setup) {
    let started = std::time::Instant::now();
    let out = Command::new(workspace_bin("watchlist-report"))
        .args(["--team", "team-1", "--new-users-topic", &s.new_users])
        .args(["--watchlist-topic", &s.watchlist, "--wait-secs", "0"])
        .args(["--bootstrap-servers", &bootstrap()])
        .output()
        .expect("run watchlist-report");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("every count matches"),
        "watchlist-report: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(100),
        "watchlist-report read to the end of the topics in {took:?}: it waited for a record at the commit marker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_end_with_the_same_exact_counts_under_at_least_once() {
    let (_s, expected, seqs, log) = crash_loop("at-least-once", 10);
    assert_eq!(
        latest(&seqs),
        expected,
        "final counts (log {})",
        log.display()
    );
    let repeated = seqs
        .values()
        .filter(|seq| seq.windows(2).any(|w| w[1] <= w[0]))
        .count();
    eprintln!(
        "at-least-once: {repeated} of {} companies saw a repeated count",
        seqs.len()
    );
}

/// Runs instance A, pauses it (SIGSTOP) until B has taken every partition
/// over, wakes it, and returns the recount and the watchlist's sequences
/// once its last counts match (or 180 s pass), with both logs.
async fn paused_zombie(
    name: &str,
    guarantee: &str,
) -> (BTreeMap<String, i64>, BTreeMap<String, Vec<i64>>, String) {
    let s = setup(name).await;
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (log_a, log_b) = (
        log_dir().join(format!("{}-a.log", s.app)),
        log_dir().join(format!("{}-b.log", s.app)),
    );
    let logs = format!("logs {} {}", log_a.display(), log_b.display());
    let mut feeder = feed(&s, 12_000, 1_000);
    let mut a = watchlist(&s, sa.path(), guarantee, &[], &log_a);
    assert!(
        wait_until(Duration::from_secs(60), || restores_logged(&log_a).len()
            >= 4),
        "A started"
    );
    std::thread::sleep(Duration::from_millis(1500));
    signal(&a, libc::SIGSTOP);
    let mut b = watchlist(&s, sb.path(), guarantee, &[], &log_b);
    // A's session expires and B takes every partition over.
    assert!(
        wait_until(Duration::from_secs(90), || restores_logged(&log_b).len()
            >= 4),
        "B took the partitions over ({logs})"
    );
    signal(&a, libc::SIGCONT);
    assert!(feeder.wait().unwrap().success());
    let (expected, seqs) = wait_final(&s, 180);
    signal(&a, libc::SIGTERM);
    signal(&b, libc::SIGTERM);
    let _ = (a.wait(), b.wait());
    (expected, seqs, logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_let_a_paused_zombie_write_nothing_visible() {
    let (expected, seqs, logs) = paused_zombie("zombie", "exactly-once").await;
    assert_eq!(latest(&seqs), expected, "final counts ({logs})");
    for (company, seq) in &seqs {
        let want: Vec<i64> = (1..=seq.len() as i64).collect();
        assert_eq!(
            seq, &want,
            "{company}: the zombie's writes are visible ({logs})"
        );
    }
}

/// Feeds 300 users to the exactly-once watchlist run with `threads`
/// stream threads on `state`, and stops it once every count is readable.
fn feed_and_count(s: &Setup, state: &Path, threads: &str, log: &Path) {
    let mut feeder = feed(s, 300, 3_000);
    let mut app = watchlist(s, state, "exactly-once", &["--threads", threads], log);
    assert!(feeder.wait().unwrap().success());
    let (expected, seqs) = wait_final(s, 90);
    signal(&app, libc::SIGTERM);
    let _ = app.wait();
    assert_eq!(
        latest(&seqs),
        expected,
        "the counts with {threads} stream threads are readable (log {})",
        log.display()
    );
}

/// A restart under exactly-once with fewer stream threads than before
/// aborts the transaction that a thread no longer run left open under its
/// transactional id (`runtime/retired_ids.rs`). Left to the coordinator's
/// timeout (10 minutes here), it would hold every read_committed reader of
/// the partitions it wrote, the new counts included, at its first record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_abort_what_a_stream_thread_no_longer_run_left_open() {
    let s = setup("retired").await;
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{}.log", s.app));
    feed_and_count(&s, state.path(), "2", &log);

    // The second thread's id, with a transaction open over every partition
    // of the watchlist topic, as a kill in the middle of a commit leaves it.
    let instance = std::fs::read_to_string(state.path().join(&s.app).join("instance.id"))
        .expect("the instance id");
    let id = format!("{}-{}-1", s.app, instance.trim());
    let left: BaseProducer = client_config()
        .set("transactional.id", &id)
        .set("transaction.timeout.ms", "600000")
        .create()
        .expect("producer");
    left.init_transactions(Duration::from_secs(30))
        .expect("init");
    left.begin_transaction().expect("begin");
    for p in 0..2 {
        left.send(
            BaseRecord::to(&s.watchlist)
                .partition(p)
                .key("left-open")
                .payload("left-open"),
        )
        .expect("send");
    }
    left.flush(Duration::from_secs(30)).expect("flush");

    // One thread now: the new counts must become readable.
    feed_and_count(&s, state.path(), "1", &log);
    assert!(
        left.commit_transaction(Duration::from_secs(30)).is_err(),
        "the transaction left open was fenced"
    );
    let seen = read_all(&s.watchlist, Duration::from_secs(60));
    assert!(
        seen.iter()
            .all(|r| r.key.as_deref() != Some(&b"left-open"[..])),
        "the aborted records are not readable"
    );
}
