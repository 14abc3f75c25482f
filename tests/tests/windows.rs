//! Time windows on a real broker: the windowed watchlist through SIGKILL
//! loops under both guarantees. Every window's final count equals a
//! recount of the input by event time; under exactly-once each final
//! appears exactly once in a read_committed read; restarts with local
//! state read only the changelog's tail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use apps::filters::for_team;
use apps::user::User;
use apps::windowed_watchlist::WindowCount;
use integration_tests::*;
use rand::Rng;

/// Window size and grace: small windows, so that the run spans many and
/// windows close (and emit their finals) while the kills go on; a grace
/// well above the skew between the two upstream partitions after a
/// restart, so that no record is late.
const WINDOW_SECS: i64 = 2;
const GRACE_SECS: i64 = 10;
/// Window size of the interactive-query test: long enough that no window
/// boundary (a multiple of it since the epoch) falls near today.
const IQ_WINDOW_SECS: i64 = 1_000_000_000;
/// Kills that must land after the first final window is in the output.
const KILLS_AFTER_FINALS: usize = 3;

struct Setup {
    app: String,
    new_users: String,
    output: String,
}

async fn setup(name: &str) -> Setup {
    let s = Setup {
        app: unique(name),
        new_users: unique("new_users"),
        output: unique("windowed"),
    };
    create_topic(&s.new_users, 2).await;
    create_topic(&s.output, 2).await;
    s
}

fn start(s: &Setup, state: &Path, guarantee: &str, instance: &str, log: &Path) -> Guard {
    let (size, grace) = (WINDOW_SECS.to_string(), GRACE_SECS.to_string());
    start_with(
        s,
        state,
        guarantee,
        instance,
        log,
        &["--window-secs", &size, "--grace-secs", &grace],
    )
}

fn start_with(
    s: &Setup,
    state: &Path,
    guarantee: &str,
    instance: &str,
    log: &Path,
    extra: &[&str],
) -> Guard {
    let mut args: Vec<String> = [
        "--team",
        "team-1",
        "--application-id",
        &s.app,
        "--new-users-topic",
        &s.new_users,
        "--output",
        &s.output,
        "--bootstrap-servers",
        &bootstrap(),
        "--state-dir",
        &state.display().to_string(),
        "--guarantee",
        guarantee,
        "--group-instance-id",
        instance,
        "--idle-advance-secs",
        "2",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    Guard(spawn_logged("windowed-watchlist", &args, log))
}

fn feed(s: &Setup, count: u64, rate: u64) -> Child {
    let seed: u64 = rand::thread_rng().gen();
    Command::new(workspace_bin("fake-users"))
        .args(["--new-users-topic", &s.new_users])
        .args(["--bootstrap-servers", &bootstrap()])
        .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
        .args(["--seed", &seed.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fake-users")
}

type WindowKey = (String, i64);

/// Flagged users per (company, window start), from the input's timestamps.
fn recount(new_users: &str) -> BTreeMap<WindowKey, i64> {
    let filter = for_team("team-1").unwrap();
    let size = WINDOW_SECS * 1000;
    let mut m = BTreeMap::new();
    for r in read_all(new_users, Duration::from_secs(60)) {
        let Some(u) = r
            .value
            .and_then(|v| serde_json::from_slice::<User>(&v).ok())
        else {
            continue;
        };
        if filter.matches(&u) {
            let start = r.timestamp - r.timestamp % size;
            *m.entry((u.company_name, start)).or_insert(0) += 1;
        }
    }
    m
}

/// Every final count written, per window, in log order per partition.
fn finals(output: &str) -> BTreeMap<WindowKey, Vec<i64>> {
    let mut m: BTreeMap<WindowKey, Vec<i64>> = BTreeMap::new();
    let mut recs = read_all(output, Duration::from_secs(60));
    recs.sort_by_key(|r| (r.partition, r.offset));
    for r in recs {
        if let Some(w) = r
            .value
            .and_then(|v| serde_json::from_slice::<WindowCount>(&v).ok())
        {
            m.entry((w.company, w.window_start))
                .or_default()
                .push(w.flag_count);
        }
    }
    m
}

fn last(f: &BTreeMap<WindowKey, Vec<i64>>) -> BTreeMap<WindowKey, i64> {
    f.iter()
        .filter_map(|(k, v)| v.last().map(|n| (k.clone(), *n)))
        .collect()
}

struct Run {
    expected: BTreeMap<WindowKey, i64>,
    finals: BTreeMap<WindowKey, Vec<i64>>,
    late: usize,
    log: PathBuf,
}

fn crash_loop(guarantee: &str, kills: usize) -> Run {
    let rt = tokio::runtime::Handle::current();
    let s = tokio::task::block_in_place(|| rt.block_on(setup("windows")));
    let state = tempfile::tempdir().unwrap().keep();
    let log = log_dir().join(format!("{}.log", s.app));
    let instance = unique("instance");
    let mut feeder = feed(&s, 30_000, 1_000);
    let mut app = start(&s, &state, guarantee, &instance, &log);
    assert!(
        wait_until(Duration::from_secs(90), || !restores_logged(&log)
            .is_empty()),
        "the first instance started (log {})",
        log.display()
    );
    // At least `kills` kills, and at least KILLS_AFTER_FINALS of them once
    // finals are visible, so that closing windows is what the kills hit
    // however slowly a restart joins the group and fences its producer.
    let mut rng = rand::thread_rng();
    let (mut done, mut after_finals) = (0, 0);
    while done < kills || after_finals < KILLS_AFTER_FINALS {
        assert!(
            done < kills * 4,
            "windows closed and emitted finals while the kills went on: \
             {after_finals} kills after the first final in {done} (log {})",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(1000..2500)));
        // Read while the instance runs: a killed one's open transaction
        // holds read_committed readers back until it is fenced.
        if after_finals > 0 || !finals(&s.output).is_empty() {
            after_finals += 1;
        }
        signal_and_wait(&mut app, libc::SIGKILL);
        done += 1;
        app = start(&s, &state, guarantee, &instance, &log);
    }
    assert!(feeder.wait().unwrap().success());
    let expected = recount(&s.new_users);
    let mut got = BTreeMap::new();
    // Idle advance closes the last windows ~2 s after the input stops,
    // then stream time needs grace + one window of wall-clock time.
    wait_until(Duration::from_secs(180), || {
        got = finals(&s.output);
        last(&got) == expected
    });
    signal_and_wait(&mut app, libc::SIGTERM);
    let late = read_all(&format!("{}-dlq", s.app), Duration::from_secs(10))
        .iter()
        .filter(|r| {
            r.headers
                .iter()
                .any(|(k, v)| k == "dlq.stage" && v == b"late")
        })
        .count();
    Run {
        expected,
        finals: got,
        late,
        log,
    }
}

fn check_counts(run: &Run) {
    assert!(
        run.expected.len() > 20,
        "many windows: {}",
        run.expected.len()
    );
    assert_eq!(
        last(&run.finals),
        run.expected,
        "final counts per window ({}; {} late records; log {})",
        diff_windows(&last(&run.finals), &run.expected),
        run.late,
        run.log.display()
    );
}

fn diff_windows(got: &BTreeMap<WindowKey, i64>, want: &BTreeMap<WindowKey, i64>) -> String {
    let g: BTreeMap<Vec<u8>, i64> = got
        .iter()
        .map(|((c, s), n)| (format!("{c}@{s}").into_bytes(), *n))
        .collect();
    let w: BTreeMap<Vec<u8>, i64> = want
        .iter()
        .map(|((c, s), n)| (format!("{c}@{s}").into_bytes(), *n))
        .collect();
    diff_counts(&g, &w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_write_each_final_window_count_exactly_once_through_a_sigkill_loop() {
    let run = crash_loop("exactly-once", 10);
    check_counts(&run);
    let repeated: Vec<_> = run.finals.iter().filter(|(_, v)| v.len() != 1).collect();
    assert!(
        repeated.is_empty(),
        "each window's final appears once under exactly-once: {:?} (log {})",
        repeated.iter().take(5).collect::<Vec<_>>(),
        run.log.display()
    );
    let reads = restores_logged(&run.log);
    let (read, total) = restore_totals(&reads, 4);
    assert!(
        reads.len() > 4 && total > 0,
        "restores were logged: {reads:?}"
    );
    assert!(
        read * 4 < total,
        "restarts read {read} of {total} changelog records: only the tail (log {})",
        run.log.display()
    );
    eprintln!(
        "windows: {} windows exact; restarts read {read} of {total} changelog records",
        run.expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_end_with_exact_final_window_counts_under_at_least_once() {
    let run = crash_loop("at-least-once", 10);
    check_counts(&run);
    // A replayed final is the same final: every copy of a window's count agrees.
    let differing: Vec<_> = run
        .finals
        .iter()
        .filter(|(_, v)| v.windows(2).any(|w| w[0] != w[1]))
        .collect();
    assert!(
        differing.is_empty(),
        "a window's repeated finals differ: {:?} (log {})",
        differing.iter().take(5).collect::<Vec<_>>(),
        run.log.display()
    );
    let repeats = run.finals.values().filter(|v| v.len() > 1).count();
    eprintln!(
        "windows at-least-once: {} windows exact, {repeats} finals written more than once",
        run.expected.len()
    );
}

/// Interactive queries on the window store: every company's windows, by
/// time range, equal a recount of the input; the open windows wait in the
/// suppression buffer, whose size is a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_answer_window_queries_by_time_range_and_show_the_buffer_size() {
    let s = setup("windows-iq").await;
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{}.log", s.app));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let addr = format!("127.0.0.1:{port}");
    // Windows of 10^9 s: tumbling windows align to the epoch, so their
    // boundaries fall in 2001 and 2033 and none closes during the test
    // (a ten-minute window would close whenever the feed crossed a
    // wall-clock multiple of ten minutes).
    let window_secs = IQ_WINDOW_SECS.to_string();
    let mut app = start_with(
        &s,
        state.path(),
        "at-least-once",
        &unique("instance"),
        &log,
        &[
            "--http",
            &addr,
            "--window-secs",
            &window_secs,
            "--grace-secs",
            "0",
        ],
    );
    let mut feeder = feed(&s, 3_000, 3_000);
    assert!(feeder.wait().unwrap().success());
    let filter = for_team("team-1").unwrap();
    let size = IQ_WINDOW_SECS * 1000;
    let mut expected: BTreeMap<String, BTreeMap<i64, i64>> = BTreeMap::new();
    for r in read_all(&s.new_users, Duration::from_secs(60)) {
        if let Some(u) = r
            .value
            .and_then(|v| serde_json::from_slice::<User>(&v).ok())
        {
            if filter.matches(&u) {
                let start = r.timestamp - r.timestamp % size;
                *expected
                    .entry(u.company_name)
                    .or_default()
                    .entry(start)
                    .or_insert(0) += 1;
            }
        }
    }
    let open: i64 = expected.values().map(|w| w.len() as i64).sum();
    // The suppression buffer holds every open (company, window) once committed.
    let buffered = |text: &str| {
        metric_values(text, "streams_task_suppress_buffered")
            .iter()
            .sum::<f64>()
    };
    let ok = wait_until(Duration::from_secs(90), || {
        get(&format!("{base}/metrics")).is_some_and(|(_, t)| buffered(&t) as i64 == open)
    });
    let metrics = get(&format!("{base}/metrics"))
        .map(|(_, t)| t)
        .unwrap_or_default();
    assert!(
        ok,
        "suppress buffer metric {} != {open} open windows (log {})",
        buffered(&metrics),
        log.display()
    );
    for (company, windows) in expected.iter().take(40) {
        let url = format!(
            "{base}/stores/{}/{}?from=0",
            apps::windowed_watchlist::STORE,
            stream_core::http::encode_path(company)
        );
        let (code, body) = get_json(&url);
        assert_eq!(code, 200, "{url}: {body}");
        let got: BTreeMap<i64, i64> = body["windows"]
            .as_array()
            .unwrap_or_else(|| panic!("{url}: no windows: {body}"))
            .iter()
            .map(|w| (w["start"].as_i64().unwrap(), w["value"].as_i64().unwrap()))
            .collect();
        assert_eq!(&got, windows, "{company}: windows by query vs recount");
        let last = *windows.keys().last().unwrap();
        let (_, none) = get_json(&format!("{url}&to={}", windows.keys().next().unwrap() - 1));
        assert_eq!(
            none["windows"].as_array().map(Vec::len),
            Some(0),
            "a range before every window is empty"
        );
        let (_, after) = get_json(&format!(
            "{base}/stores/{}/{}?from={}",
            apps::windowed_watchlist::STORE,
            stream_core::http::encode_path(company),
            last + size
        ));
        assert_eq!(
            after["windows"].as_array().map(Vec::len),
            Some(0),
            "a range after every window is empty"
        );
    }
    // The status page's table shows the open windows, one row per key and window.
    let mut status = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), || {
        status = get_json(&format!("{base}/api/status")).1;
        status["views"][0]["rows"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    let rows = status["views"][0]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !rows.is_empty()
            && rows
                .iter()
                .all(|r| r["key"].as_str().is_some_and(|k| k.contains(" @ ["))),
        "windowed rows on the status page: {}",
        status["views"]
    );
    assert_eq!(status["views"][0]["entries"].as_i64(), Some(open));
    signal_and_wait(&mut app, libc::SIGTERM);
}
