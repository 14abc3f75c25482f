//! Stream–stream windowed joins in the test driver: the developer guide's
//! KStream–KStream sequence (every record within the window of the
//! others: inner, left and outer give the same pairs, and no lone record
//! comes out early), lone records of left and outer joins emitted once
//! their window closes, late records kept, and a crash in the middle.

use std::time::Duration;

use stream_dsl::prelude::*;

fn joined(kind: usize, windows: JoinWindows) -> TestDriver {
    let b = StreamsBuilder::new();
    let (left, right) = (b.source("left"), b.source("right"));
    let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "null".into());
    let out = match kind {
        0 => left.join_stream(&right, windows, |l, r| format!("[{l}, {r}]")),
        1 => left.left_join_stream(&right, windows, move |l, r| format!("[{l}, {}]", show(r))),
        _ => left.outer_join_stream(&right, windows, move |l, r| {
            format!("[{}, {}]", show(l), show(r))
        }),
    };
    out.to_topic("out");
    TestDriver::new(b.build().unwrap(), "app")
}

fn values(d: &TestDriver) -> Vec<String> {
    d.output_utf8("out").into_iter().map(|(_, v)| v).collect()
}

/// The guide's sequence for one key (its null records left out: a stream
/// record here always has a value), every record within 15 ms of every
/// other; what each step adds.
fn guide() -> Vec<(i64, bool, &'static str, Vec<&'static str>)> {
    vec![
        (3, true, "A", vec![]),
        (4, false, "a", vec!["[A, a]"]),
        (5, true, "B", vec!["[B, a]"]),
        (6, false, "b", vec!["[A, b]", "[B, b]"]),
        (9, true, "C", vec!["[C, a]", "[C, b]"]),
        (10, false, "c", vec!["[A, c]", "[B, c]", "[C, c]"]),
        (14, false, "d", vec!["[A, d]", "[B, d]", "[C, d]"]),
        (15, true, "D", vec!["[D, a]", "[D, b]", "[D, c]", "[D, d]"]),
    ]
}

fn check_guide(kind: usize) {
    let mut d = joined(
        kind,
        JoinWindows::of_time_difference(Duration::from_millis(15)),
    );
    let mut expected: Vec<String> = Vec::new();
    for (ts, left, v, adds) in guide() {
        d.pipe_str_at(if left { "left" } else { "right" }, "k", v, ts);
        expected.extend(adds.iter().map(|s| s.to_string()));
        assert_eq!(
            values(&d),
            expected,
            "join kind {kind}, after the record at {ts}"
        );
    }
    // A joined pair has the later of its two timestamps.
    let ts: Vec<i64> = d.records("out").iter().map(|r| r.timestamp).collect();
    assert_eq!(&ts[..4], &[4, 5, 6, 6]);
}

#[test]
fn should_inner_join_two_streams_as_the_developer_guide_says() {
    check_guide(0);
}

#[test]
fn should_left_join_two_streams_as_the_developer_guide_says_without_early_nulls() {
    check_guide(1);
}

#[test]
fn should_outer_join_two_streams_as_the_developer_guide_says_without_early_nulls() {
    check_guide(2);
}

/// ±2 ms, 1 ms grace: A meets a; B and b stay alone; E comes too late.
fn pipe_lonely(d: &mut TestDriver, crash_after: Option<usize>) {
    let steps = [
        ("left", "A", 10),
        ("right", "a", 11),
        ("left", "B", 20),
        ("right", "b", 30), // closes B's window (20 + 2 + 1 ≤ 30)
        ("left", "C", 40),  // closes b's window (30 + 2 + 1 ≤ 40)
        ("left", "E", 30),  // its window closed at 33: late
    ];
    for (i, (topic, v, ts)) in steps.into_iter().enumerate() {
        d.pipe_str_at(topic, "k", v, ts);
        if crash_after == Some(i) {
            d.commit().unwrap();
            d.crash_and_restart();
        }
    }
}

fn tight() -> JoinWindows {
    JoinWindows::of_time_difference(Duration::from_millis(2)).grace(Duration::from_millis(1))
}

#[test]
fn should_emit_lone_records_once_their_window_closes() {
    let cases = [
        (0, vec!["[A, a]"]),
        (1, vec!["[A, a]", "[B, null]"]),
        (2, vec!["[A, a]", "[B, null]", "[null, b]"]),
    ];
    for (kind, want) in cases {
        let mut d = joined(kind, tight());
        pipe_lonely(&mut d, None);
        assert_eq!(values(&d), want, "join kind {kind}");
        assert_eq!(d.late_records(), 1, "E is late (kind {kind})");
        assert_eq!(d.dead_letters().len(), 1);
    }
    // A lone record keeps its own timestamp.
    let mut d = joined(1, tight());
    pipe_lonely(&mut d, None);
    assert_eq!(d.records("out")[1].timestamp, 20);
}

#[test]
fn should_give_the_same_stream_join_results_across_a_crash() {
    for kind in 0..3 {
        for crash in 0..5 {
            let mut once = joined(kind, tight());
            pipe_lonely(&mut once, None);
            let mut crashed = joined(kind, tight());
            pipe_lonely(&mut crashed, Some(crash));
            assert_eq!(
                values(&crashed),
                values(&once),
                "kind {kind}, crash after step {crash}"
            );
        }
    }
}
