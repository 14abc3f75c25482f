//! Record lineage on a real broker: for the watchlist's companies, the
//! input offsets served at `/stores/watchlist-counts/<company>/lineage`,
//! read back from `new_users`, are exactly that company's flagged
//! registrations (up to the depth) — after a SIGKILL and a full restore
//! from the changelog too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use integration_tests::*;
use serde_json::Value;

const TEAM: &str = "team-1";
const DEPTH: usize = 10;

struct Setup {
    app: String,
    new_users: String,
    watchlist: String,
    port: u16,
}

fn start(s: &Setup, state: &Path, log: &Path) -> Guard {
    let args: Vec<String> = [
        "--team",
        TEAM,
        "--application-id",
        &s.app,
        "--new-users-topic",
        &s.new_users,
        "--watchlist-topic",
        &s.watchlist,
        "--state-dir",
        &state.display().to_string(),
        "--bootstrap-servers",
        &bootstrap(),
        "--lineage",
        &DEPTH.to_string(),
        "--http",
        &format!("127.0.0.1:{}", s.port),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    Guard(spawn_logged("watchlist", &args, log))
}

/// Team-1's flagged registrations per company: (partition, offset).
fn flagged(new_users: &str) -> BTreeMap<String, BTreeSet<(i32, i64)>> {
    let mut m: BTreeMap<String, BTreeSet<(i32, i64)>> = BTreeMap::new();
    for r in read_all(new_users, Duration::from_secs(60)) {
        let Some(u) = r
            .value
            .and_then(|v| serde_json::from_slice::<Value>(&v).ok())
        else {
            continue;
        };
        let email = u["email"].as_str().unwrap_or_default().to_lowercase();
        if email.contains("hotmail") {
            let company = u["company_name"].as_str().unwrap_or_default().to_string();
            m.entry(company)
                .or_default()
                .insert((r.partition, r.offset));
        }
    }
    m
}

fn watchlist_counts(watchlist: &str) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for r in read_all(watchlist, Duration::from_secs(60)) {
        let Some(v) = r
            .value
            .and_then(|v| serde_json::from_slice::<Value>(&v).ok())
        else {
            continue;
        };
        if v["team"] == TEAM {
            let company = v["company"].as_str().unwrap_or_default().to_string();
            m.insert(company, v["flag_count"].as_i64().unwrap_or(-1));
        }
    }
    m
}

/// Checks every company's lineage against the registrations; returns how
/// many companies had more than `DEPTH` flagged users.
fn check(s: &Setup, want: &BTreeMap<String, BTreeSet<(i32, i64)>>, when: &str) -> usize {
    let mut deep = 0;
    for (company, regs) in want {
        let url = format!(
            "http://127.0.0.1:{}/stores/watchlist-counts/{}/lineage",
            s.port,
            company.replace(' ', "%20").replace('\'', "%27")
        );
        let (code, body) = get_json(&url);
        assert_eq!(code, 200, "{when}: {url}: {body}");
        let list = body["lineage"].as_array().cloned().unwrap_or_default();
        let got: Vec<(i32, i64)> = list
            .iter()
            .map(|e| {
                assert_eq!(e["topic"], s.new_users.as_str(), "{when}: {body}");
                (
                    e["partition"].as_i64().unwrap_or(-1) as i32,
                    e["offset"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        let got_set: BTreeSet<(i32, i64)> = got.iter().copied().collect();
        assert_eq!(
            got.len(),
            got_set.len(),
            "{when}: {company}: repeated entries {got:?}"
        );
        if regs.len() <= DEPTH {
            assert_eq!(&got_set, regs, "{when}: {company}");
        } else {
            deep += 1;
            assert_eq!(got.len(), DEPTH, "{when}: {company}");
            assert!(
                got_set.is_subset(regs),
                "{when}: {company}: {got:?} not in {regs:?}"
            );
        }
    }
    deep
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_trace_watchlist_counts_to_their_registrations_across_a_restore() {
    let s = Setup {
        app: unique("lineage"),
        new_users: unique("new_users"),
        watchlist: unique("watchlist"),
        port: free_port(),
    };
    create_topic(&s.new_users, 2).await;
    create_compacted_topic(&s.watchlist, 2).await;
    let p = producer();
    let mut gen = apps::fake::Generator::new(31);
    for _ in 0..3_000 {
        let u = serde_json::to_string(&gen.user()).unwrap();
        send(&p, &s.new_users, None, u.as_bytes());
    }
    flush(&p);
    let want = flagged(&s.new_users);
    let expected: BTreeMap<String, i64> = want
        .iter()
        .map(|(c, r)| (c.clone(), r.len() as i64))
        .collect();

    let state = tempfile::tempdir().unwrap();
    let logs = log_dir();
    let mut app = start(&s, state.path(), &logs.join(format!("{}-1.log", s.app)));
    let mut got = BTreeMap::new();
    let done = wait_until(Duration::from_secs(90), || {
        got = watchlist_counts(&s.watchlist);
        got == expected
    });
    assert!(done, "counts: {}", diff_counts(&got, &expected));
    check(&s, &want, "first run");

    // SIGKILL, local state gone: the store and its lineage come back from
    // the changelog (`watchlist`, whose records carry the lists).
    signal_and_wait(&mut app.0, libc::SIGKILL);
    std::fs::remove_dir_all(state.path().join(&s.app)).unwrap();
    let mut app = start(&s, state.path(), &logs.join(format!("{}-2.log", s.app)));
    // Ready, and running all four tasks (the killed member stays in the
    // group until its session times out, holding some partitions).
    let status = format!("http://127.0.0.1:{}/api/status", s.port);
    let ready = wait_until(Duration::from_secs(90), || {
        let Some((200, body)) = get(&status) else {
            return false;
        };
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let tasks = v["tasks"].as_array().cloned().unwrap_or_default();
        v["ready"] == true && tasks.len() == 4 && tasks.iter().all(|t| t["state"] == "running")
    });
    assert!(ready, "restarted instance never ran all four tasks");
    check(&s, &want, "after SIGKILL and a full restore");
    signal_and_wait(&mut app.0, libc::SIGTERM);
}
