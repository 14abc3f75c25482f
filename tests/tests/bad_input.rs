//! Bad input on a real broker: every malformed record is dead-lettered with
//! its coordinates, every valid edge case is counted, nothing is lost.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use apps::fake::Generator;
use apps::filters::for_team;
use apps::user::{User, WatchlistEntry};
use integration_tests::*;
use rand::Rng;

/// A malformed record of each kind, in turn.
fn bad_value(kind: usize, g: &mut Generator) -> Vec<u8> {
    let good = serde_json::to_vec(&g.user()).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
    match kind % 5 {
        0 => good[..good.len() / 3].to_vec(), // truncated JSON
        1 => {
            v["premium"] = serde_json::json!("yes"); // wrong type
            serde_json::to_vec(&v).unwrap()
        }
        2 => {
            v.as_object_mut().unwrap().remove("email"); // missing field
            serde_json::to_vec(&v).unwrap()
        }
        3 => {
            let mut b = good.clone(); // invalid UTF-8
            b.splice(10..10, [0xc3, 0x28, 0xff]);
            b
        }
        _ => Vec::new(), // empty value
    }
}

/// A valid user with an edge case of each kind, in turn.
fn edge_user(kind: usize, g: &mut Generator) -> (Option<Vec<u8>>, User) {
    let mut u = g.user();
    u.email = format!("edge{kind}@hotmail.com");
    match kind % 5 {
        0 => u.company_slogan = "x".repeat(1_000_000), // a 1 MB value
        1 => u.company_name = String::new(),           // empty company
        2 => u.company_name = "Ω".repeat(5_000),       // very long unicode company
        3 => return (Some("ключ-🔑".as_bytes().to_vec()), u), // unicode key
        _ => {}
    }
    (None, u) // null key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_dead_letter_exactly_the_bad_records_and_count_the_rest() {
    let (app, new_users, watchlist) = (unique("dlq"), unique("new_users"), unique("watchlist"));
    create_topic_with(&new_users, 2, &[("max.message.bytes", "2000000")]).await;
    create_compacted_topic(&watchlist, 2).await;
    let filter = for_team("team-1").unwrap();
    let mut g = Generator::new(rand::thread_rng().gen());
    let p = {
        let mut c = client_config();
        c.set("message.max.bytes", "2000000").set("linger.ms", "5");
        let p: TestProducer = c.create_with_context(DeliveryCheck::default()).unwrap();
        p
    };
    let (mut bad, mut expected) = (Vec::new(), BTreeMap::<String, i64>::new());
    let mut rng = rand::thread_rng();
    for i in 0..4_000usize {
        let (key, value) = if rng.gen_bool(0.05) {
            let v = bad_value(bad.len(), &mut g);
            bad.push(v.clone());
            (None, v)
        } else {
            let (k, u) = if i % 97 == 0 {
                edge_user(i / 97, &mut g)
            } else {
                (None, g.user())
            };
            if filter.matches(&u) {
                *expected.entry(u.company_name.clone()).or_insert(0) += 1;
            }
            (k, serde_json::to_vec(&u).unwrap())
        };
        send(&p, &new_users, key.as_deref(), &value);
    }
    flush(&p);
    assert!(bad.len() >= 150, "about 5% bad records");
    assert!(
        expected.contains_key("") && expected.keys().any(|k| k.len() >= 10_000),
        "edge companies are flagged"
    );

    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{app}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(workspace_bin("watchlist"))
        .args([
            "--team",
            "team-1",
            "--application-id",
            &app,
            "--new-users-topic",
            &new_users,
            "--watchlist-topic",
            &watchlist,
        ])
        .args([
            "--bootstrap-servers",
            &bootstrap(),
            "--state-dir",
            &state.path().display().to_string(),
        ])
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap();
    let dlq = format!("{app}-dlq");
    let mut got = BTreeMap::new();
    let done = wait_until(Duration::from_secs(120), || {
        got.clear();
        for r in read_all(&watchlist, Duration::from_secs(30)) {
            if let Some(e) = r.value.and_then(|v| WatchlistEntry::from_json(&v)) {
                got.insert(e.company, e.flag_count);
            }
        }
        got == expected
            && partition_count(&dlq).is_some()
            && read_all(&dlq, Duration::from_secs(30)).len() >= bad.len()
    });
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(
        done,
        "counts or dead letters incomplete: {} of {} companies right (log {})",
        got.iter()
            .filter(|(k, v)| expected.get(*k) == Some(v))
            .count(),
        expected.len(),
        log.display()
    );
    assert!(
        status.success(),
        "the application kept running and stopped cleanly"
    );

    let letters = read_all(&dlq, Duration::from_secs(30));
    let mut dead: Vec<Vec<u8>> = letters
        .iter()
        .map(|r| r.value.clone().unwrap_or_default())
        .collect();
    let mut want = bad.clone();
    dead.sort();
    want.sort();
    assert_eq!(
        dead.len(),
        want.len(),
        "the dead-letter topic holds exactly the bad records"
    );
    assert!(dead == want, "dead letters keep the original bytes");
    for r in &letters {
        let h: BTreeMap<&str, String> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        assert_eq!(h.get("dlq.topic"), Some(&new_users));
        assert!(
            h.get("dlq.offset")
                .is_some_and(|o| o.parse::<i64>().is_ok()),
            "offset header"
        );
        assert!(
            h.get("dlq.partition")
                .is_some_and(|o| o.parse::<i32>().is_ok()),
            "partition header"
        );
        assert!(
            h.get("dlq.error")
                .is_some_and(|e| e.contains("cannot deserialize")),
            "error header: {h:?}"
        );
    }
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("sent to the dead-letter topic"),
        "each bad record is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_stop_at_the_first_bad_record_with_fail_fast_and_name_it() {
    let (app, new_users, watchlist) =
        (unique("failfast"), unique("new_users"), unique("watchlist"));
    create_topic(&new_users, 1).await;
    create_compacted_topic(&watchlist, 1).await;
    let p = producer();
    let mut g = Generator::new(5);
    for _ in 0..50 {
        send(
            &p,
            &new_users,
            None,
            &serde_json::to_vec(&g.user()).unwrap(),
        );
    }
    send(&p, &new_users, Some(b"bad-key"), br#"{"email": "trunc"#);
    for _ in 0..50 {
        send(
            &p,
            &new_users,
            None,
            &serde_json::to_vec(&g.user()).unwrap(),
        );
    }
    flush(&p);
    let state = tempfile::tempdir().unwrap();
    let fail_fast = |policy: &str, secs: u64| {
        Command::new("timeout")
            .args(["-s", "TERM", &secs.to_string()])
            .arg(workspace_bin("watchlist"))
            .args([
                "--team",
                "team-1",
                "--application-id",
                &app,
                "--new-users-topic",
                &new_users,
            ])
            .args([
                "--watchlist-topic",
                &watchlist,
                "--bootstrap-servers",
                &bootstrap(),
            ])
            .args([
                "--state-dir",
                &state.path().display().to_string(),
                "--on-error",
                policy,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    // fail-fast: stops by itself (well before the timeout) naming the record
    let out = fail_fast("fail-fast", 90);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exits with an error: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        line.contains(&format!("{new_users}:0:50")) && line.contains("deserialize"),
        "names topic:partition:offset and the error: {line}"
    );
    assert!(
        read_all(&format!("{app}-dlq"), Duration::from_secs(10)).is_empty(),
        "fail-fast dead-letters nothing"
    );
    // the same application with the default policy goes past it: one dead letter
    let args: Vec<String> = [
        "--team",
        "team-1",
        "--application-id",
        &app,
        "--new-users-topic",
        &new_users,
        "--watchlist-topic",
        &watchlist,
        "--bootstrap-servers",
        &bootstrap(),
        "--state-dir",
        &state.path().display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut child = Guard(spawn_logged(
        "watchlist",
        &args,
        &log_dir().join(format!("{app}.log")),
    ));
    let mut dlq = Vec::new();
    let arrived = wait_until(Duration::from_secs(60), || {
        dlq = read_all(&format!("{app}-dlq"), Duration::from_secs(10));
        !dlq.is_empty()
    });
    signal_and_wait(&mut child, libc::SIGTERM);
    assert!(arrived, "the bad record reached the dead-letter topic");
    assert_eq!(dlq.len(), 1, "the one bad record, once");
    assert_eq!(dlq[0].value.as_deref(), Some(&br#"{"email": "trunc"#[..]));
    let offset = dlq[0]
        .headers
        .iter()
        .find(|(k, _)| k == "dlq.offset")
        .map(|(_, v)| v.clone());
    assert_eq!(offset.as_deref(), Some(&b"50"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_keep_records_the_brokers_refuse_and_go_on() {
    use stream_core::runtime::{KafkaStreams, StreamsConfig};
    use stream_dsl::prelude::*;

    let (app, input, output) = (unique("refused"), unique("in"), unique("out"));
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    let b = StreamsBuilder::new();
    // "big…" values become 1.2 MB: more than the producer's message.max.bytes
    b.source(&input)
        .map_values(|v: String| {
            if v.starts_with("big") {
                "x".repeat(1_200_000)
            } else {
                v
            }
        })
        .to_topic(&output);
    let state = tempfile::tempdir().unwrap();
    let mut cfg = StreamsConfig::new(&app, &bootstrap());
    cfg.state_dir = state.path().to_path_buf();
    failure_logs::in_process_log();
    let streams = KafkaStreams::new(b.build().unwrap(), cfg).unwrap();
    let status = streams.status();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(streams.run(async move {
        let _ = rx.await;
    }));
    let p = producer();
    let mut small = Vec::new();
    for i in 0..30 {
        let v = if i % 10 == 3 {
            format!("big{i}")
        } else {
            format!("w{i}")
        };
        if !v.starts_with("big") {
            small.push(v.clone().into_bytes());
        }
        send(&p, &input, Some(format!("k{i}").as_bytes()), v.as_bytes());
    }
    flush(&p);
    let mut got = Vec::new();
    let complete = wait_until(Duration::from_secs(60), || {
        got = read_all(&output, Duration::from_secs(10))
            .into_iter()
            .filter_map(|r| r.value)
            .collect();
        (got.len() >= small.len() && status.production_errors() >= 3) || handle.is_finished()
    });
    let running = !handle.is_finished();
    let seen = format!(
        "{} of {} small records, {} refused; {} records processed, ready: {}, tasks {:?}",
        got.len(),
        small.len(),
        status.production_errors(),
        status.processed_total(),
        status.is_ready(),
        status.tasks()
    );
    let _ = tx.send(());
    let stopped = handle.await.expect("join");
    assert!(
        running,
        "the application kept going; it ended with {stopped:?} after {seen}"
    );
    assert!(complete, "{seen}");
    stopped.expect("stopped cleanly");
    assert_eq!(got, small, "every other record arrived, in order");
    assert_eq!(status.production_errors(), 3);
    let file = state.path().join(&app).join("production-errors.jsonl");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["topic"], serde_json::json!(output));
        assert_eq!(l["value_bytes"], 1_200_000);
        assert!(
            l["error"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("too large"),
            "{l}"
        );
    }
    let keys: Vec<&str> = lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["k3", "k13", "k23"]);
}
