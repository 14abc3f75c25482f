//! Sliding windows in the test driver, against the expectations of Kafka
//! Streams' `KStreamSlidingWindowAggregateTest` (`testAggregateSmallInput`,
//! `testReduceSmallInput`: time difference 10 ms, grace 5 ms): every window
//! start with the set of (aggregate, timestamp) it emitted; emit-final; late
//! records; a crash in the middle.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use stream_core::serde::StringSerde;
use stream_dsl::prelude::*;

type Emitted = BTreeMap<i64, BTreeSet<(String, i64)>>;

fn windows() -> SlidingWindows {
    SlidingWindows::with_time_difference(Duration::from_millis(10)).grace(Duration::from_millis(5))
}

/// Writes `start → aggregate` with the record's timestamp to `out`.
fn sink(table: KTable<Windowed<String>, String>) {
    table
        .to_stream()
        .map(|w, v| (w.window.start.to_string(), v))
        .to_topic("out");
}

/// Kafka Streams' `MockInitializer.STRING_INIT` / `TOSTRING_ADDER`.
fn aggregating(final_only: bool) -> TestDriver {
    let b = StreamsBuilder::new();
    let table = b
        .source_with("in", Consumed::with(StringSerde, StringSerde))
        .group_by_key()
        .windowed_by(windows())
        .aggregate(
            || "0".to_string(),
            |_k, v: String, agg| format!("{agg}+{v}"),
            Materialized::as_store("sliding"),
        );
    sink(if final_only {
        table.suppress(Suppressed::until_window_closes())
    } else {
        table
    });
    TestDriver::new(b.build().unwrap(), "app")
}

fn emitted(d: &TestDriver) -> Emitted {
    let mut out = Emitted::new();
    for r in d.records("out") {
        let start: i64 = String::from_utf8(r.key.unwrap()).unwrap().parse().unwrap();
        let v = String::from_utf8(r.value.unwrap()).unwrap();
        out.entry(start).or_default().insert((v, r.timestamp));
    }
    out
}

fn expect(rows: &[(i64, &[(&str, i64)])]) -> Emitted {
    rows.iter()
        .map(|(start, vs)| {
            (
                *start,
                vs.iter().map(|(v, ts)| (v.to_string(), *ts)).collect(),
            )
        })
        .collect()
}

/// `testAggregateSmallInput`'s records of key `A`: value, timestamp.
const SMALL_INPUT: [(&str, i64); 7] = [
    ("1", 10),
    ("2", 10),
    ("3", 14),
    ("4", 15),
    ("5", 20),
    ("6", 22),
    ("7", 30),
];

fn pipe_small_input(d: &mut TestDriver) {
    for (v, ts) in SMALL_INPUT {
        d.pipe_str_at("in", "A", v, ts);
    }
}

#[test]
fn should_aggregate_into_left_and_right_windows_as_kafka_streams_does() {
    let mut d = aggregating(false);
    pipe_small_input(&mut d);
    assert_eq!(
        emitted(&d),
        expect(&[
            (0, &[("0+1", 10), ("0+1+2", 10)]),
            (4, &[("0+1+2+3", 14)]),
            (5, &[("0+1+2+3+4", 15)]),
            (10, &[("0+1+2+3+4+5", 20)]),
            (11, &[("0+3", 14), ("0+3+4", 15), ("0+3+4+5", 20)]),
            (12, &[("0+3+4+5+6", 22)]),
            (15, &[("0+4", 15), ("0+4+5", 20), ("0+4+5+6", 22)]),
            (16, &[("0+5", 20), ("0+5+6", 22)]),
            (20, &[("0+5+6+7", 30)]),
            (21, &[("0+6", 22), ("0+6+7", 30)]),
            (23, &[("0+7", 30)]),
        ])
    );
}

#[test]
fn should_emit_each_sliding_window_once_when_it_closes() {
    let mut d = aggregating(true);
    pipe_small_input(&mut d);
    // Stream time 30, grace 5: windows ending before 25 are final.
    assert_eq!(
        emitted(&d),
        expect(&[
            (0, &[("0+1+2", 10)]),
            (4, &[("0+1+2+3", 14)]),
            (5, &[("0+1+2+3+4", 15)]),
            (10, &[("0+1+2+3+4+5", 20)]),
            (11, &[("0+3+4+5", 20)]),
            (12, &[("0+3+4+5+6", 22)]),
        ])
    );
    assert_eq!(d.records("out").len(), 6, "one final result per window");
}

#[test]
fn should_reduce_sliding_windows_as_kafka_streams_does() {
    let b = StreamsBuilder::new();
    sink(
        b.source_with("in", Consumed::with(StringSerde, StringSerde))
            .group_by_key()
            .windowed_by(windows())
            .reduce(|a, v| format!("{a}+{v}"), Materialized::as_store("sliding")),
    );
    let mut d = TestDriver::new(b.build().unwrap(), "app");
    for (v, ts) in [
        ("1", 10),
        ("2", 14),
        ("3", 15),
        ("4", 22),
        ("5", 26),
        ("6", 30),
    ] {
        d.pipe_str_at("in", "A", v, ts);
    }
    assert_eq!(
        emitted(&d),
        expect(&[
            (0, &[("1", 10)]),
            (4, &[("1+2", 14)]),
            (5, &[("1+2+3", 15)]),
            (11, &[("2", 14), ("2+3", 15)]),
            (12, &[("2+3+4", 22)]),
            (15, &[("3", 15), ("3+4", 22)]),
            (16, &[("4", 22), ("4+5", 26)]),
            (20, &[("4+5+6", 30)]),
            (23, &[("5", 26), ("5+6", 30)]),
            (27, &[("6", 30)]),
        ])
    );
}

#[test]
fn should_put_early_records_into_the_first_window_and_dead_letter_late_ones() {
    let mut d = aggregating(false);
    d.pipe_str_at("in", "A", "1", 3); // before the difference: window [0, 10]
    d.pipe_str_at("in", "A", "2", 7);
    d.pipe_str_at("in", "A", "3", 40); // stream time 40, close 35
    d.pipe_str_at("in", "A", "4", 20); // right window [21, 31] closed: late
    assert_eq!(
        emitted(&d),
        expect(&[
            (0, &[("0+1", 3), ("0+1+2", 7)]),
            (4, &[("0+2", 7)]),
            (30, &[("0+3", 40)]),
        ])
    );
    assert_eq!(d.late_records(), 1);
    assert_eq!(d.dead_letters().len(), 1);
}

#[test]
fn should_give_the_same_sliding_windows_across_a_crash() {
    let mut once = aggregating(true);
    pipe_small_input(&mut once);
    let mut crashed = aggregating(true);
    for (i, (v, ts)) in SMALL_INPUT.into_iter().enumerate() {
        crashed.pipe_str_at("in", "A", v, ts);
        if i == 3 {
            crashed.commit().unwrap();
            crashed.crash_and_restart();
        }
    }
    assert_eq!(emitted(&crashed), emitted(&once));
}
