//! Crash-point testing of users' topologies: a processor that keeps its
//! count in a plain field is caught with the crash point named; the same
//! count kept in a store passes at every point under both guarantees.

use std::collections::{BTreeMap, HashMap};

use stream_core::KeyValueStore;
use stream_core::data::{DynData, downcast_ref};
use stream_core::driver::{CrashGuarantee, CrashPoint};
use stream_core::error::ProcessError;
use stream_core::processor::{Context, Processor};
use stream_core::record::Record;
use stream_dsl::prelude::*;

/// Counts records per key in a field: lost with the task at a crash.
#[derive(Default)]
struct FieldCount {
    counts: HashMap<String, i64>,
}

impl Processor for FieldCount {
    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let key = downcast_ref::<String>(&r.key, "field-count")?.clone();
        let n = self.counts.entry(key.clone()).or_insert(0);
        *n += 1;
        let value: DynData = Box::new(n.to_string());
        ctx.forward(Record::new(Box::new(key), value, r.timestamp));
        Ok(())
    }
}

/// The same count in the store `counts`.
struct StoreCount;

impl Processor for StoreCount {
    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let key = downcast_ref::<String>(&r.key, "store-count")?.clone();
        let mut store = ctx.store("counts")?;
        let n = store
            .get(key.as_bytes())?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
            + 1;
        store.put(key.as_bytes(), n.to_string().into_bytes())?;
        let value: DynData = Box::new(n.to_string());
        ctx.forward(Record::new(Box::new(key), value, r.timestamp));
        Ok(())
    }
}

fn field_count() -> TestDriver {
    let b = StreamsBuilder::new();
    b.source("in")
        .process::<String, String, _>(FieldCount::default, &[])
        .to_topic("out");
    TestDriver::new(b.build().unwrap(), "field-count")
}

fn store_count() -> TestDriver {
    let b = StreamsBuilder::new();
    b.add_store("counts");
    b.source("in")
        .process::<String, String, _>(|| StoreCount, &["counts"])
        .to_topic("out");
    TestDriver::new(b.build().unwrap(), "store-count")
}

fn inputs<F: Fn() -> TestDriver>(test: CrashTest<F>) -> CrashTest<F> {
    let keys = ["a", "b", "a", "c", "a", "b", "a", "c", "b", "a", "a", "b"];
    keys.iter()
        .enumerate()
        .fold(test, |t, (i, k)| t.input_str("in", k, "x", i as i64 + 1))
}

fn counts_of(inputs: &[CrashInput]) -> BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut n: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for r in inputs {
        *n.entry(r.key.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    let latest = n
        .into_iter()
        .map(|(k, c)| (k, c.to_string().into_bytes()))
        .collect();
    BTreeMap::from([("out".to_string(), latest)])
}

#[test]
fn should_catch_a_count_kept_in_a_field_and_name_the_crash_point() {
    let err = inputs(CrashTest::new(field_count).commit_every(5))
        .run()
        .expect_err("a count in a field does not survive a crash");
    // Crashes before the first commit replay everything and rebuild the
    // field; the first crash after a commit loses it.
    assert_eq!(
        err.point,
        CrashPoint {
            guarantee: CrashGuarantee::AtLeastOnce,
            after_records: 5,
            after_commit: true,
        },
        "{err}"
    );
    assert!(
        err.to_string().contains("crash after input record 5"),
        "{err}"
    );
    assert!(err.what.contains("`out`"), "{err}");
}

#[test]
fn should_catch_it_against_an_oracle_of_the_inputs_too() {
    let err = inputs(CrashTest::new(field_count).commit_every(4))
        .expect_latest(counts_of)
        .run()
        .expect_err("caught against the oracle");
    assert_eq!(err.point.after_records, 4, "{err}");
    assert!(err.what.contains("topic `out` key \"a\""), "{err}");
}

#[test]
fn should_catch_it_under_exactly_once_alone() {
    // Exactly-once compares outputs record by record: the restarted field
    // emits "1" where the run without crashes emitted a higher count.
    let err = inputs(CrashTest::new(field_count).commit_every(3))
        .guarantees(&[CrashGuarantee::ExactlyOnce])
        .run()
        .expect_err("caught");
    assert_eq!(err.point.guarantee, CrashGuarantee::ExactlyOnce);
    assert_eq!(
        (err.point.after_records, err.point.after_commit),
        (3, true),
        "{err}"
    );
    assert!(err.what.contains("record"), "{err}");
}

#[test]
fn should_pass_a_count_kept_in_a_store_at_every_point() {
    let report = inputs(CrashTest::new(store_count).commit_every(5))
        .expect_latest(counts_of)
        .run()
        .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(report.points, 2 * (12 + 2));
    // Without the oracle: stores and outputs against a run without crashes.
    let report = inputs(CrashTest::new(store_count).commit_every(3))
        .run()
        .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(report.points, 2 * (12 + 4));
}

#[test]
fn should_pass_the_dsl_count_through_a_repartition_topic() {
    let make = || {
        let b = StreamsBuilder::new();
        b.source("in")
            .group_by(|_, v: &String| v.clone())
            .count(Materialized::as_store("per-value"))
            .to_stream()
            .map_values(|n| n.to_string())
            .to_topic("out");
        TestDriver::new(b.build().unwrap(), "dsl-count").with_partitions("in", 3)
    };
    let mut test = CrashTest::new(make).commit_every(4).crash_every(2);
    for i in 0..30 {
        test = test.input_str("in", &format!("k{i}"), &format!("v{}", i % 4), i);
    }
    let report = test.run().unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(report.points, 2 * (15 + 7));
}
