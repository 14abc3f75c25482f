//! Time windows in the test driver, against hand-computed expectations:
//! tumbling in order and out of order within grace, late records beyond
//! grace (dead-lettered with their window), hopping overlap, emit-final
//! exactly once per window, stream time kept across a crash, idle advance.

use std::time::Duration;

use stream_core::task::LatePolicy;
use stream_dsl::prelude::*;

const S: i64 = 1_000;

/// Per-minute counts with 10 s grace, every update as `key@start → n`.
fn counts(final_only: bool) -> TestDriver {
    let b = StreamsBuilder::new();
    let table = b
        .source("in")
        .group_by_key()
        .windowed_by(TimeWindows::of_size(Duration::from_secs(60)).grace(Duration::from_secs(10)))
        .count(Materialized::as_store("per-minute"));
    let table = if final_only {
        table.suppress(Suppressed::until_window_closes())
    } else {
        table
    };
    table
        .to_stream()
        .map(|w, n| (format!("{}@{}", w.key, w.window.start / S), n.to_string()))
        .to_topic("out");
    TestDriver::new(b.build().unwrap(), "app")
}

fn out(d: &TestDriver) -> Vec<(String, String)> {
    d.output_utf8("out")
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn header<'a>(r: &'a stream_core::driver::StoredRecord, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

#[test]
fn should_count_in_order_records_per_tumbling_window() {
    let mut d = counts(false);
    d.pipe_str_at("in", "a", "x", 0);
    d.pipe_str_at("in", "a", "x", 59 * S);
    d.pipe_str_at("in", "b", "x", 30 * S);
    d.pipe_str_at("in", "a", "x", 60 * S);
    assert_eq!(
        out(&d),
        pairs(&[("a@0", "1"), ("a@0", "2"), ("b@0", "1"), ("a@60", "1")])
    );
    // The output timestamp is the largest record timestamp in the window.
    let ts: Vec<i64> = d.records("out").iter().map(|r| r.timestamp).collect();
    assert_eq!(ts, vec![0, 59 * S, 30 * S, 60 * S]);
}

#[test]
fn should_accept_out_of_order_records_within_grace_and_drop_later_ones_into_the_dead_letters() {
    let mut d = counts(false);
    d.pipe_str_at("in", "a", "x", 10 * S);
    d.pipe_str_at("in", "a", "x", 65 * S); // stream time 65 s
    d.pipe_str_at("in", "a", "x", 50 * S); // window [0, 60) open until 70 s
    d.pipe_str_at("in", "a", "x", 70 * S); // stream time 70 s closes [0, 60)
    d.pipe_str_at("in", "a", "y", 59 * S); // late
    assert_eq!(
        out(&d),
        pairs(&[("a@0", "1"), ("a@60", "1"), ("a@0", "2"), ("a@60", "2")])
    );
    assert_eq!(d.late_records(), 1);
    let dl = d.dead_letters();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].value.as_deref(), Some(&b"y"[..]));
    assert_eq!(header(&dl[0], "dlq.stage"), Some("late"));
    assert_eq!(header(&dl[0], "dlq.window.start"), Some("0"));
    assert_eq!(header(&dl[0], "dlq.window.end"), Some("60000"));
    assert_eq!(header(&dl[0], "dlq.stream.time"), Some("70000"));
}

#[test]
fn should_count_late_records_without_dead_letters_when_asked_to_only_log_them() {
    let mut d = counts(false).with_late_policy(LatePolicy::LogOnly);
    d.pipe_str_at("in", "a", "x", 100 * S);
    d.pipe_str_at("in", "a", "x", 5 * S);
    assert_eq!(d.late_records(), 1);
    assert!(d.dead_letters().is_empty());
    assert_eq!(out(&d), pairs(&[("a@60", "1")]));
}

#[test]
fn should_put_a_record_in_every_hopping_window_that_contains_it() {
    let b = StreamsBuilder::new();
    b.source("in")
        .group_by_key()
        .windowed_by(
            TimeWindows::of_size(Duration::from_secs(10)).advance_by(Duration::from_secs(5)),
        )
        .count(Materialized::as_store("hops"))
        .to_stream()
        .map(|w, n| (format!("{}@{}", w.key, w.window.start / S), n.to_string()))
        .to_topic("out");
    let mut d = TestDriver::new(b.build().unwrap(), "app");
    d.pipe_str_at("in", "a", "x", 3 * S); // [0,10)
    d.pipe_str_at("in", "a", "x", 7 * S); // [0,10) [5,15)
    d.pipe_str_at("in", "a", "x", 12 * S); // [5,15) [10,20)
    assert_eq!(
        out(&d),
        pairs(&[
            ("a@0", "1"),
            ("a@0", "2"),
            ("a@5", "1"),
            ("a@5", "2"),
            ("a@10", "1")
        ])
    );
}

#[test]
fn should_emit_one_final_result_per_window_once_it_closes() {
    let mut d = counts(true);
    d.pipe_str_at("in", "a", "x", S);
    d.pipe_str_at("in", "b", "x", 2 * S);
    d.pipe_str_at("in", "a", "x", 3 * S);
    d.pipe_str_at("in", "a", "x", 61 * S);
    d.pipe_str_at("in", "b", "x", 55 * S); // within grace
    assert!(
        out(&d).is_empty(),
        "nothing final before 70 s: {:?}",
        out(&d)
    );
    d.pipe_str_at("in", "c", "x", 70 * S); // closes [0, 60)
    assert_eq!(out(&d), pairs(&[("a@0", "2"), ("b@0", "2")]));
    d.pipe_str_at("in", "c", "x", 75 * S);
    d.pipe_str_at("in", "a", "x", 130 * S); // closes [60, 120)
    assert_eq!(
        out(&d),
        pairs(&[("a@0", "2"), ("b@0", "2"), ("a@60", "1"), ("c@60", "2")])
    );
    // The final record keeps the window's timestamp.
    assert_eq!(d.records("out")[0].timestamp, 3 * S);
}

#[test]
fn should_not_reopen_closed_windows_or_repeat_final_results_after_a_crash() {
    let mut d = counts(true);
    d.pipe_str_at("in", "a", "x", S);
    d.pipe_str_at("in", "a", "x", 61 * S);
    d.pipe_str_at("in", "a", "x", 80 * S); // [0,60) final: a@0 = 1
    assert_eq!(out(&d), pairs(&[("a@0", "1")]));
    assert_eq!(d.stream_time(), 80 * S);
    d.crash_and_restart();
    assert_eq!(d.stream_time(), 80 * S, "stream time kept");
    d.pipe_str_at("in", "a", "x", 30 * S); // late for [0, 60) still
    assert_eq!(d.late_records(), 1);
    d.pipe_str_at("in", "a", "x", 130 * S); // closes [60, 120): a@60 = 2
    assert_eq!(out(&d), pairs(&[("a@0", "1"), ("a@60", "2")]));
}

#[test]
fn should_close_windows_of_an_idle_partition_when_idle_advance_is_on() {
    let mut d = counts(true).with_idle_advance(5_000);
    d.pipe_str_at("in", "a", "x", S);
    d.advance_time(30_000);
    assert!(out(&d).is_empty(), "stream time 1 s + 30 s: still open");
    d.advance_time(60_000);
    assert_eq!(out(&d), pairs(&[("a@0", "1")]));
}

/// Session counts with a 10 s gap, as `key@start-end → count` (`-` for a
/// session merged away).
fn sessions(final_only: bool, grace_secs: u64) -> TestDriver {
    let b = StreamsBuilder::new();
    let table = b
        .source("in")
        .group_by_key()
        .windowed_by_session(
            SessionWindows::with_inactivity_gap(Duration::from_secs(10))
                .grace(Duration::from_secs(grace_secs)),
        )
        .count(Materialized::as_store("sessions"));
    let table = if final_only {
        table.suppress(Suppressed::until_window_closes())
    } else {
        table
    };
    table
        .to_stream()
        .map(|w, n| {
            (
                format!("{}@{}-{}", w.key, w.window.start / S, w.window.end / S),
                n.map_or("-".to_string(), |n| n.to_string()),
            )
        })
        .to_topic("out");
    TestDriver::new(b.build().unwrap(), "app")
}

#[test]
fn should_split_sessions_at_inactivity_and_merge_them_when_a_record_bridges_the_gap() {
    let mut d = sessions(false, 30);
    d.pipe_str_at("in", "a", "x", S);
    d.pipe_str_at("in", "a", "x", 3 * S); // extends [1, 1]
    d.pipe_str_at("in", "a", "x", 20 * S); // 17 s after: a new session
    d.pipe_str_at("in", "b", "x", 21 * S);
    assert_eq!(
        out(&d),
        pairs(&[
            ("a@1-1", "1"),
            ("a@1-1", "-"),
            ("a@1-3", "2"),
            ("a@20-20", "1"),
            ("b@21-21", "1")
        ])
    );
    d.pipe_str_at("in", "a", "x", 12 * S); // within 10 s of both: merges them
    assert_eq!(
        out(&d)[5..].to_vec(),
        pairs(&[("a@1-3", "-"), ("a@20-20", "-"), ("a@1-20", "4")])
    );
}

#[test]
fn should_emit_each_session_once_after_gap_and_grace_and_never_reopen_it() {
    let mut d = sessions(true, 5);
    d.pipe_str_at("in", "a", "x", S);
    d.pipe_str_at("in", "a", "x", 3 * S);
    assert!(out(&d).is_empty());
    d.pipe_str_at("in", "a", "x", 20 * S); // [1, 3] closed at 3 + 10 + 5 = 18 s
    assert_eq!(out(&d), pairs(&[("a@1-3", "2")]));
    // Would bridge the closed [1, 3] and [20, 20]: late, kept.
    d.pipe_str_at("in", "a", "x", 12 * S);
    assert_eq!(d.late_records(), 1);
    assert_eq!(d.dead_letters().len(), 1);
    d.pipe_str_at("in", "a", "x", 25 * S); // [20, 25]
    d.pipe_str_at("in", "b", "x", 30 * S);
    d.pipe_str_at("in", "b", "x", 40 * S); // [20, 25] closes at 40 s
    assert_eq!(out(&d), pairs(&[("a@1-3", "2"), ("a@20-25", "2")]));
    d.pipe_str_at("in", "c", "x", 100 * S);
    assert_eq!(
        out(&d),
        pairs(&[("a@1-3", "2"), ("a@20-25", "2"), ("b@30-40", "2")])
    );
}
