//! A [`Topology`] as data: what running state depends on (stores with their
//! serdes and changelogs, internal topics with their partition counts,
//! sub-topologies), as JSON to save at a release and compare with later
//! versions ([`super::upgrade`]).
//!
//! ```
//! use std::sync::Arc;
//! use stream_core::graph::{TopicRef, TopologyBuilder, TopologyDescription};
//! use stream_core::serde::{erase, StringSerde};
//!
//! let s = || erase::<String>(Arc::new(StringSerde));
//! let mut b = TopologyBuilder::new();
//! let src = b.add_source("in", vec![TopicRef::External("in".into())], s(), s());
//! b.add_sink("out", TopicRef::External("out".into()), s(), s(), None, &[src]);
//! let d = b.build().unwrap().description("app");
//! let json = d.to_json();
//! assert_eq!(TopologyDescription::from_json(&json).unwrap(), d);
//! assert_eq!(d.sinks[0].topic, "out");
//! ```

use serde::{Deserialize, Serialize};

use super::*;

/// Version of the description's format.
pub const DESCRIPTION_FORMAT: u32 = 1;

/// A topology as data. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyDescription {
    /// [`DESCRIPTION_FORMAT`] of the writer.
    pub format: u32,
    /// The application id the names were resolved with.
    pub application_id: String,
    /// Sub-topologies in order (their index is part of task ids).
    pub subtopologies: Vec<SubTopologyDescription>,
    /// Every state store.
    pub stores: Vec<StoreDescription>,
    /// Repartition topics.
    pub repartition_topics: Vec<RepartitionDescription>,
    /// Every sink: topic and serdes.
    pub sinks: Vec<EndpointDescription>,
    /// Every source: topics and serdes.
    pub sources: Vec<EndpointDescription>,
    /// Global tables: store and topic.
    pub global_tables: Vec<GlobalDescription>,
}

/// One sub-topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubTopologyDescription {
    /// Index (the first part of its task ids, `<id>_<partition>`).
    pub id: usize,
    /// Topics read (resolved names).
    pub sources: Vec<String>,
    /// Topics written.
    pub sinks: Vec<String>,
    /// Stores owned.
    pub stores: Vec<String>,
    /// Nodes as one line each (`kind: label`), windows and joins included.
    pub nodes: Vec<String>,
}

/// One state store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreDescription {
    /// Store name.
    pub name: String,
    /// Identity of the key serde ([`crate::serde::Serde::identity`]), when known.
    pub key_serde: Option<String>,
    /// Identity of the value serde, when known.
    pub value_serde: Option<String>,
    /// `internal`, `existing`, `source-topic` or `disabled`.
    pub changelog_kind: String,
    /// The changelog topic, if any.
    pub changelog: Option<String>,
    /// Window layout (`time size=<ms>`, `session`), for window stores.
    pub window: Option<String>,
    /// Retention of a window store (ms).
    pub retention_ms: Option<i64>,
}

/// One repartition topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepartitionDescription {
    /// Resolved topic name.
    pub topic: String,
    /// Declared partition count (`None`: taken from its input).
    pub partitions: Option<i32>,
}

/// A source or a sink: topics and serdes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDescription {
    /// Node name.
    pub node: String,
    /// Topic(s), comma-separated for a source reading several.
    pub topic: String,
    /// Whether the topic is internal (a repartition topic).
    pub internal: bool,
    /// Key serde identity.
    pub key_serde: String,
    /// Value serde identity.
    pub value_serde: String,
}

/// A global table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalDescription {
    /// Store name.
    pub store: String,
    /// Topic read.
    pub topic: String,
}

impl TopologyDescription {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Parses a saved description.
    pub fn from_json(text: &str) -> Result<TopologyDescription, serde_json::Error> {
        serde_json::from_str(text)
    }
}

fn changelog_kind(c: &Changelog) -> &'static str {
    match c {
        Changelog::Internal => "internal",
        Changelog::Existing { .. } => "existing",
        Changelog::SourceTopic { .. } => "source-topic",
        Changelog::Disabled => "disabled",
    }
}

impl Topology {
    /// This topology as data, names resolved for `application_id`.
    pub fn description(&self, application_id: &str) -> TopologyDescription {
        let mut sources = Vec::new();
        let mut sinks = Vec::new();
        for n in &self.nodes {
            match &n.kind {
                NodeKind::Source { topics, key, value } => sources.push(EndpointDescription {
                    node: n.name.clone(),
                    topic: topics
                        .iter()
                        .map(|t| t.resolve(application_id))
                        .collect::<Vec<_>>()
                        .join(","),
                    internal: topics.iter().any(|t| matches!(t, TopicRef::Internal(_))),
                    key_serde: key.identity(),
                    value_serde: value.identity(),
                }),
                NodeKind::Sink {
                    topic, key, value, ..
                } => sinks.push(EndpointDescription {
                    node: n.name.clone(),
                    topic: topic.resolve(application_id),
                    internal: matches!(topic, TopicRef::Internal(_)),
                    key_serde: key.identity(),
                    value_serde: value.identity(),
                }),
                NodeKind::Processor { .. } => {}
            }
        }
        let subtopologies = self
            .subtopologies
            .iter()
            .map(|st| SubTopologyDescription {
                id: st.id,
                sources: st
                    .sources
                    .iter()
                    .map(|t| t.resolve(application_id))
                    .collect(),
                sinks: st.sinks.iter().map(|t| t.resolve(application_id)).collect(),
                stores: st.stores.clone(),
                nodes: st
                    .nodes
                    .iter()
                    .map(|&i| {
                        let kind = match self.nodes[i].kind {
                            NodeKind::Source { .. } => "source",
                            NodeKind::Processor { .. } => "processor",
                            NodeKind::Sink { .. } => "sink",
                        };
                        format!("{kind}: {}", self.label(i))
                    })
                    .collect(),
            })
            .collect();
        let stores = self
            .stores
            .iter()
            .map(|s| StoreDescription {
                name: s.name.clone(),
                key_serde: s.format.as_ref().map(|f| f.key.identity()),
                value_serde: s.format.as_ref().map(|f| f.value.identity()),
                changelog_kind: changelog_kind(&s.changelog).to_string(),
                changelog: s.changelog_topic(application_id),
                window: s.window.map(|w| match w {
                    crate::store::window::WindowLayout::Time { size_ms } => {
                        format!("time size={size_ms}")
                    }
                    crate::store::window::WindowLayout::Session => "session".to_string(),
                }),
                retention_ms: s.retention_ms,
            })
            .collect();
        TopologyDescription {
            format: DESCRIPTION_FORMAT,
            application_id: application_id.to_string(),
            subtopologies,
            stores,
            repartition_topics: self
                .repartitions
                .iter()
                .map(|(suffix, p)| RepartitionDescription {
                    topic: internal_topic_name(application_id, suffix),
                    partitions: *p,
                })
                .collect(),
            sinks,
            sources,
            global_tables: self
                .globals
                .iter()
                .map(|g| GlobalDescription {
                    store: g.store.clone(),
                    topic: g.topic.clone(),
                })
                .collect(),
        }
    }
}
