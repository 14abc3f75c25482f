//! Tables read from topics and stream–table joins in the test driver:
//! Kafka Streams' developer-guide semantics table for the KStream–KTable
//! join (inner and left), table tombstones and filters, and restore from
//! the source topic after a crash.

use stream_dsl::prelude::*;

/// The stream `left` joined (inner, or left) with the table `right`, both
/// keyed by `k`, as `"[value, row]"`.
fn joined(left_join: bool) -> TestDriver {
    let b = StreamsBuilder::new();
    let right = b.table(
        "right",
        Consumed::with(StringSerde, StringSerde),
        Materialized::as_store("right"),
    );
    let left = b.source("left");
    if left_join {
        left.left_join(&right, |v, r| {
            format!("[{v}, {}]", r.unwrap_or_else(|| "null".into()))
        })
        .to_topic("out");
    } else {
        left.join(&right, |v, r| format!("[{v}, {r}]"))
            .to_topic("out");
    }
    TestDriver::new(b.build().unwrap(), "app")
}

enum Step {
    Left(&'static str),
    Right(Option<&'static str>),
}

/// The developer guide's KStream–KTable join table (one key; timestamps
/// 3..15; the stream's null records are left out: a stream record here
/// always has a value): each step with the output it adds, inner and left.
fn guide() -> Vec<(i64, Step, Option<&'static str>, Option<&'static str>)> {
    use Step::*;
    vec![
        (2, Right(None), None, None),
        (3, Left("A"), None, Some("[A, null]")),
        (4, Right(Some("a")), None, None),
        (5, Left("B"), Some("[B, a]"), Some("[B, a]")),
        (6, Right(Some("b")), None, None),
        (8, Right(None), None, None),
        (9, Left("C"), None, Some("[C, null]")),
        (10, Right(Some("c")), None, None),
        (11, Right(None), None, None),
        (12, Right(None), None, None),
        (13, Left("D"), None, Some("[D, null]")),
        (14, Right(Some("d")), None, None),
        (15, Left("D"), Some("[D, d]"), Some("[D, d]")),
    ]
}

fn check_guide(left_join: bool) {
    let mut d = joined(left_join);
    let mut expected = Vec::new();
    for (ts, step, inner, left) in guide() {
        match step {
            Step::Left(v) => d.pipe_str_at("left", "k", v, ts),
            Step::Right(Some(v)) => d.pipe_str_at("right", "k", v, ts),
            Step::Right(None) => d.pipe_at("right", Some(b"k"), None, ts),
        }
        if let Some(out) = if left_join { left } else { inner } {
            expected.push(out.to_string());
        }
        let got: Vec<String> = d.output_utf8("out").into_iter().map(|(_, v)| v).collect();
        assert_eq!(got, expected, "after the record at {ts}");
    }
    // Results carry the stream record's timestamp.
    let ts: Vec<i64> = d.records("out").iter().map(|r| r.timestamp).collect();
    let want: Vec<i64> = if left_join {
        vec![3, 5, 9, 13, 15]
    } else {
        vec![5, 15]
    };
    assert_eq!(ts, want);
}

#[test]
fn should_inner_join_a_stream_with_a_table_as_the_developer_guide_says() {
    check_guide(false);
}

#[test]
fn should_left_join_a_stream_with_a_table_as_the_developer_guide_says() {
    check_guide(true);
}

#[test]
fn should_forward_a_tombstone_only_when_a_row_stops_matching_a_filter() {
    let b = StreamsBuilder::new();
    b.table(
        "users",
        Consumed::with(StringSerde, StringSerde),
        Materialized::as_store("users"),
    )
    .filter(|_, company| company == "Acme")
    .to_topic("acme-users");
    let mut d = TestDriver::new(b.build().unwrap(), "app");
    d.pipe_str("users", "bob", "Initech"); // never matched: nothing
    d.pipe_str("users", "ann", "Acme"); // matches
    d.pipe_str("users", "ann", "Acme"); // still matches: an update
    d.pipe_str("users", "ann", "Initech"); // stops matching: tombstone
    d.pipe("users", Some(b"ann"), None); // deleted, did not match: nothing
    d.pipe_str("users", "cid", "Acme");
    d.pipe("users", Some(b"cid"), None); // deleted while matching: tombstone
    let out: Vec<(String, Option<String>)> = d
        .records("acme-users")
        .into_iter()
        .map(|r| {
            (
                String::from_utf8(r.key.unwrap()).unwrap(),
                r.value.map(|v| String::from_utf8(v).unwrap()),
            )
        })
        .collect();
    let s = |k: &str, v: Option<&str>| (k.to_string(), v.map(str::to_string));
    assert_eq!(
        out,
        vec![
            s("ann", Some("Acme")),
            s("ann", Some("Acme")),
            s("ann", None),
            s("cid", Some("Acme")),
            s("cid", None),
        ]
    );
}

#[test]
fn should_restore_a_table_from_its_source_topic_after_a_crash() {
    let mut d = joined(false);
    d.pipe_str("right", "ann", "Acme");
    d.pipe_str("right", "bob", "Initech");
    d.pipe("right", Some(b"bob"), None);
    d.commit().unwrap();
    d.pipe_str("right", "cid", "Globex"); // not committed: processed again
    d.crash_and_restart();
    d.pipe_str("left", "ann", "a");
    d.pipe_str("left", "bob", "b");
    d.pipe_str("left", "cid", "c");
    assert_eq!(
        d.output_utf8("out"),
        vec![
            ("ann".to_string(), "[a, Acme]".to_string()),
            ("cid".to_string(), "[c, Globex]".to_string()),
        ]
    );
    // Nothing was written for the table: its topic is its changelog.
    assert!(d.records("app-right-changelog").is_empty());
}

#[test]
fn should_skip_on_restore_the_table_records_that_processing_dead_lettered() {
    #[derive(serde::Deserialize, serde::Serialize, Clone)]
    struct User {
        company: String,
    }
    let build = || {
        let b = StreamsBuilder::new();
        let users = b.table(
            "users",
            Consumed::<String, User>::json(),
            Materialized::as_store("users"),
        );
        b.source("clicks")
            .left_join(&users, |page, u| {
                format!("{page}:{}", u.map_or("-".to_string(), |u| u.company))
            })
            .to_topic("out");
        b.build().unwrap()
    };
    let mut d = TestDriver::new(build(), "app");
    d.pipe_str("users", "ann", r#"{"company":"Acme"}"#);
    d.pipe_str("users", "ann", r#"{"company":"#); // truncated
    assert_eq!(d.dead_letters().len(), 1);
    d.commit().unwrap();
    d.crash_and_restart();
    d.pipe_str("clicks", "ann", "/home");
    assert_eq!(d.output_utf8("out")[0].1, "/home:Acme");
}

fn counts(pairs: &[(&str, i32)]) -> std::collections::HashMap<String, i32> {
    pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
}

#[test]
fn should_refuse_a_join_of_topics_with_different_partition_counts_naming_both() {
    let b = StreamsBuilder::new();
    let users = b.table(
        "users",
        Consumed::with(StringSerde, StringSerde),
        Materialized::as_store("users"),
    );
    b.source("clicks")
        .join(&users, |c, u| format!("{c}{u}"))
        .to_topic("out");
    let t = b.build().unwrap();
    let err = t
        .plan_partitions("app", &counts(&[("clicks", 4), ("users", 2)]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`clicks` has 4 partitions"), "{err}");
    assert!(err.contains("`users`") && err.contains("has 2"), "{err}");
    assert!(
        t.plan_partitions("app", &counts(&[("clicks", 2), ("users", 2)]))
            .is_ok()
    );
}

#[test]
fn should_repartition_a_rekeyed_stream_into_as_many_partitions_as_the_table() {
    let b = StreamsBuilder::new();
    let users = b.table(
        "users",
        Consumed::with(StringSerde, StringSerde),
        Materialized::as_store("users"),
    );
    b.source("clicks")
        .select_key(|_, email| email.clone())
        .join(&users, |c, u| format!("{c}{u}"))
        .to_topic("out");
    let t = b.build().unwrap();
    let plan = t
        .plan_partitions("app", &counts(&[("clicks", 4), ("users", 2)]))
        .unwrap();
    let repartition: Vec<_> = plan
        .partitions
        .iter()
        .filter(|(name, _)| name.ends_with("-repartition"))
        .collect();
    assert_eq!(repartition.len(), 1, "{:?}", plan.partitions);
    assert_eq!(*repartition[0].1, 2);
    // And the driver runs it: the click finds its user through the topic.
    let mut d = TestDriver::new(t, "app")
        .with_partitions("clicks", 4)
        .with_partitions("users", 2);
    d.pipe_str("users", "ann@x", "Acme");
    d.pipe_str("clicks", "c1", "ann@x");
    assert_eq!(
        d.output_utf8("out"),
        vec![("ann@x".to_string(), "ann@xAcme".to_string())]
    );
}

#[test]
fn should_give_two_joined_repartition_topics_one_partition_count() {
    let b = StreamsBuilder::new();
    let users = b
        .source("new_users")
        .select_key(|_, email| email.clone())
        .to_table(Materialized::as_store("users"));
    b.source("actions")
        .select_key(|_, email| email.clone())
        .join(&users, |a, u| format!("{a}{u}"))
        .to_topic("out");
    let t = b.build().unwrap();
    let plan = t
        .plan_partitions("app", &counts(&[("actions", 4), ("new_users", 2)]))
        .unwrap();
    let mut repartition: Vec<i32> = plan
        .partitions
        .iter()
        .filter(|(name, _)| name.ends_with("-repartition"))
        .map(|(_, n)| *n)
        .collect();
    repartition.sort();
    assert_eq!(repartition, vec![4, 4], "{:?}", plan.partitions);
    assert!(plan.tasks.contains(&4));
}

/// The developer guide's KTable–KTable join table (one key; `None`: a
/// tombstone in the input, `Some(None)` a tombstone in the output): each
/// step with what inner, left and outer joins add.
type Out = Option<Option<&'static str>>;
fn table_guide() -> Vec<(i64, bool, Option<&'static str>, [Out; 3])> {
    let (n, t) = (None, Some(None));
    let j = |s: &'static str| Some(Some(s));
    vec![
        // ts, left side?, value, [inner, left, outer]
        (1, true, None, [n, n, n]),
        (2, false, None, [n, n, n]),
        (3, true, Some("A"), [n, j("[A, null]"), j("[A, null]")]),
        (4, false, Some("a"), [j("[A, a]"), j("[A, a]"), j("[A, a]")]),
        (5, true, Some("B"), [j("[B, a]"), j("[B, a]"), j("[B, a]")]),
        (6, false, Some("b"), [j("[B, b]"), j("[B, b]"), j("[B, b]")]),
        (7, true, None, [t, t, j("[null, b]")]),
        (8, false, None, [n, n, t]),
        (9, true, Some("C"), [n, j("[C, null]"), j("[C, null]")]),
        (
            10,
            false,
            Some("c"),
            [j("[C, c]"), j("[C, c]"), j("[C, c]")],
        ),
        (11, false, None, [t, j("[C, null]"), j("[C, null]")]),
        (12, true, None, [n, t, t]),
        (13, false, None, [n, n, n]),
        (14, false, Some("d"), [n, n, j("[null, d]")]),
        (15, true, Some("D"), [j("[D, d]"), j("[D, d]"), j("[D, d]")]),
    ]
}

fn check_table_guide(kind: usize) {
    let b = StreamsBuilder::new();
    let c = Consumed::with(StringSerde, StringSerde);
    let left = b.table("left", c.clone(), Materialized::as_store("left"));
    let right = b.table("right", c, Materialized::as_store("right"));
    let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "null".into());
    let joined = match kind {
        0 => left.join(&right, |l, r| format!("[{l}, {r}]")),
        1 => left.left_join(&right, move |l, r| format!("[{l}, {}]", show(r))),
        _ => left.outer_join(&right, move |l, r| format!("[{}, {}]", show(l), show(r))),
    };
    joined.to_topic("out");
    let mut d = TestDriver::new(b.build().unwrap(), "app");
    let mut expected: Vec<Option<String>> = Vec::new();
    for (ts, is_left, value, outs) in table_guide() {
        let topic = if is_left { "left" } else { "right" };
        d.pipe_at(topic, Some(b"k"), value.map(str::as_bytes), ts);
        if let Some(out) = outs[kind] {
            expected.push(out.map(str::to_string));
        }
        let got: Vec<Option<String>> = d
            .records("out")
            .into_iter()
            .map(|r| r.value.map(|v| String::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(got, expected, "join kind {kind}, after the record at {ts}");
    }
}

#[test]
fn should_inner_join_two_tables_as_the_developer_guide_says() {
    check_table_guide(0);
}

#[test]
fn should_left_join_two_tables_as_the_developer_guide_says() {
    check_table_guide(1);
}

#[test]
fn should_outer_join_two_tables_as_the_developer_guide_says() {
    check_table_guide(2);
}

/// Each update of `topic`, as `key → value` with tombstones as `-`.
fn updates(d: &TestDriver, topic: &str) -> Vec<String> {
    d.records(topic)
        .into_iter()
        .map(|r| {
            let k = String::from_utf8(r.key.unwrap_or_default()).unwrap();
            match r.value {
                Some(v) if v.len() == 8 => {
                    format!("{k}={}", i64::from_be_bytes(v.try_into().unwrap()))
                }
                Some(v) => format!("{k}={}", String::from_utf8(v).unwrap()),
                None => format!("{k}=-"),
            }
        })
        .collect()
}

fn users_per_company() -> TestDriver {
    let b = StreamsBuilder::new();
    b.table(
        "users",
        Consumed::with(StringSerde, StringSerde),
        Materialized::as_store("users"),
    )
    .group_by(
        |_, company| (company.clone(), 1i64),
        Grouped::with(StringSerde, I64Serde),
    )
    .count(Materialized::as_store("per-company"))
    .to_topic("counts");
    TestDriver::new(b.build().unwrap(), "app")
}

#[test]
fn should_subtract_a_row_from_its_old_group_when_it_moves() {
    let mut d = users_per_company();
    d.pipe_str("users", "ann", "Acme");
    d.pipe_str("users", "bob", "Acme");
    d.pipe_str("users", "ann", "Initech"); // moves: Acme −1, Initech +1
    d.pipe_str("users", "bob", "Acme"); // same group: −1 then +1
    d.pipe("users", Some(b"bob"), None); // deleted: Acme −1
    assert_eq!(
        updates(&d, "counts"),
        vec![
            "Acme=1",
            "Acme=2",
            "Acme=1",
            "Initech=1",
            "Acme=0",
            "Acme=1",
            "Acme=0",
        ]
    );
}

#[test]
fn should_regroup_the_same_way_across_a_crash() {
    let steps: [(&str, Option<&str>); 6] = [
        ("ann", Some("Acme")),
        ("bob", Some("Acme")),
        ("cid", Some("Initech")),
        ("ann", Some("Initech")),
        ("bob", None),
        ("dan", Some("Acme")),
    ];
    let run = |crash: Option<usize>| {
        let mut d = users_per_company();
        for (i, (k, v)) in steps.iter().enumerate() {
            d.pipe("users", Some(k.as_bytes()), v.map(str::as_bytes));
            if crash == Some(i) {
                d.commit().unwrap();
                d.crash_and_restart();
            }
        }
        d.latest_per_key("counts")
    };
    let once = run(None);
    assert_eq!(once[&b"Acme".to_vec()], 1i64.to_be_bytes().to_vec());
    assert_eq!(once[&b"Initech".to_vec()], 2i64.to_be_bytes().to_vec());
    for crash in 0..steps.len() {
        assert_eq!(run(Some(crash)), once, "crash after step {crash}");
    }
}

#[test]
fn should_fold_several_grouped_streams_into_one_aggregate() {
    let b = StreamsBuilder::new();
    // Views keyed by customer; purchases re-keyed from "customer:item".
    let views = b.source("views").group_by_key();
    let buys = b
        .source("buys")
        .group_by(|_, v| v.split(':').next().unwrap_or("").to_string());
    views
        .cogroup(|_, page: String, acc: String| format!("{acc}v{}", page.len()))
        .cogroup(&buys, |_, _, acc| format!("{acc}b"))
        .aggregate(String::new, Materialized::as_store("activity"))
        .to_topic("activity");
    let mut d = TestDriver::new(b.build().unwrap(), "app");
    d.pipe_str("views", "ann", "/a");
    d.pipe_str("buys", "x", "ann:pen");
    d.pipe_str("views", "bob", "/bb");
    d.pipe_str("views", "ann", "/ccc");
    d.pipe_str("buys", "y", "bob:cup");
    assert_eq!(
        updates(&d, "activity"),
        vec!["ann=v2", "ann=v2b", "bob=v3", "ann=v2bv4", "bob=v3b"]
    );
    d.commit().unwrap();
    d.crash_and_restart();
    d.pipe_str("buys", "z", "ann:ink");
    assert_eq!(updates(&d, "activity").last().unwrap(), "ann=v2bv4b");
}

#[test]
fn should_show_joins_their_stores_and_global_tables_in_the_description() {
    let b = StreamsBuilder::new();
    let users = b.table(
        "users",
        Consumed::with(StringSerde, StringSerde),
        Materialized::as_store("users"),
    );
    let companies = b.global_table(
        "companies",
        Consumed::with(StringSerde, StringSerde),
        Materialized::as_store("companies"),
    );
    b.source("clicks")
        .join(&users, |c, u| format!("{c}{u}"))
        .left_join_global(&companies, |_, v| v.clone(), |v, c| format!("{v}{c:?}"))
        .to_topic("out");
    let text = b.build().unwrap().describe("app");
    assert!(
        text.contains("stream-table-join-1 (stores: [users])"),
        "{text}"
    );
    assert!(text.contains("users (changelog: users)"), "{text}");
    assert!(
        text.contains("Global tables:\n  companies (topic: companies"),
        "{text}"
    );
    assert!(text.contains("global-left-join-1"), "{text}");
}
