//! The classroom for real: a broker with the classroom's SCRAM users and
//! ACLs (Read and Describe on `new_users`, Write and Describe on `actions`
//! and `watchlist`, Read on the team's one group, nothing else), and the
//! traps a team meets there: another program committing in the team's
//! group, quick restarts, a watchlist other teams wrote first, wrong
//! connection settings, and two copies of the team's program at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use integration_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

const TEAM: &str = "team-1";

/// A team's topics, group and SCRAM user with exactly the classroom's ACLs.
struct Classroom {
    group: String,
    new_users: String,
    actions: String,
    watchlist: String,
    user: String,
    password: String,
}

async fn classroom(name: &str) -> Classroom {
    let c = Classroom {
        group: unique(name),
        new_users: unique("new_users"),
        actions: unique("actions"),
        watchlist: unique("watchlist"),
        user: unique("team-1"),
        password: format!("pw-{}", unique("s")),
    };
    create_topic(&c.new_users, 2).await;
    create_topic(&c.actions, 2).await;
    create_compacted_topic(&c.watchlist, 2).await;
    kafka_sh(&["user", &c.user, &c.password]);
    let principal = format!("User:{}", c.user);
    let acl = |ops: &[&str], kind: &str, name: &str| {
        let mut args = vec!["acl", "--add", "--allow-principal", principal.as_str()];
        for op in ops {
            args.extend(["--operation", op]);
        }
        args.extend([kind, name]);
        kafka_sh(&args);
    };
    acl(&["Read", "Describe"], "--topic", &c.new_users);
    acl(&["Write", "Describe"], "--topic", &c.actions);
    acl(&["Write", "Describe"], "--topic", &c.watchlist);
    acl(&["Read"], "--group", &c.group);
    c
}

impl Classroom {
    /// The flags every program of the team takes (SASL, the team's group).
    fn args(&self, state: &Path) -> Vec<String> {
        [
            "--team",
            TEAM,
            "--application-id",
            &self.group,
            "--new-users-topic",
            &self.new_users,
            "--actions-topic",
            &self.actions,
            "--watchlist-topic",
            &self.watchlist,
            "--state-dir",
            &state.display().to_string(),
            "--bootstrap-servers",
            &sasl_bootstrap(),
            "--security-protocol",
            "SASL_PLAINTEXT",
            "--sasl-mechanism",
            "SCRAM-SHA-256",
            "--username",
            &self.user,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn spawn(&self, bin: &str, args: &[String], log: &Path) -> Guard {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Guard(
            Command::new(workspace_bin(bin))
                .args(args)
                .env("KAFKA_PASSWORD", &self.password)
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .spawn()
                .unwrap(),
        )
    }

    fn produce_users(&self, n: usize, seed: u64) {
        let p = producer();
        let mut g = apps::fake::Generator::new(seed);
        for _ in 0..n {
            send(
                &p,
                &self.new_users,
                None,
                &serde_json::to_vec(&g.user()).unwrap(),
            );
        }
        flush(&p);
    }

    /// Team 1's latest count per company on the watchlist.
    fn watchlist(&self) -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        for r in read_all(&self.watchlist, Duration::from_secs(60)) {
            let Ok(v) = serde_json::from_slice::<Value>(&r.value.unwrap_or_default()) else {
                continue;
            };
            if v["team"] == TEAM {
                m.insert(
                    v["company"].as_str().unwrap_or_default().to_string(),
                    v["flag_count"].as_i64().unwrap_or(-1),
                );
            }
        }
        m
    }

    /// Waits until the watchlist equals a recount of `new_users`.
    fn wait_exact(&self, secs: u64) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
        let want = team1_counts(&self.new_users);
        let mut got = BTreeMap::new();
        wait_until(Duration::from_secs(secs), || {
            got = self.watchlist();
            got == want
        });
        (want, got)
    }

    /// The group's committed offsets of `new_users`, summed (super user).
    fn committed_sum(&self) -> i64 {
        let mut cfg = client_config();
        cfg.set("group.id", &self.group);
        let c: BaseConsumer = cfg.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..2 {
            tpl.add_partition(&self.new_users, p);
        }
        let Ok(got) = c.committed_offsets(tpl, Duration::from_secs(10)) else {
            return -1;
        };
        got.elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    }
}

fn log_of(name: &str) -> std::path::PathBuf {
    log_dir().join(format!("{}.log", unique(name)))
}

fn stop(mut g: Guard) {
    signal_and_wait(&mut g, libc::SIGTERM);
}

/// Issue 1: watchlist, then the team's flagger in the same group, then the
/// watchlist again: no count is lost, and one warning line says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_keep_exact_counts_when_another_program_committed_in_the_team_group() {
    let c = classroom("cls-foreign").await;
    let state = tempfile::tempdir().unwrap();
    let log = log_of("cls-foreign");
    let mut wl = c.args(state.path());
    wl.push("--single-instance".into());
    c.produce_users(2_000, 1);
    let app = c.spawn("watchlist", &wl, &log);
    let (want, got) = c.wait_exact(120);
    assert_eq!(got, want, "first run: {}", diff_counts(&got, &want));
    stop(app);

    // The flagger, in the team's one group, reads on and commits.
    c.produce_users(2_000, 2);
    let flagger = c.spawn(
        "flagger",
        &c.args(tempfile::tempdir().unwrap().path()),
        &log,
    );
    assert!(
        wait_until(Duration::from_secs(120), || c.committed_sum() >= 4_000),
        "the flagger committed its offsets (log: {})",
        log.display()
    );
    stop(flagger);

    let app = c.spawn("watchlist", &wl, &log);
    let (want, got) = c.wait_exact(120);
    stop(app);
    assert_eq!(
        got,
        want,
        "after the flagger: {} (log {})",
        diff_counts(&got, &want),
        log.display()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    // The watchlist's warning (the flagger logs its own, continuing).
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("was committed by another") && l.contains("resuming at offset"))
        .collect();
    assert!(
        (1..=2).contains(&warnings.len()),
        "one warning line per moved partition naming both offsets: {warnings:?}"
    );
    assert!(
        !text.contains(&c.password),
        "the password appears in the log"
    );
}

/// Issue 3: five kill -9 + immediate restarts in single-instance mode are
/// never taken for a second instance, and the counts stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_never_take_a_quick_restart_for_a_second_instance() {
    let c = classroom("cls-restart").await;
    let state = tempfile::tempdir().unwrap();
    let log = log_of("cls-restart");
    let mut wl = c.args(state.path());
    wl.push("--single-instance".into());
    let mut app = c.spawn("watchlist", &wl, &log);
    for round in 0..5 {
        c.produce_users(600, 10 + round);
        std::thread::sleep(Duration::from_millis(1_500));
        signal_and_wait(&mut app, libc::SIGKILL);
        app = c.spawn("watchlist", &wl, &log);
    }
    let (want, got) = c.wait_exact(120);
    let alive = matches!(app.try_wait(), Ok(None));
    stop(app);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("another instance"),
        "a restart was taken for a second instance (log {})",
        log.display()
    );
    assert!(alive, "the last instance is still running");
    assert_eq!(got, want, "after 5 kill -9: {}", diff_counts(&got, &want));
}

/// Issues 4 and 5: another team wrote `watchlist` first; this team's first
/// run starts without flags, from the beginning of `new_users`, and the
/// compacted watchlist draws no compaction warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_start_a_first_run_without_flags_after_another_team_wrote_the_watchlist() {
    let c = classroom("cls-first").await;
    let p = producer();
    let other = br#"{"team":"team-2","company":"Acme Inc","flag_count":7}"#;
    send(&p, &c.watchlist, Some(b"Acme Inc"), other);
    flush(&p);
    c.produce_users(1_500, 3);
    let state = tempfile::tempdir().unwrap();
    let log = log_of("cls-first");
    let mut wl = c.args(state.path());
    wl.push("--single-instance".into());
    let mut app = c.spawn("watchlist", &wl, &log);
    let (want, got) = c.wait_exact(120);
    let alive = matches!(app.try_wait(), Ok(None));
    stop(app);
    assert!(alive, "the first run keeps running (log {})", log.display());
    assert_eq!(got, want, "first run: {}", diff_counts(&got, &want));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("allow-empty-state"), "{text}");
    assert!(
        !text.contains("is not compacted"),
        "false compaction warning"
    );
}

/// Issue 2: the team's one program for steps 3–5, run twice in the team's
/// group: 2 members, valid actions, the team's watchlist records, exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_run_steps_3_to_5_as_two_instances_of_one_program_in_the_team_group() {
    let c = classroom("cls-two").await;
    c.produce_users(1_500, 4);
    let log = log_of("cls-two");
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = c.spawn("classroom", &c.args(s1.path()), &log);
    let b = c.spawn("classroom", &c.args(s2.path()), &log);
    let members = || {
        let c2: BaseConsumer = client_config().create().unwrap();
        c2.fetch_group_list(Some(&c.group), Duration::from_secs(10))
            .ok()
            .and_then(|l| {
                l.groups()
                    .first()
                    .map(|g| (g.state().to_string(), g.members().len()))
            })
    };
    let mut seen = None;
    let two = wait_until(Duration::from_secs(90), || {
        seen = members();
        matches!(&seen, Some((s, 2)) if s == "Stable")
    });
    c.produce_users(1_500, 5);
    let (want, got) = c.wait_exact(120);
    // Actions go out beside the counts, not before them: read until every
    // flagged user's action is there (or the deadline).
    let flagged: i64 = want.values().sum();
    let mut actions = Vec::new();
    wait_until(Duration::from_secs(60), || {
        actions = read_all(&c.actions, Duration::from_secs(30));
        actions.len() as i64 >= flagged
    });
    stop(a);
    stop(b);
    assert!(
        two,
        "two members in the team's group, stable: {seen:?} (log {})",
        log.display()
    );
    assert_eq!(got, want, "two copies: {}", diff_counts(&got, &want));
    assert!(
        actions.len() as i64 >= flagged,
        "an action per flagged user: {} < {flagged}",
        actions.len()
    );
    for r in &actions {
        let v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        for f in ["customer", "type", "reason", "team"] {
            assert!(v[f].as_str().is_some_and(|s| !s.is_empty()), "{v}");
        }
        assert_eq!(v["team"], TEAM);
    }
}

fn run_for(c: &Classroom, args: &[String], secs: u64) -> Output {
    Command::new("timeout")
        .args(["-s", "TERM", &secs.to_string()])
        .arg(workspace_bin("flagger"))
        .args(args)
        .env("KAFKA_PASSWORD", &c.password)
        .output()
        .unwrap()
}

/// Issue 6: wrong connection settings, each one clear line with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_name_the_likely_cause_of_a_connection_failure_in_one_line() {
    let c = classroom("cls-conn").await;
    let state = tempfile::tempdir().unwrap();
    let base = c.args(state.path());
    let without = |flag: &str| -> Vec<String> {
        let mut v = base.clone();
        if let Some(i) = v.iter().position(|a| a == flag) {
            v.drain(i..i + 2);
        }
        v
    };
    let errors = |o: &Output| -> Vec<String> {
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| l.starts_with("error:"))
            .map(str::to_string)
            .collect()
    };
    // A SASL listener reached without SASL.
    let mut plain = without("--security-protocol");
    for f in ["--sasl-mechanism", "--username"] {
        let i = plain.iter().position(|a| a == f).unwrap();
        plain.drain(i..i + 2);
    }
    let e = errors(&run_for(&c, &plain, 60));
    assert!(
        e.len() == 1 && e[0].contains("expects SASL or TLS") && e[0].contains("SASL_PLAINTEXT"),
        "{e:?}"
    );
    // PLAIN, which the tutorial's docs mention, where only SCRAM is offered.
    let mut plain_mech = without("--sasl-mechanism");
    plain_mech.extend(["--sasl-mechanism".into(), "PLAIN".into()]);
    let e = errors(&run_for(&c, &plain_mech, 60));
    assert!(
        e.len() == 1
            && e[0].contains("do not support SASL mechanism PLAIN")
            && e[0].contains("SCRAM-SHA-256"),
        "{e:?}"
    );
    // A user name alone: the classroom's SASL settings, and it runs.
    let minimal = without("--security-protocol");
    let minimal: Vec<String> = {
        let mut v = minimal;
        let i = v.iter().position(|a| a == "--sasl-mechanism").unwrap();
        v.drain(i..i + 2);
        v
    };
    c.produce_users(200, 6);
    let o = run_for(&c, &minimal, 15);
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(errors(&o).is_empty(), "{text}");
    assert!(text.contains("using SASL_PLAINTEXT"), "{text}");
}

/// Step 1 piped into `head` (`consume | head -4`): it prints records until
/// the reader has had enough, then, at its next record, stops on its own,
/// successfully, instead of panicking on the closed pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_stop_quietly_when_step_1_is_piped_into_head() {
    use std::io::BufRead;
    let c = classroom("head").await;
    c.produce_users(50, 7);
    let state = tempfile::tempdir().unwrap();
    let log = log_of("consume-head");
    let mut child = Guard(
        Command::new(workspace_bin("consume"))
            .args(c.args(state.path()))
            .env("KAFKA_PASSWORD", &c.password)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let head: Vec<String> = lines.by_ref().take(4).map_while(Result::ok).collect();
    drop(lines);
    assert_eq!(head.len(), 4, "four lines printed (log {})", log.display());
    assert!(
        head[0].starts_with(&format!("{}:", c.new_users)) && head[1].starts_with("  email: "),
        "a record and its email: {head:?}"
    );
    // What was printed may all have fit in the pipe: the next record is
    // the first write that meets the closed pipe.
    c.produce_users(5, 8);
    let status = wait_for_exit(&mut child, Duration::from_secs(60));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "stopped by itself with status 0 once the pipe closed (log {})",
        log.display()
    );
}
