//! A changelog whose log start moved past the local checkpoint (records
//! deleted under the application): detected at start, the store rebuilt
//! from what the changelog still has, one warning line naming the
//! partition and both offsets; the counts afterwards are what the
//! truncated changelog implies. An input position the input no longer
//! holds follows `auto.offset.reset`, said in one line.

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::*;
use rdkafka::admin::AdminOptions;
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};

const WARNING: &str = "the changelog no longer holds the records after the local checkpoint";

fn count_of(output: &str, key: &str) -> Option<i64> {
    counts_at(&bootstrap(), output, Duration::from_secs(30))
        .get(key.as_bytes())
        .copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn should_rebuild_a_store_whose_changelog_was_truncated_past_its_checkpoint() {
    let (app, input, output) = (unique("truncated"), unique("words"), unique("counts"));
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    // Kafka deletes records only from topics whose cleanup policy includes
    // `delete` (as a window store's changelog's does): create it so.
    let changelog = format!("{app}-counts-changelog");
    create_topic_with(
        &changelog,
        1,
        &[("cleanup.policy", "compact,delete"), ("retention.ms", "-1")],
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let log = log_dir().join(format!("{app}.log"));
    let p = producer();
    for i in 0..100 {
        send(&p, &input, None, format!("w{}", i % 10).as_bytes());
    }
    flush(&p);

    // First run: every word counted 10 times; a clean stop checkpoints.
    let mut run = Guard(spawn_count_app(
        &app,
        &input,
        &output,
        state.path(),
        &bootstrap(),
        None,
        &log,
    ));
    let done = wait_until(Duration::from_secs(90), || {
        (0..10).all(|w| count_of(&output, &format!("w{w}")) == Some(10))
    });
    assert!(done, "first run did not count (log {})", log.display());
    signal_and_wait(&mut run.0, libc::SIGTERM);
    let checkpoint_end = read_all(&changelog, Duration::from_secs(30)).len() as i64;
    assert_eq!(checkpoint_end, 100, "one changelog record per count update");

    // Twenty more changes arrive in the changelog (z0..z19 = 5), then the
    // records up to offset checkpoint + 10 are deleted: the ten changes
    // right after the checkpoint are gone.
    for z in 0..20 {
        let value = 5i64.to_be_bytes();
        let key = format!("z{z}");
        let rec = BaseRecord::to(&changelog)
            .partition(0)
            .key(key.as_bytes())
            .payload(value.as_slice());
        send_record(&p, rec).unwrap();
    }
    flush(&p);
    let mut upto = TopicPartitionList::new();
    upto.add_partition_offset(&changelog, 0, Offset::Offset(checkpoint_end + 10))
        .unwrap();
    let deleted = admin()
        .delete_records(&upto, &AdminOptions::new())
        .await
        .expect("delete records");
    let low = deleted
        .find_partition(&changelog, 0)
        .map(|e| (e.offset(), e.error()));
    assert_eq!(
        low,
        Some((Offset::Offset(checkpoint_end + 10), Ok(()))),
        "log start moved"
    );

    // The input loses records too: ten more arrive (offsets 100..109) and
    // those before 105 are deleted, under the committed position 100.
    for _ in 0..10 {
        send(&p, &input, None, b"q");
    }
    flush(&p);
    let mut upto = TopicPartitionList::new();
    upto.add_partition_offset(&input, 0, Offset::Offset(105))
        .unwrap();
    admin()
        .delete_records(&upto, &AdminOptions::new())
        .await
        .expect("delete input records");

    // Restart on the old local state.
    let mut run = Guard(spawn_count_app(
        &app,
        &input,
        &output,
        state.path(),
        &bootstrap(),
        None,
        &log,
    ));
    for w in ["w3", "z15", "z2"] {
        send(&p, &input, None, w.as_bytes());
    }
    flush(&p);
    // What the truncated changelog implies: z10..z19 = 5, nothing else.
    // The input resumes at its new log start (auto.offset.reset=earliest):
    // five `q`.
    let want: BTreeMap<&str, i64> = [("w3", 1), ("z15", 6), ("z2", 1), ("q", 5)]
        .into_iter()
        .collect();
    let mut got = BTreeMap::new();
    let done = wait_until(Duration::from_secs(90), || {
        got = want
            .keys()
            .map(|k| (*k, count_of(&output, k).unwrap_or(0)))
            .collect();
        got == want
    });
    signal_and_wait(&mut run.0, libc::SIGTERM);
    assert!(
        done,
        "counts after the rebuild: {got:?}, want {want:?} (log {})",
        log.display()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains(WARNING)).collect();
    assert_eq!(warnings.len(), 1, "one warning: {warnings:?}");
    let w = warnings[0];
    assert!(
        w.contains(&format!("{changelog}[0]"))
            && w.contains(&format!("checkpoint={checkpoint_end}"))
            && w.contains(&format!("log_start={}", checkpoint_end + 10)),
        "{w}"
    );
    let moved: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("out of range"))
        .collect();
    assert_eq!(moved.len(), 1, "one line for the input position: {moved:?}");
    assert!(
        moved[0].contains(&format!("{input}[0]"))
            && moved[0].contains("position=100")
            && moved[0].contains("log_start=105"),
        "{}",
        moved[0]
    );
}
