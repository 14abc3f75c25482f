//! Timestamp order across a task's topics on a real broker: a stream–table
//! join (`bench-join`: clicks inner-joined with the users table) started
//! over input that is all there already, written in an order that is not
//! the records' timestamp order. Each click must meet the user's row as of
//! the click's timestamp, as in Kafka Streams: not a later row the
//! consumer happened to hand out first, and no row at all before the
//! first.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use integration_tests::*;
use rdkafka::producer::BaseRecord;

/// The topics of one test.
struct Setup {
    app: String,
    users: String,
    clicks: String,
    output: String,
}

async fn setup() -> Setup {
    let s = Setup {
        app: unique("order"),
        users: unique("users"),
        clicks: unique("clicks"),
        output: unique("joined"),
    };
    for t in [&s.users, &s.clicks, &s.output] {
        create_topic(t, 2).await;
    }
    s
}

/// An hour ago, in milliseconds: event time for the tests' records (a
/// timestamp older than the topics' retention would have them deleted).
fn base_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_millis() as i64 - 3_600_000
}

/// Sends `key` = `value` at timestamp `ts`.
fn send_at(p: &TestProducer, topic: &str, key: &str, value: &str, ts: i64) {
    let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
        .key(key.as_bytes())
        .payload(value.as_bytes())
        .timestamp(ts);
    send_record(p, rec).expect("send");
}

/// Starts the join over `s` and waits until `count` joined clicks are
/// readable; returns them as (user, page, company), and the log's path.
fn run_join(s: &Setup, count: usize, deadline: Duration) -> (Vec<[String; 3]>, PathBuf) {
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{}.log", s.app));
    let args: Vec<String> = [
        bootstrap(),
        s.app.clone(),
        s.users.clone(),
        s.clicks.clone(),
        s.output.clone(),
        state.path().display().to_string(),
    ]
    .to_vec();
    let _app = Guard(spawn_logged("bench-join", &args, &log));
    let mut out = Vec::new();
    let complete = wait_until(deadline, || {
        out = read_all(&s.output, Duration::from_secs(30));
        out.len() >= count
    });
    assert!(
        complete,
        "{} joined clicks of {count} (log {})",
        out.len(),
        log.display()
    );
    let joined = out
        .iter()
        .map(|r| {
            let j: serde_json::Value =
                serde_json::from_slice(r.value.as_deref().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("output record: {e}"));
            ["user", "page", "company"].map(|f| j[f].as_str().unwrap_or_default().to_string())
        })
        .collect();
    (joined, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_join_each_click_with_the_row_as_of_its_timestamp() {
    const USERS: usize = 400;
    let s = setup().await;
    // User i's records lie in its own 10 s of event time, after user
    // i - 1's (so every partition's timestamps rise, as a live topic's
    // do): rows "A" at +1 s and "B" at +3 s; clicks "before" at +0.5 s (no
    // row yet: an inner join drops it), "early" at +2 s (meets A) and
    // "late" at +4 s (meets B). The first half of the users have their
    // rows written before every click, the second half after: either way
    // the consumer hands one topic's records out long before the other's
    // timestamps say.
    let p = producer();
    let name = |i: usize| format!("user-{i}");
    let base = base_ms();
    let at = |i: usize, ms: i64| base + i as i64 * 10_000 + ms;
    let rows = |i: usize| {
        send_at(&p, &s.users, &name(i), "A", at(i, 1_000));
        send_at(&p, &s.users, &name(i), "B", at(i, 3_000));
    };
    let user_clicks = |i: usize| {
        send_at(&p, &s.clicks, &name(i), "before", at(i, 500));
        send_at(&p, &s.clicks, &name(i), "early", at(i, 2_000));
        send_at(&p, &s.clicks, &name(i), "late", at(i, 4_000));
    };
    for i in 0..USERS / 2 {
        rows(i);
    }
    for i in 0..USERS {
        user_clicks(i);
    }
    for i in USERS / 2..USERS {
        rows(i);
    }
    flush(&p);

    let (joined, log) = run_join(&s, 2 * USERS, Duration::from_secs(90));
    let mut by_click: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for [user, page, company] in joined {
        by_click.entry((user, page)).or_default().push(company);
    }
    let wrong: Vec<_> = by_click
        .iter()
        .filter(|((_, page), companies)| {
            let want = match page.as_str() {
                "early" => "A",
                "late" => "B",
                _ => "none",
            };
            companies.as_slice() != [want]
        })
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "each click meets the row as of its timestamp, once; wrong: {wrong:?} (log {})",
        log.display()
    );
    assert_eq!(
        by_click.len(),
        2 * USERS,
        "an early and a late click per user"
    );
}

/// More clicks than a partition holds for ordering (so their partitions
/// pause, and resume from the record after the last one held), written
/// before the rows they need but later in event time: every click joins
/// its user's row, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_join_a_backlog_of_clicks_written_before_their_rows_once_each() {
    const USERS: usize = 20_000;
    const CLICKS: usize = 60_000;
    let s = setup().await;
    let p = producer();
    let base = base_ms();
    for j in 0..CLICKS {
        let user = format!("user-{}", j % USERS);
        send_at(
            &p,
            &s.clicks,
            &user,
            &format!("p{j}"),
            base + 100_000 + j as i64,
        );
    }
    for i in 0..USERS {
        let (user, company) = (format!("user-{i}"), format!("company-{i}"));
        send_at(&p, &s.users, &user, &company, base + i as i64);
    }
    flush(&p);

    let (joined, log) = run_join(&s, CLICKS, Duration::from_secs(120));
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut twice = 0;
    for [user, page, company] in joined {
        if seen.insert(page, (user, company)).is_some() {
            twice += 1;
        }
    }
    assert_eq!(twice, 0, "no click joined twice (log {})", log.display());
    let wrong: Vec<_> = seen
        .iter()
        .filter(|(page, (user, company))| {
            let j: usize = page[1..].parse().unwrap_or(usize::MAX);
            *user != format!("user-{}", j % USERS) || *company != format!("company-{}", j % USERS)
        })
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "wrong joins: {wrong:?}");
    assert_eq!(seen.len(), CLICKS, "every click joined");
}
