//! The tutorial's watchlist program on a real broker: SIGKILL crash loops,
//! two instances at once, and the classroom's SCRAM + ACL setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::*;
use rand::Rng;
use serde_json::Value;

const TEAM: &str = "team-1";

struct Setup {
    app: String,
    new_users: String,
    watchlist: String,
    logs: PathBuf,
}

async fn setup(name: &str) -> Setup {
    let s = Setup {
        app: unique(name),
        new_users: unique("new_users"),
        watchlist: unique("watchlist"),
        logs: log_dir(),
    };
    create_topic(&s.new_users, 2).await;
    create_compacted_topic(&s.watchlist, 2).await;
    s
}

fn common_args(s: &Setup, state: &Path) -> Vec<String> {
    vec![
        "--team".into(),
        TEAM.into(),
        "--application-id".into(),
        s.app.clone(),
        "--new-users-topic".into(),
        s.new_users.clone(),
        "--watchlist-topic".into(),
        s.watchlist.clone(),
        "--state-dir".into(),
        state.display().to_string(),
        "--bootstrap-servers".into(),
        bootstrap(),
    ]
}

fn spawn(bin: &str, args: &[String], log: &Path) -> Child {
    spawn_logged(bin, args, log)
}

fn fake_users(s: &Setup, count: u64, rate: u64, log: &Path) -> Child {
    let seed: u64 = rand::thread_rng().gen();
    let args: Vec<String> = vec![
        "--new-users-topic".into(),
        s.new_users.clone(),
        "--bootstrap-servers".into(),
        bootstrap(),
        "--count".into(),
        count.to_string(),
        "--rate".into(),
        rate.to_string(),
        "--seed".into(),
        seed.to_string(),
    ];
    spawn("fake-users", &args, log)
}

fn kill(child: &mut Child, signal: i32) {
    signal_and_wait(child, signal)
}

/// The counts the test computes itself from `new_users` with team-1's filter.
fn expected_counts(new_users: &str) -> BTreeMap<String, i64> {
    team1_counts(new_users)
}

/// The latest `flag_count` per company among team-1's watchlist records.
fn watchlist_counts(watchlist: &str) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for r in read_all(watchlist, Duration::from_secs(60)) {
        let v: Value =
            serde_json::from_slice(&r.value.unwrap_or_default()).expect("watchlist value is JSON");
        if v["team"] != TEAM {
            continue;
        }
        let company = v["company"].as_str().expect("company").to_string();
        assert_eq!(
            r.key.as_deref(),
            Some(company.as_bytes()),
            "watchlist records are keyed by the company"
        );
        m.insert(company, v["flag_count"].as_i64().expect("flag_count"));
    }
    m
}

fn wait_exact(s: &Setup, secs: u64) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let expected = expected_counts(&s.new_users);
    let mut got = BTreeMap::new();
    wait_until(Duration::from_secs(secs), || {
        got = watchlist_counts(&s.watchlist);
        got == expected
    });
    (expected, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_publish_exact_counts_through_sigkill_crashes_with_alerts() {
    let s = setup("wl-crash").await;
    let state = tempfile::tempdir().unwrap();
    let log = s.logs.join(format!("{}.log", s.app));
    let mut feeder = fake_users(
        &s,
        20_000,
        2_500,
        &s.logs.join(format!("{}-fake.log", s.app)),
    );
    let args = common_args(&s, state.path());
    let mut app = spawn("watchlist", &args, &log);
    let mut rng = rand::thread_rng();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(1000..2500)));
        kill(&mut app, libc::SIGKILL);
        app = spawn("watchlist", &args, &log);
    }
    assert!(feeder.wait().unwrap().success(), "fake-users failed");
    let (expected, got) = wait_exact(&s, 180);
    kill(&mut app, libc::SIGTERM);
    assert!(
        expected.len() > 100 && expected.values().any(|&n| n >= 3),
        "the data puts companies on the watchlist"
    );
    assert!(
        got == expected,
        "after 4 SIGKILLs: {} (log: {})",
        diff_counts(&got, &expected),
        log.display()
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    for (company, n) in expected.iter().filter(|(_, n)| **n >= 3) {
        assert!(
            logs.contains(&format!("ALERT: {company} has")),
            "no ALERT line for {company} ({n})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_publish_exact_counts_with_two_instances_in_one_group() {
    let s = setup("wl-two").await;
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = s.logs.join(format!("{}.log", s.app));
    let mut a = spawn("watchlist", &common_args(&s, s1.path()), &log);
    let mut b = spawn("watchlist", &common_args(&s, s2.path()), &log);
    let mut feeder = fake_users(
        &s,
        10_000,
        5_000,
        &s.logs.join(format!("{}-fake.log", s.app)),
    );
    assert!(feeder.wait().unwrap().success(), "fake-users failed");
    let (expected, got) = wait_exact(&s, 120);
    kill(&mut a, libc::SIGTERM);
    kill(&mut b, libc::SIGTERM);
    assert!(
        got == expected,
        "two instances: {} (log: {})",
        diff_counts(&got, &expected),
        log.display()
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.matches("restored read=").count() >= 4,
        "both instances ran tasks"
    );
}

/// The classroom: SCRAM user team-N with only the tutorial's ACLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_work_in_the_classroom_and_refuse_to_restart_counts_from_zero() {
    let s = setup("wl-class").await;
    let user = unique("team-1");
    let password = format!("pw-{}", unique("secret"));
    kafka_sh(&["user", &user, &password]);
    let principal = format!("User:{user}");
    kafka_sh(&[
        "acl",
        "--add",
        "--allow-principal",
        &principal,
        "--operation",
        "Read",
        "--operation",
        "Describe",
        "--topic",
        &s.new_users,
    ]);
    kafka_sh(&[
        "acl",
        "--add",
        "--allow-principal",
        &principal,
        "--operation",
        "Write",
        "--operation",
        "Describe",
        "--topic",
        &s.watchlist,
    ]);
    kafka_sh(&[
        "acl",
        "--add",
        "--allow-principal",
        &principal,
        "--operation",
        "Read",
        "--group",
        &s.app,
    ]);

    let mut feeder = fake_users(
        &s,
        3_000,
        10_000,
        &s.logs.join(format!("{}-fake.log", s.app)),
    );
    assert!(feeder.wait().unwrap().success());
    let state = tempfile::tempdir().unwrap();
    let log = s.logs.join(format!("{}.log", s.app));
    let mut args = common_args(&s, state.path());
    let sasl = vec![
        "--bootstrap-servers".to_string(),
        sasl_bootstrap(),
        "--security-protocol".into(),
        "SASL_PLAINTEXT".into(),
        "--sasl-mechanism".into(),
        "SCRAM-SHA-256".into(),
        "--username".into(),
        user.clone(),
    ];
    args.retain(|a| a != "--bootstrap-servers" && *a != bootstrap());
    args.extend(sasl);

    // Without --single-instance the repartition topic cannot be created: one clear line.
    let out = Command::new(workspace_bin("watchlist"))
        .args(&args)
        .env("KAFKA_PASSWORD", &password)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not authorized to Create")
            && err.contains("repartition")
            && err.contains("--single-instance"),
        "{err}"
    );

    args.push("--single-instance".into());
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut app = Command::new(workspace_bin("watchlist"))
        .args(&args)
        .env("KAFKA_PASSWORD", &password)
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap();
    let (expected, got) = wait_exact(&s, 120);
    kill(&mut app, libc::SIGTERM);
    assert!(
        got == expected,
        "classroom run: {} (log: {})",
        diff_counts(&got, &expected),
        log.display()
    );

    // Exactly-once needs a transactional id the classroom does not grant.
    let mut eos = args.clone();
    eos.extend(["--guarantee".to_string(), "exactly-once".to_string()]);
    let out = Command::new(workspace_bin("watchlist"))
        .args(&eos)
        .env("KAFKA_PASSWORD", &password)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not authorized to Write transactional id"),
        "{err}"
    );

    // Local state deleted and no Read on the watchlist: refuse to start from zero.
    std::fs::remove_dir_all(state.path()).unwrap();
    let out = Command::new(workspace_bin("watchlist"))
        .args(&args)
        .env("KAFKA_PASSWORD", &password)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must not start from zero");
    assert!(
        err.contains("not authorized to Read")
            && err.contains(&s.watchlist)
            && err.contains("--allow-empty-state"),
        "{err}"
    );

    let logs = std::fs::read_to_string(&log).unwrap() + &err;
    assert!(
        !logs.contains(&password),
        "the password appears in the logs"
    );
}
