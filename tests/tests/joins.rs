//! Stream–table join on a real broker: `enrich-actions` (actions
//! left-joined with the users table, keyed by email through repartition
//! topics) through SIGKILL loops under both guarantees. Every action comes
//! out joined with the user it names; under exactly-once each exactly once
//! in a read_committed read; under at-least-once every copy is the same.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use apps::enrich::{EnrichedAction, UserSummary};
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
    Guard(spawn_logged("enrich-actions", &args, log))
}

/// Registers `count` fake users; returns them by email.
fn register(s: &Setup, count: u64) -> BTreeMap<String, UserSummary> {
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
    let mut users = BTreeMap::new();
    for r in read_all(&s.new_users, Duration::from_secs(60)) {
        if let Some(u) = r
            .value
            .and_then(|v| serde_json::from_slice::<User>(&v).ok())
        {
            // A later registration of the same email replaces the row.
            users.insert(
                u.email.clone(),
                UserSummary {
                    name: u.name,
                    company: u.company_name,
                    profession: u.profession,
                },
            );
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
    users: BTreeMap<String, UserSummary>,
    sent: BTreeMap<String, String>,
    got: BTreeMap<String, Vec<EnrichedAction>>,
    log: std::path::PathBuf,
}

fn crash_loop(guarantee: &str, kills: usize) -> Run {
    let rt = tokio::runtime::Handle::current();
    let s = tokio::task::block_in_place(|| rt.block_on(setup()));
    let state = tempfile::tempdir().unwrap().keep();
    let log = log_dir().join(format!("{}.log", s.app));
    let instance = unique("instance");
    let port = free_port();
    let http = format!("127.0.0.1:{port}");
    let users = register(&s, 1_500);
    let mut app = start(&s, &state, guarantee, &instance, &http, &log);
    // The table holds every user before the first action: a left join then
    // finds each user whatever the order the two topics are read in.
    let emails: Vec<String> = users.keys().cloned().collect();
    let store = apps::enrich::USERS_STORE;
    assert!(
        wait_until(Duration::from_secs(120), || emails.iter().all(|e| {
            get(&format!("http://{http}/stores/{store}/{e}")).is_some_and(|(code, _)| code == 200)
        })),
        "the users table filled (log {})",
        log.display()
    );
    let actions = act(&s, emails, 4_000, 400);
    let mut rng = rand::thread_rng();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.gen_range(800..2000)));
        signal_and_wait(&mut app, libc::SIGKILL);
        app = start(&s, &state, guarantee, &instance, &http, &log);
    }
    let sent = actions.join().expect("the action writer finished");
    let mut got = BTreeMap::new();
    wait_until(Duration::from_secs(120), || {
        got = enriched(&s.output);
        sent.keys().all(|r| got.contains_key(r))
    });
    signal_and_wait(&mut app, libc::SIGTERM);
    Run {
        users,
        sent,
        got,
        log,
    }
}

/// Every action came out, joined with the user it names.
fn check_joined(run: &Run) {
    let missing: Vec<_> = run
        .sent
        .keys()
        .filter(|r| !run.got.contains_key(*r))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} actions missing, e.g. {:?} (log {})",
        missing.len(),
        run.sent.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        run.log.display()
    );
    let wrong: Vec<_> = run
        .got
        .iter()
        .filter(|(reason, copies)| {
            let email = &run.sent[*reason];
            copies
                .iter()
                .any(|a| &a.customer != email || a.user.as_ref() != run.users.get(email))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} actions joined with the wrong user, e.g. {:?} (log {})",
        wrong.len(),
        wrong.iter().take(3).collect::<Vec<_>>(),
        run.log.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_join_every_action_with_its_user_exactly_once_through_a_sigkill_loop() {
    let run = crash_loop("exactly-once", 10);
    check_joined(&run);
    let repeated: BTreeSet<_> = run
        .got
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
        "joins exactly-once: {} actions joined once each",
        run.sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_join_every_action_with_its_user_under_at_least_once() {
    let run = crash_loop("at-least-once", 10);
    check_joined(&run);
    let repeats = run.got.values().filter(|v| v.len() > 1).count();
    eprintln!(
        "joins at-least-once: {} actions joined, {repeats} written more than once",
        run.sent.len()
    );
}
