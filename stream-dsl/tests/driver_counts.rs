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
