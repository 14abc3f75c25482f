//! The upgrade check over pairs of topologies: the saved description of a
//! count by company against changed versions, with the verdict each change
//! must get.

use stream_core::graph::{TopologyDescription, Verdict, check_upgrade};
use stream_core::serde::JsonSerde;
use stream_dsl::prelude::*;

/// What a version changes relative to the first one.
#[derive(Default, Clone, Copy)]
struct Change {
    extra_filter: bool,
    store_renamed: bool,
    json_grouping_key: bool,
    partitions: Option<i32>,
    value_changelog_off: bool,
}

fn version(c: Change) -> TopologyDescription {
    let b = StreamsBuilder::new();
    let users = b.source("new_users");
    let users = if c.extra_filter {
        users
            .filter(|_, v: &String| !v.is_empty())
            .map_values(|v| v.trim().to_string())
    } else {
        users
    };
    let store = if c.store_renamed {
        "company-counts"
    } else {
        "counts"
    };
    let company = |_: &String, v: &String| v.split(',').next().unwrap_or("").to_string();
    let grouped = if c.json_grouping_key {
        Grouped::with_key(JsonSerde::<String>::new())
    } else {
        Grouped::with_key(StringSerde)
    };
    let grouped = match c.partitions {
        Some(n) => grouped.with_partitions(n),
        None => grouped,
    };
    let grouped = users.group_by_with(company, grouped.named("by-company"));
    let mat = Materialized::as_store(store);
    let mat = if c.value_changelog_off {
        mat.without_changelog()
    } else {
        mat
    };
    grouped
        .count(mat)
        .to_stream()
        .map_values(|n| n.to_string())
        .to_topic("counts-out");
    let description = b.build().unwrap().description("team-1");
    // What a release saves and a later check reads.
    TopologyDescription::from_json(&description.to_json()).unwrap()
}

fn base() -> TopologyDescription {
    version(Change::default())
}

#[test]
fn should_accept_the_same_topology() {
    let r = check_upgrade(&base(), &base());
    assert!(r.findings.is_empty(), "{r}");
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn should_call_an_added_stateless_operator_compatible() {
    let r = check_upgrade(
        &base(),
        &version(Change {
            extra_filter: true,
            ..Change::default()
        }),
    );
    assert_eq!(r.verdict(), Verdict::Compatible, "{r}");
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn should_call_a_renamed_store_state_lost() {
    let r = check_upgrade(
        &base(),
        &version(Change {
            store_renamed: true,
            ..Change::default()
        }),
    );
    assert_eq!(r.verdict(), Verdict::Lost, "{r}");
    assert_eq!(r.exit_code(), 1);
    let f = r
        .findings
        .iter()
        .find(|f| f.item == "store `counts`")
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(f.verdict, Verdict::Lost);
    assert!(f.detail.contains("renamed to `company-counts`"), "{r}");
    assert!(f.detail.contains("team-1-counts-changelog"), "{r}");
}

#[test]
fn should_call_a_changed_grouping_key_serde_incompatible() {
    let r = check_upgrade(
        &base(),
        &version(Change {
            json_grouping_key: true,
            ..Change::default()
        }),
    );
    assert_eq!(r.verdict(), Verdict::Incompatible, "{r}");
    assert_eq!(r.exit_code(), 2);
    let items: Vec<(&str, Verdict)> = r
        .findings
        .iter()
        .map(|f| (f.item.as_str(), f.verdict))
        .collect();
    assert!(
        items.contains(&("store `counts`", Verdict::Incompatible)),
        "{r}"
    );
    assert!(
        items.contains(&(
            "repartition topic `team-1-by-company-repartition`",
            Verdict::Incompatible
        )),
        "{r}"
    );
    assert!(r.to_string().contains("JsonSerde"), "{r}");
}

#[test]
fn should_call_a_changed_repartition_partition_count_incompatible() {
    let six = version(Change {
        partitions: Some(6),
        ..Change::default()
    });
    let r = check_upgrade(&base(), &six);
    assert_eq!(r.verdict(), Verdict::Incompatible, "{r}");
    let f = &r.findings[0];
    assert_eq!(f.item, "repartition topic `team-1-by-company-repartition`");
    assert!(f.detail.contains("its input's → 6"), "{r}");
    let eight = version(Change {
        partitions: Some(8),
        ..Change::default()
    });
    assert_eq!(check_upgrade(&six, &eight).exit_code(), 2);
    assert_eq!(check_upgrade(&six, &six).exit_code(), 0);
}

#[test]
fn should_call_a_changelog_turned_off_state_lost() {
    let r = check_upgrade(
        &base(),
        &version(Change {
            value_changelog_off: true,
            ..Change::default()
        }),
    );
    assert_eq!(r.verdict(), Verdict::Lost, "{r}");
    assert!(
        r.to_string()
            .contains("changelog team-1-counts-changelog (internal) → none (disabled)"),
        "{r}"
    );
}
