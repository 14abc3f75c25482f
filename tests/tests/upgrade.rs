//! The upgrade check on a real broker: a change it calls compatible (a
//! stateless step added before the grouping) restarts on the existing
//! local state — a tail restore, not a full one — and keeps exact counts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::*;
use stream_core::graph::{check_upgrade, TopologyDescription, Verdict};
use stream_core::runtime::{KafkaStreams, RuntimeError, RuntimeStatus, StreamsConfig};
use stream_dsl::prelude::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WORDS: u32 = 200;

fn version(input: &str, output: &str, v2: bool) -> stream_core::Topology {
    let b = StreamsBuilder::new();
    let words = b.source(input);
    let words = if v2 {
        words
            .filter(|_, w: &String| !w.is_empty())
            .map_values(|w| w.trim().to_string())
    } else {
        words
    };
    words
        .group_by(|_k, v| v.clone())
        .count(Materialized::as_store("counts"))
        .to_topic(output);
    b.build().unwrap()
}

struct Running {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), RuntimeError>>,
    status: Arc<RuntimeStatus>,
}

fn start(app: &str, topology: stream_core::Topology, state: &Path) -> Running {
    let mut cfg = StreamsConfig::new(app, &bootstrap());
    cfg.state_dir = state.to_path_buf();
    cfg.extra.insert("session.timeout.ms".into(), "6000".into());
    failure_logs::in_process_log();
    let streams = KafkaStreams::new(topology, cfg).unwrap();
    let status = streams.status();
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(streams.run(async move {
        let _ = rx.await;
    }));
    Running {
        stop,
        handle,
        status,
    }
}

async fn stop(r: Running) {
    let _ = r.stop.send(());
    r.handle.await.expect("join").expect("stopped cleanly");
}

async fn wait_for(output: &str, expected: &BTreeMap<Vec<u8>, i64>) -> BTreeMap<Vec<u8>, i64> {
    let (out, exp) = (output.to_string(), expected.clone());
    tokio::task::spawn_blocking(move || {
        let mut got = BTreeMap::new();
        wait_until(Duration::from_secs(120), || {
            got = counts_at(&bootstrap(), &out, Duration::from_secs(30));
            got == exp
        });
        got
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_restart_a_compatible_change_on_existing_state_with_exact_counts() {
    let (app, input, output) = (unique("upgrade"), unique("words"), unique("counts"));
    create_topic(&input, 2).await;
    create_topic(&output, 1).await;
    let state = tempfile::tempdir().unwrap();
    let mut expected = BTreeMap::new();
    produce_words(&bootstrap(), &input, 8_000, WORDS, &mut expected);

    // Release 1 runs and its description is saved.
    let saved = version(&input, &output, false).description(&app);
    let saved = TopologyDescription::from_json(&saved.to_json()).unwrap();
    let run = start(&app, version(&input, &output, false), state.path());
    let got = wait_for(&output, &expected).await;
    assert!(
        got == expected,
        "release 1: {}",
        diff_counts(&got, &expected)
    );
    stop(run).await;

    // Release 2 is checked against it: compatible.
    let report = check_upgrade(&saved, &version(&input, &output, true).description(&app));
    assert_eq!(report.verdict(), Verdict::Compatible, "{report}");
    assert_eq!(report.exit_code(), 0);

    // And restarts on the existing state: a tail restore, exact counts.
    produce_words(&bootstrap(), &input, 300, WORDS, &mut expected);
    let run = start(&app, version(&input, &output, true), state.path());
    let got = wait_for(&output, &expected).await;
    assert!(
        got == expected,
        "release 2: {}",
        diff_counts(&got, &expected)
    );
    let restores = run.status.restores();
    assert!(!restores.is_empty(), "restores recorded");
    assert!(
        restores.iter().all(|r| !r.full),
        "release 2 restored from scratch: {restores:?}"
    );
    let read: u64 = restores.iter().map(|r| r.read).sum();
    let held: u64 = restores.iter().map(|r| r.changelog_records).sum();
    assert!(
        read * 100 < held.max(1),
        "tail restore read {read} of {held} changelog records"
    );
    stop(run).await;
}
