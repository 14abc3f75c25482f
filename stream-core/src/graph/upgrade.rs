//! The upgrade check: compares the description saved at a release with the
//! current topology and says, item by item, what the change means for the
//! state of a running application — kept, lost or incompatible.
//!
//! Kafka Streams differs: its names are generated from operator positions,
//! and its only check (`topology.optimization`'s naming enforcement) refuses
//! to start with unnamed stores and topics; it never compares two versions.
//!
//! ```
//! use stream_core::graph::{check_upgrade, TopologyDescription, Verdict};
//! # use std::sync::Arc;
//! # use stream_core::graph::{TopicRef, TopologyBuilder};
//! # use stream_core::serde::{erase, StringSerde};
//! # let topology = || {
//! #     let s = || erase::<String>(Arc::new(StringSerde));
//! #     let mut b = TopologyBuilder::new();
//! #     let src = b.add_source("in", vec![TopicRef::External("in".into())], s(), s());
//! #     b.add_sink("out", TopicRef::External("out".into()), s(), s(), None, &[src]);
//! #     b.build().unwrap()
//! # };
//! let saved: TopologyDescription = topology().description("app");
//! let report = check_upgrade(&saved, &topology().description("app"));
//! assert_eq!(report.verdict(), Verdict::Compatible);
//! assert_eq!(report.exit_code(), 0);
//! ```

use std::collections::BTreeMap;
use std::fmt;

use super::description::{EndpointDescription, StoreDescription, TopologyDescription};

/// What a change means for a running application's state; ordered from
/// harmless to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Nothing running depends on it.
    Compatible,
    /// State is kept (possibly restored again from its changelog).
    Kept,
    /// State or records in flight are lost: a store starts empty, records
    /// in an old internal topic are not read.
    Lost,
    /// Existing state or records in flight cannot be read, or would be
    /// wrong (a changed serde or partitioning).
    Incompatible,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Compatible => "compatible",
            Verdict::Kept => "kept",
            Verdict::Lost => "LOST",
            Verdict::Incompatible => "INCOMPATIBLE",
        })
    }
}

/// One reported change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What changed, e.g. ``store `counts` ``.
    pub item: String,
    /// The verdict.
    pub verdict: Verdict,
    /// What changed and what it means.
    pub detail: String,
}

/// Every finding of one check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpgradeReport {
    /// Findings in order: stores, internal topics, sources and sinks.
    pub findings: Vec<Finding>,
}

impl UpgradeReport {
    /// The worst verdict (`Compatible` when nothing changed).
    pub fn verdict(&self) -> Verdict {
        self.findings
            .iter()
            .map(|f| f.verdict)
            .max()
            .unwrap_or(Verdict::Compatible)
    }

    /// Exit status for CI: 0 compatible or kept, 1 state lost, 2 incompatible.
    pub fn exit_code(&self) -> i32 {
        match self.verdict() {
            Verdict::Compatible | Verdict::Kept => 0,
            Verdict::Lost => 1,
            Verdict::Incompatible => 2,
        }
    }

    fn push(&mut self, item: impl Into<String>, verdict: Verdict, detail: impl Into<String>) {
        self.findings.push(Finding {
            item: item.into(),
            verdict,
            detail: detail.into(),
        });
    }
}

impl fmt::Display for UpgradeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.findings.is_empty() {
            writeln!(f, "no change that running state depends on")?;
        }
        for x in &self.findings {
            writeln!(f, "{:<12} {}: {}", x.verdict.to_string(), x.item, x.detail)?;
        }
        write!(f, "verdict: {}", self.verdict())
    }
}

fn serde_of(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("unknown")
}

/// Compares `saved` (the running version) with `current` (the new one).
pub fn check_upgrade(saved: &TopologyDescription, current: &TopologyDescription) -> UpgradeReport {
    let mut r = UpgradeReport::default();
    if saved.application_id != current.application_id {
        r.push(
            "application id",
            Verdict::Lost,
            format!(
                "`{}` → `{}`: a new consumer group and new internal topics; every store starts empty",
                saved.application_id, current.application_id
            ),
        );
    }
    stores(saved, current, &mut r);
    repartitions(saved, current, &mut r);
    endpoints(saved, current, &mut r);
    r
}

fn subtopology_of(d: &TopologyDescription, store: &str) -> Option<usize> {
    d.subtopologies
        .iter()
        .find(|s| s.stores.iter().any(|x| x == store))
        .map(|s| s.id)
}

fn stores(saved: &TopologyDescription, current: &TopologyDescription, r: &mut UpgradeReport) {
    let old: BTreeMap<&str, &StoreDescription> =
        saved.stores.iter().map(|s| (s.name.as_str(), s)).collect();
    let new: BTreeMap<&str, &StoreDescription> = current
        .stores
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    for (name, o) in &old {
        let item = format!("store `{name}`");
        let Some(n) = new.get(name) else {
            let renamed = current.stores.iter().find(|n| {
                !old.contains_key(n.name.as_str())
                    && n.key_serde == o.key_serde
                    && n.value_serde == o.value_serde
                    && n.window == o.window
            });
            let lost = match &o.changelog {
                Some(cl) => format!("its state (changelog `{cl}`) is no longer read"),
                None => "its state is no longer read".to_string(),
            };
            match renamed {
                Some(n) => r.push(
                    item,
                    Verdict::Lost,
                    format!("renamed to `{}`? `{}` starts empty; {lost}", n.name, n.name),
                ),
                None => r.push(item, Verdict::Lost, format!("removed; {lost}")),
            }
            continue;
        };
        for (what, a, b) in [
            ("key", &o.key_serde, &n.key_serde),
            ("value", &o.value_serde, &n.value_serde),
        ] {
            if a != b {
                r.push(
                    &item,
                    Verdict::Incompatible,
                    format!(
                        "{what} serde `{}` → `{}`: its entries and changelog were written with the old one",
                        serde_of(a),
                        serde_of(b)
                    ),
                );
            }
        }
        if o.window != n.window {
            r.push(
                &item,
                Verdict::Incompatible,
                format!(
                    "window layout {} → {}: stored windows do not fit the new one",
                    o.window.as_deref().unwrap_or("none"),
                    n.window.as_deref().unwrap_or("none")
                ),
            );
        }
        if o.changelog != n.changelog || o.changelog_kind != n.changelog_kind {
            r.push(
                &item,
                Verdict::Lost,
                format!(
                    "changelog {} ({}) → {} ({}): a restore reads the new one, which does not hold the state",
                    o.changelog.as_deref().unwrap_or("none"),
                    o.changelog_kind,
                    n.changelog.as_deref().unwrap_or("none"),
                    n.changelog_kind
                ),
            );
        }
        if o.retention_ms != n.retention_ms {
            r.push(
                &item,
                Verdict::Compatible,
                format!(
                    "retention {:?} → {:?} ms: applies to windows written from now on",
                    o.retention_ms, n.retention_ms
                ),
            );
        }
        let (so, sn) = (subtopology_of(saved, name), subtopology_of(current, name));
        if so != sn {
            r.push(
                &item,
                Verdict::Kept,
                format!(
                    "moves from sub-topology {so:?} to {sn:?}: its tasks get new ids, and each restores the store from its changelog once"
                ),
            );
        }
    }
    for name in new.keys().filter(|n| !old.contains_key(*n)) {
        r.push(
            format!("store `{name}`"),
            Verdict::Compatible,
            "new: starts empty",
        );
    }
}

fn internal_sinks(d: &TopologyDescription) -> BTreeMap<&str, &EndpointDescription> {
    d.sinks
        .iter()
        .filter(|s| s.internal)
        .map(|s| (s.topic.as_str(), s))
        .collect()
}

fn repartitions(saved: &TopologyDescription, current: &TopologyDescription, r: &mut UpgradeReport) {
    let old: BTreeMap<&str, Option<i32>> = saved
        .repartition_topics
        .iter()
        .map(|t| (t.topic.as_str(), t.partitions))
        .collect();
    let new: BTreeMap<&str, Option<i32>> = current
        .repartition_topics
        .iter()
        .map(|t| (t.topic.as_str(), t.partitions))
        .collect();
    let (old_sinks, new_sinks) = (internal_sinks(saved), internal_sinks(current));
    for (topic, parts) in &old {
        let item = format!("repartition topic `{topic}`");
        let Some(now) = new.get(topic) else {
            let added: Vec<&str> = new
                .keys()
                .filter(|t| !old.contains_key(*t))
                .copied()
                .collect();
            let hint = match added.as_slice() {
                [one] => format!(" (renamed to `{one}`?)"),
                _ => String::new(),
            };
            r.push(
                item,
                Verdict::Lost,
                format!("removed{hint}: records in it at the upgrade are never processed"),
            );
            continue;
        };
        if parts != now {
            let show = |p: &Option<i32>| p.map_or("its input's".to_string(), |n| n.to_string());
            r.push(
                &item,
                Verdict::Incompatible,
                format!(
                    "partitions {} → {}: keys move to other partitions than the tasks holding their state",
                    show(parts),
                    show(now)
                ),
            );
        }
        if let (Some(o), Some(n)) = (old_sinks.get(topic), new_sinks.get(topic)) {
            for (what, a, b) in [
                ("key", &o.key_serde, &n.key_serde),
                ("value", &o.value_serde, &n.value_serde),
            ] {
                if a != b {
                    r.push(
                        &item,
                        Verdict::Incompatible,
                        format!("{what} serde `{a}` → `{b}`: records in flight were written with the old one, and keys group differently"),
                    );
                }
            }
        }
    }
    for topic in new.keys().filter(|t| !old.contains_key(*t)) {
        r.push(
            format!("repartition topic `{topic}`"),
            Verdict::Compatible,
            "new: created at start",
        );
    }
}

fn external(list: &[EndpointDescription]) -> BTreeMap<&str, &EndpointDescription> {
    list.iter()
        .filter(|e| !e.internal)
        .map(|e| (e.topic.as_str(), e))
        .collect()
}

fn endpoints(saved: &TopologyDescription, current: &TopologyDescription, r: &mut UpgradeReport) {
    let (os, ns) = (external(&saved.sources), external(&current.sources));
    for t in os.keys().filter(|t| !ns.contains_key(*t)) {
        r.push(
            format!("source `{t}`"),
            Verdict::Compatible,
            "no longer read",
        );
    }
    for t in ns.keys().filter(|t| !os.contains_key(*t)) {
        r.push(
            format!("source `{t}`"),
            Verdict::Compatible,
            "new: read from the committed offset, or as auto.offset.reset says",
        );
    }
    for (t, o) in &os {
        if let Some(n) = ns.get(t) {
            if o.key_serde != n.key_serde || o.value_serde != n.value_serde {
                r.push(
                    format!("source `{t}`"),
                    Verdict::Incompatible,
                    format!(
                        "read with `{}`/`{}` instead of `{}`/`{}`: records already in the topic may not parse",
                        n.key_serde, n.value_serde, o.key_serde, o.value_serde
                    ),
                );
            }
        }
    }
    let (os, ns) = (external(&saved.sinks), external(&current.sinks));
    for (t, o) in &os {
        match ns.get(t) {
            None => r.push(
                format!("sink `{t}`"),
                Verdict::Compatible,
                "no longer written",
            ),
            Some(n) if o.key_serde != n.key_serde || o.value_serde != n.value_serde => r.push(
                format!("sink `{t}`"),
                Verdict::Compatible,
                format!(
                    "written with `{}`/`{}` instead of `{}`/`{}`: its readers see the new format",
                    n.key_serde, n.value_serde, o.key_serde, o.value_serde
                ),
            ),
            Some(_) => {}
        }
    }
    for t in ns.keys().filter(|t| !os.contains_key(*t)) {
        r.push(format!("sink `{t}`"), Verdict::Compatible, "new");
    }
}
