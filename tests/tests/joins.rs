//! Joins on a real broker, through SIGKILL loops under both guarantees:
//! - stream–table: `enrich-actions` (actions left-joined with the users
//!   table, both re-keyed by email through repartition topics): every
//!   action comes out joined with the user it names;
//! - stream–stream: `flag-latency` (actions joined with the registrations
//!   of their user within 10 minutes): every (action, registration) pair
//!   comes out, with both timestamps.
//!
//! Under exactly-once each result exactly once in a read_committed read;
//! under at-least-once every copy of a result is the same.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use apps::enrich::{EnrichedAction, UserSummary};
use apps::latency::FlagLatency;
use apps::user::User;
use integration_tests::*;
use rand::Rng;

struct Setup {
    app: String,
    new_users: String,
    actions: String,
    output: String,
}

async fn setup() -> Setup {
    let s = Setup {
        app: unique("enrich"),
        new_users: unique("new_users"),
        actions: unique("actions"),
        output: unique("enriched"),
    };
    for t in [&s.new_users, &s.actions, &s.output] {
        create_topic(t, 2).await;
    }
    s
}

fn start(
    bin: &str,
    s: &Setup,
    state: &Path,
    guarantee: &str,
    instance: &str,
    http: &str,
    log: &Path,
) -> Guard {
    let args: Vec<String> = [
        "--team",
        "team-1",
        "--application-id",
        &s.app,
        "--new-users-topic",
        &s.new_users,
        "--actions-topic",
        &s.actions,
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
        "--http",
        http,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    Guard(spawn_logged(bin, &args, log))
}

/// Registers `count` fake users; returns their registrations by email (an
/// email the generator drew twice has two, in different partitions: which
/// one the table holds last depends on the order they were read in).
fn register(s: &Setup, count: u64) -> BTreeMap<String, Vec<UserSummary>> {
    let seed: u64 = rand::thread_rng().gen();
    let ok = Command::new(workspace_bin("fake-users"))
        .args(["--new-users-topic", &s.new_users])
        .args(["--bootstrap-servers", &bootstrap()])
        .args(["--count", &count.to_string()])
        .args(["--seed", &seed.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run fake-users")
        .success();
    assert!(ok, "fake-users registered the users");
    let mut users: BTreeMap<String, Vec<UserSummary>> = BTreeMap::new();
    for r in read_all(&s.new_users, Duration::from_secs(60)) {
        if let Some(u) = r
            .value
            .and_then(|v| serde_json::from_slice::<User>(&v).ok())
        {
            users.entry(u.email.clone()).or_default().push(UserSummary {
                name: u.name,
                company: u.company_name,
                profession: u.profession,
            });
        }
    }
    users
}

/// Writes `count` actions naming users of `emails` at about `rate` per
/// second from a thread, each with a unique reason `r<i>`; returns the
/// reason → email map the thread wrote once it finished.
fn act(
    s: &Setup,
    emails: Vec<String>,
    count: usize,
    rate: usize,
) -> std::thread::JoinHandle<BTreeMap<String, String>> {
    let topic = s.actions.clone();
    std::thread::spawn(move || {
        let p = producer();
        let mut rng = rand::thread_rng();
        let mut sent = BTreeMap::new();
        for i in 0..count {
            let email = emails[rng.gen_range(0..emails.len())].clone();
            let reason = format!("r{i}");
            let action = serde_json::json!({"customer": email, "type": "email", "reason": reason, "team": "team-1"});
            send(&p, &topic, None, action.to_string().as_bytes());
            sent.insert(reason, email);
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis((50_000 / rate) as u64));
            }
        }
        flush(&p);
        sent
    })
}

/// Every enriched action, by reason, in log order per partition.
fn enriched(output: &str) -> BTreeMap<String, Vec<EnrichedAction>> {
    let mut recs = read_all(output, Duration::from_secs(60));
    recs.sort_by_key(|r| (r.partition, r.offset));
    let mut m: BTreeMap<String, Vec<EnrichedAction>> = BTreeMap::new();
    for r in recs {
        if let Some(a) = r
            .value
            .and_then(|v| serde_json::from_slice::<EnrichedAction>(&v).ok())
        {
            m.entry(a.reason.clone()).or_default().push(a);
        }
    }
    m
}

struct Run {
    users: BTreeMap<String, Vec<UserSummary>>,
    sent: BTreeMap<String, String>,
    output: String,
    new_users: String,
    actions: String,
    log: std::path::PathBuf,
}

/// Runs `bin` through `kills` SIGKILLs while 4,000 actions arrive, after
/// 1,500 registrations; waits until `complete(output)` holds.
fn crash_loop(bin: &str, guarantee: &str, kills: usize, complete: impl Fn(&Run) -> bool) -> Run {
    let rt = tokio::runtime::Handle::current();
    let s = tokio::task::block_in_place(|| rt.block_on(setup()));
    let state = tempfile::tempdir().unwrap().keep();
    let log = log_dir().join(format!("{}.log", s.app));
    let instance = unique("instance");
    let port = free_port();
    let http = format!("127.0.0.1:{port}");
    let users = register(&s, 1_500);
    let mut app = start(bin, &s, &state, guarantee, &instance, &http, &log);
    let emails: Vec<String> = users.keys().cloned().collect();
    if bin == "enrich-actions" {
        // The table holds every user before the first action: a left join
        // then finds each user whatever order the two topics are read in.
        let store = apps::enrich::USERS_STORE;
        assert!(
            wait_until(Duration::from_secs(120), || emails.iter().all(|e| {
                get(&format!("http://{http}/stores/{store}/{e}")).is_some_and(|(code, body)| {
                    code == 200
                        && serde_json::from_str::<serde_json::Value>(&body)
                            .is_ok_and(|v| v["found"] == serde_json::Value::Bool(true))
                })
            })),
            "the users table filled (log {})",
            log.display()
        );
    }
    let actions = act(&s, emails, 4_000, 400);
    let mut rng = rand::thread_rng();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.gen_range(800..2000)));
        signal_and_wait(&mut app, libc::SIGKILL);
        app = start(bin, &s, &state, guarantee, &instance, &http, &log);
    }
    let sent = actions.join().expect("the action writer finished");
    let run = Run {
        users,
        sent,
        output: s.output.clone(),
        new_users: s.new_users.clone(),
        actions: s.actions.clone(),
        log,
    };
    wait_until(Duration::from_secs(120), || complete(&run));
    signal_and_wait(&mut app, libc::SIGTERM);
    run
}

/// Every action came out, joined with the user it names; returns them.
fn check_enriched(run: &Run) -> BTreeMap<String, Vec<EnrichedAction>> {
    let got = enriched(&run.output);
    let missing: Vec<_> = run.sent.keys().filter(|r| !got.contains_key(*r)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} actions missing, e.g. {:?} (log {})",
        missing.len(),
        run.sent.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        run.log.display()
    );
    let wrong: Vec<_> = got
        .iter()
        .filter(|(reason, copies)| {
            let email = &run.sent[*reason];
            let registrations = run.users.get(email).map(Vec::as_slice).unwrap_or_default();
            copies.iter().any(|a| {
                &a.customer != email || !a.user.as_ref().is_some_and(|u| registrations.contains(u))
            })
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} actions joined with the wrong user, e.g. {:?} (log {})",
        wrong.len(),
        wrong.iter().take(3).collect::<Vec<_>>(),
        run.log.display()
    );
    got
}

fn enriched_all(run: &Run) -> bool {
    let got = enriched(&run.output);
    run.sent.keys().all(|r| got.contains_key(r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_join_every_action_with_its_user_exactly_once_through_a_sigkill_loop() {
    let run = crash_loop("enrich-actions", "exactly-once", 10, enriched_all);
    let got = check_enriched(&run);
    let repeated: BTreeSet<_> = got
        .iter()
        .filter(|(_, v)| v.len() != 1)
        .map(|(r, _)| r.clone())
        .collect();
    assert!(
        repeated.is_empty(),
        "{} actions written more than once under exactly-once, e.g. {:?} (log {})",
        repeated.len(),
        repeated.iter().take(5).collect::<Vec<_>>(),
        run.log.display()
    );
    eprintln!(
        "stream-table exactly-once: {} actions joined once each",
        run.sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_join_every_action_with_its_user_under_at_least_once() {
    let run = crash_loop("enrich-actions", "at-least-once", 10, enriched_all);
    let got = check_enriched(&run);
    let repeats = got.values().filter(|v| v.len() > 1).count();
    eprintln!(
        "stream-table at-least-once: {} actions joined, {repeats} written more than once",
        run.sent.len()
    );
}

/// A pair: the action's reason and the registration's timestamp.
type Pair = (String, i64);

/// Every (action, registration) pair the inputs make: same email,
/// timestamps at most 10 minutes apart; with the number of pairs of
/// each key. The fake users repeat an email now and then, and two
/// registrations of one email in the same millisecond make two equal
/// pairs for each of its actions, both correct.
fn expected_pairs(run: &Run) -> BTreeMap<Pair, (FlagLatency, usize)> {
    let mut registered: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in read_all(&run.new_users, Duration::from_secs(60)) {
        if let Some(u) = r
            .value
            .and_then(|v| serde_json::from_slice::<User>(&v).ok())
        {
            registered.entry(u.email).or_default().push(r.timestamp);
        }
    }
    let mut pairs = BTreeMap::new();
    for r in read_all(&run.actions, Duration::from_secs(60)) {
        let Some(a) = r
            .value
            .and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok())
        else {
            continue;
        };
        let (Some(email), Some(reason)) = (a["customer"].as_str(), a["reason"].as_str()) else {
            continue;
        };
        for &at in registered.get(email).into_iter().flatten() {
            if (r.timestamp - at).abs() <= 600_000 {
                let want = FlagLatency {
                    customer: email.to_string(),
                    team: "team-1".into(),
                    reason: reason.to_string(),
                    registered_at: at,
                    flagged_at: r.timestamp,
                    latency_ms: r.timestamp - at,
                };
                pairs.entry((reason.to_string(), at)).or_insert((want, 0)).1 += 1;
            }
        }
    }
    pairs
}

/// Every pair written, in log order per partition.
fn latencies(output: &str) -> BTreeMap<Pair, Vec<FlagLatency>> {
    let mut recs = read_all(output, Duration::from_secs(60));
    recs.sort_by_key(|r| (r.partition, r.offset));
    let mut m: BTreeMap<Pair, Vec<FlagLatency>> = BTreeMap::new();
    for r in recs {
        if let Some(l) = r
            .value
            .and_then(|v| serde_json::from_slice::<FlagLatency>(&v).ok())
        {
            m.entry((l.reason.clone(), l.registered_at))
                .or_default()
                .push(l);
        }
    }
    m
}

/// Every expected pair came out at least as many times as the inputs make
/// it, right, and nothing else; returns each pair's copies written and the
/// number the inputs make.
fn check_latencies(run: &Run) -> BTreeMap<Pair, (Vec<FlagLatency>, usize)> {
    let want = expected_pairs(run);
    let mut got = latencies(&run.output);
    assert!(
        want.len() >= run.sent.len(),
        "every action has its registration: {} pairs",
        want.len()
    );
    let missing: Vec<_> = want
        .iter()
        .filter(|(p, (_, n))| got.get(*p).map_or(0, Vec::len) < *n)
        .map(|(p, _)| p)
        .collect();
    let extra: Vec<_> = got.keys().filter(|p| !want.contains_key(*p)).collect();
    let wrong: Vec<_> = got
        .iter()
        .filter(|(p, copies)| {
            want.get(*p)
                .is_some_and(|(w, _)| copies.iter().any(|c| c != w))
        })
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && wrong.is_empty(),
        "{} pairs missing (e.g. {:?}), {} unexpected (e.g. {:?}), {} wrong (e.g. {:?}) (log {})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first(),
        wrong.len(),
        wrong.first(),
        run.log.display()
    );
    want.into_iter()
        .map(|(p, (_, n))| {
            let copies = got.remove(&p).unwrap_or_default();
            (p, (copies, n))
        })
        .collect()
}

fn latencies_all(run: &Run) -> bool {
    let got = latencies(&run.output);
    run.sent
        .keys()
        .all(|r| got.keys().any(|(reason, _)| reason == r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_pair_every_action_with_its_registration_exactly_once_through_a_sigkill_loop() {
    let run = crash_loop("flag-latency", "exactly-once", 10, latencies_all);
    let got = check_latencies(&run);
    let repeated = got
        .values()
        .filter(|(copies, n)| copies.len() != *n)
        .count();
    assert_eq!(
        repeated,
        0,
        "pairs written more times than the inputs make them under exactly-once (log {})",
        run.log.display()
    );
    eprintln!(
        "stream-stream exactly-once: {} pairs, each as many times as the inputs make it",
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_pair_every_action_with_its_registration_under_at_least_once() {
    let run = crash_loop("flag-latency", "at-least-once", 10, latencies_all);
    let got = check_latencies(&run);
    let repeats = got.values().filter(|(copies, n)| copies.len() > *n).count();
    eprintln!(
        "stream-stream at-least-once: {} pairs, {repeats} written more than once",
        got.len()
    );
}
