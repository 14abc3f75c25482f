//! Application reset on the real broker: after a watchlist run, `--reset
//! --dry-run` lists the actions and changes nothing; the reset refuses
//! while an instance runs; after it, the same application id recounts
//! from scratch to the same exact counts, and `watchlist` and other teams'
//! topics are left alone.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::Duration;

use integration_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

const TEAM: &str = "team-1";

struct Setup {
    app: String,
    new_users: String,
    watchlist: String,
    other_team: String,
    state: tempfile::TempDir,
}

fn args(s: &Setup) -> Vec<String> {
    [
        "--team",
        TEAM,
        "--application-id",
        &s.app,
        "--new-users-topic",
        &s.new_users,
        "--watchlist-topic",
        &s.watchlist,
        "--state-dir",
        &s.state.path().display().to_string(),
        "--bootstrap-servers",
        &bootstrap(),
        "--private-changelog",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

fn run_watchlist(s: &Setup, log: &Path) -> Child {
    spawn_logged("watchlist", &args(s), log)
}

fn reset(s: &Setup, extra: &[&str]) -> Output {
    let mut a = args(s);
    a.push("--reset".into());
    a.extend(extra.iter().map(|x| x.to_string()));
    Command::new(workspace_bin("watchlist"))
        .args(&a)
        .output()
        .expect("run watchlist --reset")
}

/// Team-1's watchlist records after `from` (offset per partition), in
/// order within each partition: (company, flag_count).
fn team_records(watchlist: &str, from: &BTreeMap<i32, i64>) -> Vec<(String, i64)> {
    read_all(watchlist, Duration::from_secs(60))
        .into_iter()
        .filter(|r| r.offset >= from.get(&r.partition).copied().unwrap_or(0))
        .filter_map(|r| serde_json::from_slice::<Value>(&r.value?).ok())
        .filter(|v| v["team"] == TEAM)
        .map(|v| {
            (
                v["company"].as_str().unwrap_or_default().to_string(),
                v["flag_count"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// The next offset of every partition of `topic` now.
fn ends(topic: &str) -> BTreeMap<i32, i64> {
    let mut m = BTreeMap::new();
    for r in read_all(topic, Duration::from_secs(60)) {
        m.insert(r.partition, r.offset + 1);
    }
    m
}

fn latest(records: &[(String, i64)]) -> BTreeMap<String, i64> {
    records.iter().cloned().collect()
}

fn committed(group: &str, topic: &str) -> Vec<Option<i64>> {
    let c: BaseConsumer = client_config().set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..2)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

fn topics() -> Vec<String> {
    let c: BaseConsumer = client_config().create().unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    md.topics().iter().map(|t| t.name().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_reset_and_recount_from_scratch_leaving_shared_topics_alone() {
    let s = Setup {
        app: unique("reset"),
        new_users: unique("new_users"),
        watchlist: unique("watchlist"),
        other_team: unique("team-2-actions"),
        state: tempfile::tempdir().unwrap(),
    };
    create_topic(&s.new_users, 2).await;
    create_compacted_topic(&s.watchlist, 2).await;
    create_topic(&s.other_team, 1).await;
    let p = producer();
    send(&p, &s.other_team, Some(b"k"), b"another team's record");
    let mut gen = apps::fake::Generator::new(17);
    // Keyed, so that both partitions hold users (and get a committed
    // offset): keyless records may all stick to one partition.
    for i in 0..1_500 {
        let u = serde_json::to_string(&gen.user()).unwrap();
        send(
            &p,
            &s.new_users,
            Some(format!("user-{i}").as_bytes()),
            u.as_bytes(),
        );
    }
    flush(&p);
    let expected = team1_counts(&s.new_users);
    assert!(expected.values().any(|&n| n >= 2), "{expected:?}");
    let flagged: i64 = expected.values().sum();

    // First run: exact counts.
    let logs = log_dir();
    let mut app = Guard(run_watchlist(&s, &logs.join(format!("{}-1.log", s.app))));
    let mut got = BTreeMap::new();
    let done = wait_until(Duration::from_secs(90), || {
        got = latest(&team_records(&s.watchlist, &BTreeMap::new()));
        got == expected
    });
    assert!(done, "first run: {}", diff_counts(&got, &expected));

    // While it runs, the reset refuses in one line.
    let out = reset(&s, &["--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "reset ran beside a live instance");
    assert!(err.contains("active member"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    signal_and_wait(&mut app.0, libc::SIGTERM);

    // The first run's committed offsets and internal topics.
    let changelog = format!("{}-watchlist-counts-changelog", s.app);
    let before_offsets = committed(&s.app, &s.new_users);
    assert_eq!(
        before_offsets.iter().flatten().sum::<i64>(),
        1_500,
        "{before_offsets:?}"
    );
    let internal: Vec<String> = topics()
        .into_iter()
        .filter(|t| t.starts_with(&format!("{}-", s.app)) && !t.ends_with("-dlq"))
        .collect();
    assert!(
        internal.len() >= 2,
        "changelog and repartition topic: {internal:?}"
    );

    // Dry run: every action listed, nothing changed.
    let out = reset(&s, &["--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (p, before) in before_offsets.iter().enumerate() {
        let want = format!(
            "seek   {}[{p}]: committed {} -> 0",
            s.new_users,
            before.unwrap()
        );
        assert!(text.contains(&want), "{want} in:\n{text}");
    }
    for t in &internal {
        assert!(
            text.contains(&format!("delete topic {t}")),
            "{t} in:\n{text}"
        );
    }
    assert!(text.contains("wipe   local state"), "{text}");
    assert!(
        !text.contains(&format!("delete topic {}\n", s.watchlist)),
        "{text}"
    );
    assert!(!text.contains(&s.other_team), "{text}");
    assert_eq!(
        committed(&s.app, &s.new_users),
        before_offsets,
        "dry run changed offsets"
    );
    assert!(topics().contains(&changelog), "dry run deleted {changelog}");

    // The reset.
    let out = reset(&s, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(committed(&s.app, &s.new_users), vec![Some(0), Some(0)]);
    let now = topics();
    for t in &internal {
        assert!(!now.contains(t), "{t} still exists");
    }
    assert!(now.contains(&s.watchlist), "watchlist was deleted");
    assert!(
        now.contains(&s.other_team),
        "another team's topic was deleted"
    );
    assert_eq!(read_all(&s.other_team, Duration::from_secs(30)).len(), 1);
    assert!(
        !s.state.path().join(&s.app).exists(),
        "local state not wiped"
    );
    let first_run = team_records(&s.watchlist, &BTreeMap::new());
    assert_eq!(
        first_run.len() as i64,
        flagged,
        "one watchlist update per flagged user"
    );
    let first_end = ends(&s.watchlist);

    // Second run: the same counts, counted again from 1.
    let mut app = Guard(run_watchlist(&s, &logs.join(format!("{}-2.log", s.app))));
    let mut again = Vec::new();
    let done = wait_until(Duration::from_secs(90), || {
        again = team_records(&s.watchlist, &first_end);
        latest(&again) == expected
    });
    assert!(done, "recount: {}", diff_counts(&latest(&again), &expected));
    assert_eq!(
        again.len() as i64,
        flagged,
        "every flagged user counted once more"
    );
    let mut seen: BTreeMap<&str, i64> = BTreeMap::new();
    for (company, n) in &again {
        let c = seen.entry(company).or_insert(0);
        *c += 1;
        assert_eq!(*n, *c, "{company} recounted from scratch");
    }
    signal_and_wait(&mut app.0, libc::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_refuse_to_reset_a_store_logged_to_the_shared_watchlist() {
    let s = Setup {
        app: unique("reset-shared"),
        new_users: unique("new_users"),
        watchlist: unique("watchlist"),
        other_team: String::new(),
        state: tempfile::tempdir().unwrap(),
    };
    create_topic(&s.new_users, 2).await;
    create_compacted_topic(&s.watchlist, 2).await;
    let mut a = args(&s);
    a.retain(|x| x != "--private-changelog");
    a.extend(["--reset".to_string(), "--dry-run".to_string()]);
    let out = Command::new(workspace_bin("watchlist"))
        .args(&a)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("logged to `{}`", s.watchlist)),
        "{err}"
    );
    assert!(err.contains("--private-changelog"), "{err}");
}
