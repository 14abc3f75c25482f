//! Standby replicas on a real broker: two instances of a count whose store
//! holds 1,000,000 keys; the owner is killed with SIGKILL; the survivor
//! takes the task over. With `num_standby_replicas=1` it reads under 1% of
//! the changelog (from its status), without standbys the whole changelog;
//! counts are exact either way.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::*;
use rdkafka::producer::BaseRecord;
use serde_json::Value;

const KEYS: u64 = 1_000_000;
const TASK: &str = "0_0";

struct Instance {
    child: Guard,
    port: u16,
}

fn spawn(
    app: &str,
    input: &str,
    output: &str,
    state: &Path,
    standbys: usize,
    log: &Path,
) -> Instance {
    let port = free_port();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(workspace_bin("count-app"))
        .args([
            app,
            input,
            output,
            &state.display().to_string(),
            &bootstrap(),
        ])
        .env("COUNT_APP_STANDBYS", standbys.to_string())
        .env("COUNT_APP_HTTP", format!("127.0.0.1:{port}"))
        // Sticky: the instance that joins second does not take the task
        // over, so the survivor never held it (as with Kafka Streams'
        // sticky assignor).
        .env("COUNT_APP_ASSIGNOR", "cooperative-sticky")
        .env("COUNT_APP_BY_KEY", "1")
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap();
    Instance {
        child: Guard(child),
        port,
    }
}

fn status(i: &Instance) -> Value {
    match get(&format!("http://127.0.0.1:{}/api/status", i.port)) {
        Some((200, body)) => serde_json::from_str(&body).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn task_state(i: &Instance) -> Option<String> {
    status(i)["tasks"]
        .as_array()?
        .iter()
        .find(|t| t["id"] == TASK)
        .and_then(|t| t["state"].as_str().map(str::to_string))
}

fn standby_lag(i: &Instance) -> Option<f64> {
    let (_, text) = get(&format!("http://127.0.0.1:{}/metrics", i.port))?;
    let lags: Vec<f64> = metric_values(&text, "streams_standby_lag_records");
    (!lags.is_empty()).then(|| lags.iter().sum())
}

/// The completed restores of the task on `i`: (read, changelog records, seconds).
fn restores(i: &Instance) -> Vec<(u64, u64, f64)> {
    let s = status(i);
    let Some(list) = s["restores"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter(|r| r["task"] == TASK && r["abandoned"] == false)
        .map(|r| {
            (
                r["read"].as_u64().unwrap_or(0),
                r["changelog_records"].as_u64().unwrap_or(0),
                r["seconds"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

fn fill_changelog(changelog: &str) {
    let p = bulk_producer(&bootstrap());
    let one = 1i64.to_be_bytes();
    for k in 0..KEYS {
        let key = format!("k{k}");
        let rec = BaseRecord::to(changelog)
            .partition(0)
            .key(key.as_bytes())
            .payload(one.as_slice());
        send_record(&p, rec).unwrap();
    }
    flush(&p);
}

fn words(input: &str, rounds: u64) {
    let p = producer();
    for _ in 0..rounds {
        for k in 0..100 {
            let key = format!("k{k}");
            send(&p, input, Some(key.as_bytes()), b"x");
        }
    }
    flush(&p);
}

fn exact(output: &str, count: i64) -> bool {
    let got = counts_at(&bootstrap(), output, Duration::from_secs(30));
    (0..100).all(|k| got.get(format!("k{k}").as_bytes()) == Some(&count))
}

/// One takeover; returns what the survivor read: (read, changelog records, seconds).
async fn failover(standbys: usize) -> (u64, u64, f64) {
    let (app, input, output) = (unique("standby"), unique("words"), unique("counts"));
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    let changelog = format!("{app}-counts-changelog");
    create_compacted_topic(&changelog, 1).await;
    let cl = changelog.clone();
    tokio::task::spawn_blocking(move || fill_changelog(&cl))
        .await
        .unwrap();
    let logs = log_dir();
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = spawn(
        &app,
        &input,
        &output,
        sa.path(),
        standbys,
        &logs.join(format!("{app}-a.log")),
    );
    let ok = wait_until(Duration::from_secs(120), || {
        task_state(&a).as_deref() == Some("running")
    });
    assert!(ok, "A never ran the task");
    let b = spawn(
        &app,
        &input,
        &output,
        sb.path(),
        standbys,
        &logs.join(format!("{app}-b.log")),
    );
    // The group settles: one runs the task; with standbys the other keeps
    // a copy (its lag reaches zero).
    let mut pair = None;
    let settled = wait_until(Duration::from_secs(180), || {
        let (x, y) = (task_state(&a), task_state(&b));
        let (owner, other) = match (x.as_deref(), y.as_deref()) {
            (Some("running"), _) => (&a, &b),
            (_, Some("running")) => (&b, &a),
            _ => return false,
        };
        let ready = if standbys > 0 {
            task_state(other).as_deref() == Some("standby") && standby_lag(other) == Some(0.0)
        } else {
            status(other)["ready"] == true
        };
        pair = Some(std::ptr::eq(owner, &a));
        ready
    });
    assert!(
        settled,
        "the group never settled: A {:?} B {:?}",
        task_state(&a),
        task_state(&b)
    );
    assert_eq!(pair, Some(true), "A kept the task (sticky assignment)");
    let (mut owner, survivor) = if pair == Some(true) { (a, b) } else { (b, a) };
    // New counts on top of the 1,000,000 restored ones, followed by the standby.
    words(&input, 20);
    assert!(
        wait_until(Duration::from_secs(60), || exact(&output, 21)),
        "counts before the kill"
    );
    if standbys > 0 {
        assert!(
            wait_until(Duration::from_secs(60), || standby_lag(&survivor)
                == Some(0.0)),
            "the standby never caught up"
        );
    }
    let before = restores(&survivor).len();
    signal_and_wait(&mut owner.child.0, libc::SIGKILL);
    let killed = Instant::now();
    let taken = wait_until(Duration::from_secs(120), || {
        restores(&survivor).len() > before
    });
    assert!(taken, "the survivor never took the task over");
    let took = killed.elapsed();
    words(&input, 1);
    assert!(
        wait_until(Duration::from_secs(60), || exact(&output, 22)),
        "counts after the takeover"
    );
    let (read, held, seconds) = restores(&survivor)[before];
    println!(
        "num_standby_replicas={standbys}: the survivor read {read} of {held} changelog records in {seconds:.2} s ({:.1} s after the kill, session timeout included)",
        took.as_secs_f64()
    );
    let mut survivor = survivor;
    signal_and_wait(&mut survivor.child.0, libc::SIGTERM);
    (read, held, seconds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_take_over_from_a_standby_reading_under_one_percent_of_the_changelog() {
    let (read, held, _) = failover(1).await;
    assert!(held >= KEYS, "changelog holds {held}");
    assert!(
        read * 100 < held,
        "with a standby the takeover read {read} of {held}"
    );
    let (read0, held0, _) = failover(0).await;
    assert!(
        read0 >= KEYS,
        "without standbys the takeover read {read0} of {held0}"
    );
}
