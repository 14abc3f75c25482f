//! Scale-out: several instances coming and going over many partitions, and
//! a broker of a three-node cluster dying mid-run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use integration_tests::*;
use rand::Rng;

fn signal(child: &mut Child, sig: i32) {
    signal_and_wait(child, sig);
}

fn produce(bootstrap: &str, topic: &str, n: usize, expected: &mut BTreeMap<Vec<u8>, i64>) {
    produce_words(bootstrap, topic, n, 500, expected)
}

fn counts(bootstrap: &str, topic: &str) -> BTreeMap<Vec<u8>, i64> {
    counts_at(bootstrap, topic, Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_count_exactly_with_three_instances_coming_and_going() {
    let (app, input, output) = (unique("scale3"), unique("words"), unique("counts"));
    create_topic(&input, 6).await;
    create_topic(&output, 1).await;
    let states: Vec<PathBuf> = (0..3)
        .map(|_| tempfile::tempdir().unwrap().keep())
        .collect();
    let logs: Vec<PathBuf> = (0..3)
        .map(|i| log_dir().join(format!("{app}-{i}.log")))
        .collect();
    let bs = bootstrap();
    let mut running: Vec<Option<Child>> = (0..3)
        .map(|i| {
            Some(spawn_count_app(
                &app, &input, &output, &states[i], &bs, None, &logs[i],
            ))
        })
        .collect();
    let feeder_input = input.clone();
    let feeder = std::thread::spawn(move || {
        let mut expected = BTreeMap::new();
        for _ in 0..25 {
            produce(&bootstrap(), &feeder_input, 2_000, &mut expected);
            std::thread::sleep(Duration::from_millis(400));
        }
        expected
    });
    let mut rng = rand::thread_rng();
    let mut events = Vec::new();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(1000..2500)));
        let i = rng.gen_range(0..3);
        match running[i].take() {
            Some(mut c) => {
                let sig = if rng.gen_bool(0.5) {
                    libc::SIGKILL
                } else {
                    libc::SIGTERM
                };
                signal(&mut c, sig);
                events.push(format!(
                    "instance {i} {}",
                    if sig == libc::SIGKILL {
                        "killed"
                    } else {
                        "stopped"
                    }
                ));
            }
            None => {
                running[i] = Some(spawn_count_app(
                    &app, &input, &output, &states[i], &bs, None, &logs[i],
                ));
                events.push(format!("instance {i} started"));
            }
        }
    }
    for i in 0..3 {
        if running[i].is_none() {
            running[i] = Some(spawn_count_app(
                &app, &input, &output, &states[i], &bs, None, &logs[i],
            ));
            events.push(format!("instance {i} started"));
        }
    }
    let expected = feeder.join().unwrap();
    let mut got = BTreeMap::new();
    let ok = wait_until(Duration::from_secs(240), || {
        got = counts(&bs, &output);
        got == expected
    });
    for c in running.iter_mut().flatten() {
        signal(c, libc::SIGTERM);
    }
    println!("events: {}", events.join(", "));
    for (i, log) in logs.iter().enumerate() {
        let r: Vec<String> = restores_logged(log)
            .iter()
            .filter(|r| r.task.starts_with("1_"))
            .map(|r| format!("{}:{}", r.task, r.read))
            .collect();
        println!(
            "instance {i} restores (task:changelog records read): {}",
            r.join(" ")
        );
    }
    assert!(events.len() >= 5, "at least 5 kill/start events");
    assert_eq!(expected.values().sum::<i64>(), 50_000);
    assert!(
        ok,
        "{} of {} words wrong after {:?} (logs in {})",
        expected
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .count(),
        expected.len(),
        events,
        log_dir().display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_keep_counting_exactly_when_a_broker_of_three_dies() {
    let cluster = OwnCluster::start(24_000, 27_000, 3);
    let port = cluster.port;
    let bs = format!(
        "127.0.0.1:{port},127.0.0.1:{},127.0.0.1:{}",
        port + 10,
        port + 20
    );
    let (app, input, output) = (unique("brokers3"), unique("words"), unique("counts"));
    create_topic_rf(&bs, &input, 3, 3, &[("min.insync.replicas", "2")]).await;
    create_topic_rf(&bs, &output, 1, 3, &[("min.insync.replicas", "2")]).await;
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{app}.log"));
    let mut expected = BTreeMap::new();
    produce(&bs, &input, 5_000, &mut expected);
    let mut child = spawn_count_app(&app, &input, &output, state.path(), &bs, Some(3), &log);
    assert!(
        wait_until(Duration::from_secs(120), || counts(&bs, &output)
            == expected),
        "before the broker dies (log {})",
        log.display()
    );
    let started = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        started.lines().any(
            |l| l.contains("every broker that answers lists the topics created")
                && l.contains("brokers=3 not_answering=0")
        ),
        "the topics it created were waited for on all three brokers (log {})",
        log.display()
    );

    cluster.sh(&["node", "kill", "1"]);
    produce(&bs, &input, 5_000, &mut expected);
    let during = wait_until(Duration::from_secs(120), || {
        counts(&bs, &output) == expected
    });
    let alive = child.try_wait().unwrap().is_none();
    cluster.sh(&["node", "start", "1"]);
    let started = Instant::now();
    produce(&bs, &input, 5_000, &mut expected);
    let after = wait_until(Duration::from_secs(120), || {
        counts(&bs, &output) == expected
    });
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    cluster.sh(&["stop"]);
    println!(
        "caught up {:.1}s after the broker came back",
        started.elapsed().as_secs_f64()
    );
    assert!(
        alive,
        "the application kept running with a broker down (log {})",
        log.display()
    );
    assert!(
        during,
        "exact counts with one broker of three down (log {})",
        log.display()
    );
    assert!(
        after,
        "exact counts after the broker came back (log {})",
        log.display()
    );
    assert!(status.success());
}

/// Exactly-once through a restart of a cluster's only broker, down for
/// longer than the group session and the transaction timeout (10 s each):
/// the open transaction fails, the transaction calls time out ("retry call
/// to resume") and the coordinator may fence the producer while it
/// aborts. The instance must ride it out, as it does a broker of three
/// dying, and end with exact counts, with every librdkafka line of the
/// outage in its own log format.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_keep_counting_exactly_once_through_a_restart_of_its_only_broker() {
    let cluster = OwnCluster::start(27_000, 30_000, 1);
    let port = cluster.port;
    let bs = format!("127.0.0.1:{port}");
    let (app, input, output) = (unique("bounce"), unique("words"), unique("counts"));
    create_topic_rf(&bs, &input, 2, 1, &[]).await;
    create_topic_rf(&bs, &output, 1, 1, &[]).await;
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{app}.log"));
    let mut expected = BTreeMap::new();
    produce(&bs, &input, 3_000, &mut expected);
    let args = [
        app.clone(),
        input.clone(),
        output.clone(),
        state.path().display().to_string(),
        bs.clone(),
    ];
    let mut child = spawn_logged_env("count-app", &args, &log, &[("COUNT_APP_EXACTLY_ONCE", "1")]);
    let before = wait_until(Duration::from_secs(120), || {
        counts(&bs, &output) == expected
    });

    cluster.sh(&["node", "kill", "0"]);
    // The outage itself, not a wait for Kafka: longer than the session
    // and transaction timeouts, so both expire while the broker is away.
    std::thread::sleep(Duration::from_secs(15));
    let survived_outage = child.try_wait().unwrap().is_none();
    cluster.sh(&["node", "start", "0"]);
    let back = wait_until(Duration::from_secs(120), || cluster.sh_ok(&["status"]));
    produce(&bs, &input, 3_000, &mut expected);
    let after = wait_until(Duration::from_secs(180), || {
        child.try_wait().ok().flatten().is_some() || counts(&bs, &output) == expected
    });
    let alive = child.try_wait().unwrap().is_none();
    if alive {
        signal(&mut child, libc::SIGTERM);
    }
    let final_counts = counts(&bs, &output);
    cluster.sh(&["stop"]);
    assert!(
        before,
        "exact counts before the restart (log {})",
        log.display()
    );
    assert!(back, "the broker came back");
    assert!(
        survived_outage && alive,
        "the application kept running through the broker's restart (log {})",
        log.display()
    );
    assert!(after, "caught up after the restart (log {})", log.display());
    assert_eq!(
        final_counts,
        expected,
        "exact counts after the restart (log {})",
        log.display()
    );
    // Every client's librdkafka lines go through the application's log
    // format; the restore consumer's used to bypass it in librdkafka's own
    // (`%3|<time>|ERROR|…`), a burst of them after the outage.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let raw: Vec<&str> = text.lines().filter(|l| l.starts_with('%')).collect();
    assert!(
        raw.is_empty(),
        "{} librdkafka lines bypassed the log format, e.g. {:?} (log {})",
        raw.len(),
        raw.first(),
        log.display()
    );
}
