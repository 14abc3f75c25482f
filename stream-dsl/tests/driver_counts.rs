//! Repartitioned counts through the test driver: several partitions,
//! manual commits and crashes in the middle.

use std::collections::BTreeMap;

use stream_dsl::prelude::*;

fn topology() -> stream_core::Topology {
    let b = StreamsBuilder::new();
    b.source("words")
        .group_by(|_k, v| v.clone())
        .count(Materialized::as_store("counts"))
        .to_topic("counts");
    b.build().unwrap()
}

fn counts(d: &TestDriver) -> BTreeMap<String, i64> {
    d.latest_per_key("counts")
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k).unwrap(),
                i64::from_be_bytes(v.try_into().unwrap()),
            )
        })
        .collect()
}

#[test]
fn should_count_exactly_across_partitions_commits_and_crashes() {
    let mut d = TestDriver::new(topology(), "app")
        .with_partitions("words", 3)
        .with_auto_commit(false);
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..3000u32 {
        let w = format!("w{}", (i * 7919) % 97);
        d.pipe(
            "words",
            Some(format!("k{i}").as_bytes()),
            Some(w.as_bytes()),
        );
        *expected.entry(w).or_default() += 1;
        if i % 250 == 0 {
            d.commit().unwrap();
        }
        if i % 700 == 699 {
            d.crash_and_restart();
        }
    }
    d.commit().unwrap();
    assert_eq!(counts(&d), expected);
    let store: BTreeMap<String, i64> = d
        .store_entries("counts")
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k).unwrap(),
                i64::from_be_bytes(v.try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(store, expected);
}

/// An at-least-once instance paused while its task moved to another
/// writes, when it wakes, a change computed from its older state after
/// the new owner's (nothing fences a non-transactional producer). A
/// restore skips it: its input is older than that of the key's change
/// already applied, so the count restored is the newest one, not the
/// stale one.
#[test]
fn should_skip_a_late_changelog_write_when_restoring() {
    let mut d = TestDriver::new(topology(), "app");
    for _ in 0..5 {
        d.pipe("words", None, Some(b"a"));
    }
    let changelog = stream_core::graph::changelog_topic_name("app", "counts");
    let written = d.records(&changelog);
    assert_eq!(written.len(), 5, "one change per word");
    // The paused instance's change for the second word, arriving late.
    let late = written[1].clone();
    assert_eq!(late.value.as_deref(), Some(&2i64.to_be_bytes()[..]));
    d.pipe_with_headers(
        &changelog,
        late.key.as_deref(),
        late.value.as_deref(),
        late.headers,
    );
    d.crash_and_restart();
    d.pipe("words", None, Some(b"a"));
    assert_eq!(counts(&d).get("a"), Some(&6), "counted on from 5, not 2");
}
