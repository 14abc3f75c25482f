//! Global tables on a real broker: a fresh instance reads the whole
//! global table before its first output; the global reader follows later
//! changes; a restart with local state reads only the tail; an instance
//! that moves to an empty state directory rebuilds the table whole, and so
//! does one whose table's topic was created anew (stopped or running).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use integration_tests::*;

struct Setup {
    app: String,
    companies: String,
    users: String,
    output: String,
}

async fn setup() -> Setup {
    let s = Setup {
        app: unique("global"),
        companies: unique("companies"),
        users: unique("users"),
        output: unique("out"),
    };
    create_topic(&s.companies, 3).await;
    create_topic(&s.users, 2).await;
    create_topic(&s.output, 2).await;
    s
}

fn start(s: &Setup, state: &Path, log: &Path, http: &str) -> Guard {
    let args: Vec<String> = [&s.app, &s.companies, &s.users, &s.output]
        .iter()
        .map(|a| a.to_string())
        .chain([state.display().to_string(), bootstrap(), http.to_string()])
        .collect();
    Guard(spawn_logged("global-join-app", &args, log))
}

/// Writes companies `c0..c<n>` named `<name> <i>`.
fn companies(s: &Setup, n: usize, name: &str) {
    let p = producer();
    for i in 0..n {
        let (k, v) = (format!("c{i}"), format!("{name} {i}"));
        send(&p, &s.companies, Some(k.as_bytes()), v.as_bytes());
    }
    flush(&p);
}

/// Writes `ids` users naming companies `c0..c<companies>` round robin,
/// starting at user `from`.
fn users(s: &Setup, from: usize, n: usize, companies: usize) {
    let p = producer();
    for i in from..from + n {
        let key = format!("user-{i}");
        let company = format!("c{}", i % companies);
        send(&p, &s.users, Some(key.as_bytes()), company.as_bytes());
    }
    flush(&p);
}

fn outputs(topic: &str) -> Vec<String> {
    read_all(topic, Duration::from_secs(30))
        .into_iter()
        .filter_map(|r| r.value.map(|v| String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

fn restored_rows(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("global table restored"))
        .filter_map(|l| {
            l.split("read=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_hold_the_whole_global_table_before_the_first_output() {
    let s = setup().await;
    const COMPANIES: usize = 3_000;
    let p = producer();
    companies(&s, COMPANIES, "Company");
    // The users wait before the instance starts: its tasks could process
    // them at once, before a global table that were not read first.
    users(&s, 0, 2_000, COMPANIES);
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{}.log", s.app));
    let http = format!("127.0.0.1:{}", free_port());
    let mut app = start(&s, state.path(), &log, &http);
    let mut out = Vec::new();
    assert!(
        wait_until(Duration::from_secs(90), || {
            out = outputs(&s.output);
            out.len() >= 2_000
        }),
        "2,000 outputs (got {}; log {})",
        out.len(),
        log.display()
    );
    let unjoined = out.iter().filter(|o| o.ends_with("=?")).count();
    assert_eq!(
        unjoined,
        0,
        "every user met its company from the first output on (log {})",
        log.display()
    );
    assert_eq!(
        restored_rows(&log),
        vec![COMPANIES as u64],
        "the fresh instance read the table whole"
    );

    // The global reader follows changes while the instance runs.
    send(&p, &s.companies, Some(b"c1"), b"Renamed");
    flush(&p);
    let renamed = |out: &[String]| out.iter().filter(|o| *o == "c1=Renamed").count();
    assert!(
        wait_until(Duration::from_secs(60), || {
            users(&s, 2_000, 3, 3); // users 2001 names c1 (2001 % 3 = 0, 2002 % 3 = 1)
            renamed(&outputs(&s.output)) > 0
        }),
        "a later user sees the renamed company (log {})",
        log.display()
    );

    // A restart with local state reads only what it had not read.
    signal_and_wait(&mut app, libc::SIGKILL);
    let _app = start(&s, state.path(), &log, &http);
    assert!(
        wait_until(Duration::from_secs(60), || restored_rows(&log).len() == 2),
        "the restarted instance restored (log {})",
        log.display()
    );
    let reads = restored_rows(&log);
    assert!(reads[1] < 10, "the restart read only the tail: {reads:?}");
    drop(_app);

    // An instance on an empty state directory rebuilds the table whole.
    let moved = tempfile::tempdir().unwrap();
    let log2 = log_dir().join(format!("{}-moved.log", s.app));
    let http2 = format!("127.0.0.1:{}", free_port());
    let _moved = start(&s, moved.path(), &log2, &http2);
    assert!(
        wait_until(Duration::from_secs(60), || !restored_rows(&log2).is_empty()),
        "the moved instance restored (log {})",
        log2.display()
    );
    assert!(restored_rows(&log2)[0] >= COMPANIES as u64);
    let counts: BTreeMap<bool, usize> =
        outputs(&s.output).iter().fold(BTreeMap::new(), |mut m, o| {
            *m.entry(o.ends_with("=?")).or_default() += 1;
            m
        });
    assert_eq!(
        counts.get(&true),
        None,
        "no user ever missed its company: {counts:?}"
    );
}

/// A global table's topic deleted and created again while the instance is
/// stopped, with fewer records: the local copy's checkpoint lies past the
/// new topic's end. The copy was kept, and the new topic read into it from
/// its start, so a company the new topic lacks still joined with its old
/// name. Now the table is rebuilt from the new topic, as it is when the
/// topic no longer reaches back to the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_rebuild_a_global_table_whose_topic_was_created_anew() {
    replace_the_table_topic(true).await;
}

/// The same while the instance runs: librdkafka moved the reader to the
/// new topic's start and only logged it, and the old rows stayed. The
/// reader now takes that log line for what it is and rebuilds the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_rebuild_a_global_table_whose_topic_is_created_anew_while_it_runs() {
    replace_the_table_topic(false).await;
}

/// 300 companies joined; their topic deleted and created again with 10 of
/// them renamed (the instance stopped meanwhile if `stopped`); then a
/// renamed company joins with its new name, one the new topic lacks with
/// none, and no join ever sees an old name again.
async fn replace_the_table_topic(stopped: bool) {
    let s = setup().await;
    const OLD: usize = 300;
    companies(&s, OLD, "Old");
    users(&s, 0, OLD, OLD);
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{}.log", s.app));
    let http = format!("127.0.0.1:{}", free_port());
    let mut app = start(&s, state.path(), &log, &http);
    assert!(
        wait_until(Duration::from_secs(90), || outputs(&s.output).len() >= OLD),
        "{OLD} outputs before the topic is replaced (log {})",
        log.display()
    );
    if stopped {
        signal_and_wait(&mut app, libc::SIGTERM);
    }

    delete_topic(&s.companies).await;
    create_topic(&s.companies, 3).await;
    companies(&s, 10, "New");
    if stopped {
        app = start(&s, state.path(), &log, &http);
    }
    // User 300 names c0 (300 % 300), user 350 names c50 (350 % 300).
    let joined = |want: &str| outputs(&s.output).iter().any(|o| o == want);
    assert!(
        wait_until(Duration::from_secs(120), || {
            users(&s, OLD, 1, OLD);
            joined("c0=New 0")
        }),
        "a company of the new topic joins with its new name (log {})",
        log.display()
    );
    users(&s, 350, 1, OLD);
    assert!(
        wait_until(Duration::from_secs(60), || joined("c50=?")
            || joined("c50=Old 50")),
        "the user of a company the new topic lacks is joined (log {})",
        log.display()
    );
    let old = outputs(&s.output)
        .iter()
        .filter(|o| o.contains("=Old "))
        .count();
    drop(app);
    assert!(
        joined("c50=?") && old == OLD,
        "no row of the old topic outlives it: {old} joins with an old name, {OLD} before the topic was replaced (log {})",
        log.display()
    );
}
