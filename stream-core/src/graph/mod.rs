//! The processor graph: nodes (sources, processors, sinks), stores, internal
//! topics, and its split into sub-topologies.
//!
//! A [`TopologyBuilder`] collects nodes; [`TopologyBuilder::build`] checks
//! them and computes sub-topologies: the connected parts of the graph, cut at
//! topics. Every sub-topology runs as one task per input partition.
//! `describe` renders it as text, Mermaid and DOT.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

mod describe;
pub mod description;
mod global;
mod partitions;
pub mod upgrade;

pub use description::TopologyDescription;
pub use global::GlobalTableSpec;
pub use partitions::{CoPartitionMismatch, PartitionPlan};
pub use upgrade::{check_upgrade, Finding, UpgradeReport, Verdict};

use crate::error::{SerdeError, TopologyError};
use crate::processor::Processor;
use crate::serde::DynSerde;
use crate::time::TimestampExtractor;

/// Creates a fresh processor instance for each task.
pub type ProcessorFactory = Arc<dyn Fn() -> Box<dyn Processor> + Send + Sync>;

/// Picks a partition from key bytes, value bytes and the partition count.
pub type Partitioner = Arc<dyn Fn(&[u8], &[u8], i32) -> i32 + Send + Sync>;

/// A topic as the topology names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicRef {
    /// A user topic, used by its name.
    External(String),
    /// A topic the framework owns; the name is prefixed with the application id.
    Internal(String),
}

impl TopicRef {
    /// The topic's name for an application.
    pub fn resolve(&self, application_id: &str) -> String {
        match self {
            TopicRef::External(t) => t.clone(),
            TopicRef::Internal(suffix) => internal_topic_name(application_id, suffix),
        }
    }
}

/// The one place internal topic names are made: `<application.id>-<suffix>`.
pub fn internal_topic_name(application_id: &str, suffix: &str) -> String {
    format!("{application_id}-{suffix}")
}

/// The default changelog topic of a store: `<application.id>-<store>-changelog`.
pub fn changelog_topic_name(application_id: &str, store: &str) -> String {
    internal_topic_name(application_id, &format!("{store}-changelog"))
}

/// The repartition topic suffix for a name: `<name>-repartition`.
pub fn repartition_suffix(name: &str) -> String {
    format!("{name}-repartition")
}

/// The dead-letter topic of an application: `<application.id>-dlq`.
pub fn dead_letter_topic_name(application_id: &str) -> String {
    internal_topic_name(application_id, "dlq")
}

/// Maps a store entry to a record of an existing changelog topic and back.
///
/// Used when a store is changelogged to a topic with its own schema (the
/// tutorial's `watchlist`): `decode` returns `None` for records that are not
/// this application's, which restore skips.
pub trait ChangelogCodec: Send + Sync {
    /// Store entry (key, value bytes) → record (key, value bytes).
    fn encode(&self, key: &[u8], value: &[u8]) -> Result<(Vec<u8>, Vec<u8>), SerdeError>;
    /// Record → store entry, or `None` when the record is not ours.
    fn decode(&self, key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)>;
}

/// Where a store's changes are logged.
#[derive(Clone)]
pub enum Changelog {
    /// `<application.id>-<store>-changelog`, created compacted by the runtime.
    Internal,
    /// An existing topic, mapped through a codec.
    Existing {
        /// The topic.
        topic: String,
        /// The mapping between store entries and records.
        codec: Arc<dyn ChangelogCodec>,
    },
    /// The table's own source topic, as Kafka Streams' source-topic reuse:
    /// nothing is written (the topic already holds every change); restore
    /// re-reads the topic from the checkpoint up to where input resumes.
    /// `codec`, when given, decides which records are valid entries (a
    /// record processing dead-lettered must not come back on restore).
    SourceTopic {
        /// The table's source topic.
        topic: String,
        /// Validates records and maps them to store entries.
        codec: Option<Arc<dyn ChangelogCodec>>,
    },
    /// Not logged: the store is lost with its local copy.
    Disabled,
}

/// The serdes of a store's keys and values, for reading it from outside
/// the graph (interactive queries, the status page).
#[derive(Clone)]
pub struct StoreFormat {
    /// Key serde.
    pub key: Arc<dyn DynSerde>,
    /// Value serde.
    pub value: Arc<dyn DynSerde>,
}

/// A declared state store.
#[derive(Clone)]
pub struct StoreSpec {
    /// Unique name.
    pub name: String,
    /// Where its changes go.
    pub changelog: Changelog,
    /// Key and value serdes, when known (`None`: entries are shown as bytes).
    pub format: Option<StoreFormat>,
    /// A window store's retention: its changelog is created with
    /// `cleanup.policy=compact,delete` and `retention.ms` of this plus a
    /// day (Kafka Streams' `windowstore.changelog.additional.retention.ms`),
    /// so windows that expired locally also leave the changelog.
    pub retention_ms: Option<i64>,
    /// A window store's layout (interactive queries read it by time range).
    pub window: Option<crate::store::window::WindowLayout>,
}

impl StoreSpec {
    /// The changelog topic of this store for an application, if logged.
    pub fn changelog_topic(&self, application_id: &str) -> Option<String> {
        match &self.changelog {
            Changelog::Internal => Some(changelog_topic_name(application_id, &self.name)),
            Changelog::Existing { topic, .. } | Changelog::SourceTopic { topic, .. } => {
                Some(topic.clone())
            }
            Changelog::Disabled => None,
        }
    }
}

/// What a node does.
#[derive(Clone)]
pub enum NodeKind {
    /// Reads topics and deserializes records.
    Source {
        /// Topics read.
        topics: Vec<TopicRef>,
        /// Key serde.
        key: Arc<dyn DynSerde>,
        /// Value serde.
        value: Arc<dyn DynSerde>,
    },
    /// Runs a processor.
    Processor {
        /// Makes one instance per task.
        factory: ProcessorFactory,
        /// Stores it may use.
        stores: Vec<String>,
    },
    /// Serializes records and writes them to a topic.
    Sink {
        /// Destination.
        topic: TopicRef,
        /// Key serde.
        key: Arc<dyn DynSerde>,
        /// Value serde.
        value: Arc<dyn DynSerde>,
        /// Optional partitioner (default: murmur2 of the key, like Java).
        partitioner: Option<Partitioner>,
    },
}

/// A node of the graph.
#[derive(Clone)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// What it does.
    pub kind: NodeKind,
    /// Indices of parents.
    pub parents: Vec<usize>,
    /// Indices of children, in attachment order.
    pub children: Vec<usize>,
}

/// A connected part of the graph; runs as one task per input partition.
#[derive(Debug, Clone, PartialEq)]
pub struct SubTopology {
    /// Position in [`Topology::subtopologies`].
    pub id: usize,
    /// Node indices, ascending.
    pub nodes: Vec<usize>,
    /// Topics its sources read.
    pub sources: Vec<TopicRef>,
    /// Topics its sinks write.
    pub sinks: Vec<TopicRef>,
    /// Stores it owns.
    pub stores: Vec<String>,
}

/// Collects nodes and stores, then builds a [`Topology`].
#[derive(Default)]
pub struct TopologyBuilder {
    nodes: Vec<Node>,
    names: HashMap<String, usize>,
    stores: Vec<StoreSpec>,
    repartitions: BTreeMap<String, Option<i32>>,
    timestamps: HashMap<usize, TimestampExtractor>,
    notes: HashMap<usize, String>,
    globals: Vec<GlobalTableSpec>,
    errors: Vec<TopologyError>,
}

impl TopologyBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    fn add_node(&mut self, name: String, kind: NodeKind, parents: &[usize]) -> usize {
        let idx = self.nodes.len();
        if self.names.insert(name.clone(), idx).is_some() {
            self.errors.push(TopologyError::DuplicateName(name.clone()));
        }
        for &p in parents {
            match self.nodes.get_mut(p) {
                Some(parent) => parent.children.push(idx),
                None => self.errors.push(TopologyError::UnknownParent {
                    node: name.clone(),
                    parent: p.to_string(),
                }),
            }
        }
        self.nodes.push(Node {
            name,
            kind,
            parents: parents.to_vec(),
            children: Vec::new(),
        });
        idx
    }

    /// Sets where source node `source` takes its records' event time
    /// (default: the Kafka record's timestamp).
    pub fn set_timestamp_extractor(&mut self, source: usize, extractor: TimestampExtractor) {
        self.timestamps.insert(source, extractor);
    }

    /// Attaches a short description to node `node` (a window spec, an
    /// emit strategy), shown by `describe()` and the diagrams.
    pub fn set_note(&mut self, node: usize, note: impl Into<String>) {
        self.notes.insert(node, note.into());
    }

    /// Adds a source node reading `topics`.
    pub fn add_source(
        &mut self,
        name: impl Into<String>,
        topics: Vec<TopicRef>,
        key: Arc<dyn DynSerde>,
        value: Arc<dyn DynSerde>,
    ) -> usize {
        self.add_node(name.into(), NodeKind::Source { topics, key, value }, &[])
    }

    /// Adds a processor node under `parents`, with access to `stores`.
    pub fn add_processor(
        &mut self,
        name: impl Into<String>,
        factory: ProcessorFactory,
        parents: &[usize],
        stores: Vec<String>,
    ) -> usize {
        self.add_node(
            name.into(),
            NodeKind::Processor { factory, stores },
            parents,
        )
    }

    /// Adds a sink node under `parents`.
    pub fn add_sink(
        &mut self,
        name: impl Into<String>,
        topic: TopicRef,
        key: Arc<dyn DynSerde>,
        value: Arc<dyn DynSerde>,
        partitioner: Option<Partitioner>,
        parents: &[usize],
    ) -> usize {
        self.add_node(
            name.into(),
            NodeKind::Sink {
                topic,
                key,
                value,
                partitioner,
            },
            parents,
        )
    }

    /// Declares a store.
    pub fn add_store(&mut self, spec: StoreSpec) {
        if self.stores.iter().any(|s| s.name == spec.name) {
            self.errors
                .push(TopologyError::DuplicateName(spec.name.clone()));
        }
        self.stores.push(spec);
    }

    /// Whether a store of this name exists already.
    pub fn has_store(&self, name: &str) -> bool {
        self.stores.iter().any(|s| s.name == name)
    }

    /// Whether a node of this name exists already.
    pub fn has_node(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Declares a repartition topic (suffix without the application id),
    /// with a fixed partition count or `None` for the upstream's count.
    pub fn add_repartition_topic(&mut self, suffix: impl Into<String>, partitions: Option<i32>) {
        self.repartitions.insert(suffix.into(), partitions);
    }

    /// Records an error found while building; [`build`](Self::build) returns it.
    pub fn record_error(&mut self, error: TopologyError) {
        self.errors.push(error);
    }

    /// Checks the graph and splits it into sub-topologies.
    pub fn build(self) -> Result<Topology, TopologyError> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(e);
        }
        if !self
            .nodes
            .iter()
            .any(|n| matches!(n.kind, NodeKind::Source { .. }))
        {
            return Err(TopologyError::Empty);
        }
        for n in &self.nodes {
            if let NodeKind::Processor { stores, .. } = &n.kind {
                for s in stores {
                    if !self.stores.iter().any(|spec| &spec.name == s) {
                        return Err(TopologyError::UnknownStore {
                            node: n.name.clone(),
                            store: s.clone(),
                        });
                    }
                }
            }
        }
        let subtopologies = split(&self.nodes);
        Ok(Topology {
            nodes: self.nodes,
            stores: self.stores,
            subtopologies,
            repartitions: self.repartitions,
            timestamps: self.timestamps,
            notes: self.notes,
            globals: self.globals,
        })
    }
}

/// Union-find over parent/child edges and shared stores.
fn split(nodes: &[Node]) -> Vec<SubTopology> {
    let mut root: Vec<usize> = (0..nodes.len()).collect();
    fn find(root: &mut [usize], mut i: usize) -> usize {
        while root[i] != i {
            root[i] = root[root[i]];
            i = root[i];
        }
        i
    }
    let union = |root: &mut Vec<usize>, a: usize, b: usize| {
        let (ra, rb) = (find(root, a), find(root, b));
        if ra != rb {
            root[ra.max(rb)] = ra.min(rb);
        }
    };
    let mut store_owner: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for &c in &n.children {
            union(&mut root, i, c);
        }
        if let NodeKind::Processor { stores, .. } = &n.kind {
            for s in stores {
                match store_owner.get(s.as_str()) {
                    Some(&o) => union(&mut root, i, o),
                    None => {
                        store_owner.insert(s, i);
                    }
                }
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..nodes.len() {
        let r = find(&mut root, i);
        groups.entry(r).or_default().push(i);
    }
    groups
        .into_values()
        .enumerate()
        .map(|(id, members)| {
            let mut sources = Vec::new();
            let mut sinks = Vec::new();
            let mut stores = BTreeSet::new();
            for &m in &members {
                match &nodes[m].kind {
                    NodeKind::Source { topics, .. } => sources.extend(topics.iter().cloned()),
                    NodeKind::Sink { topic, .. } => sinks.push(topic.clone()),
                    NodeKind::Processor { stores: s, .. } => stores.extend(s.iter().cloned()),
                }
            }
            SubTopology {
                id,
                nodes: members,
                sources,
                sinks,
                stores: stores.into_iter().collect(),
            }
        })
        .collect()
}

/// A checked processor graph, ready to run.
#[derive(Clone)]
pub struct Topology {
    nodes: Vec<Node>,
    stores: Vec<StoreSpec>,
    subtopologies: Vec<SubTopology>,
    repartitions: BTreeMap<String, Option<i32>>,
    timestamps: HashMap<usize, TimestampExtractor>,
    notes: HashMap<usize, String>,
    globals: Vec<GlobalTableSpec>,
}

impl Topology {
    /// The description attached to node `node`, if any.
    pub fn note(&self, node: usize) -> Option<&str> {
        self.notes.get(&node).map(String::as_str)
    }

    /// Node `node`'s name with its note: `name [note]`.
    pub fn label(&self, node: usize) -> String {
        match (self.nodes.get(node), self.note(node)) {
            (Some(n), Some(note)) => format!("{} [{note}]", n.name),
            (Some(n), None) => n.name.clone(),
            (None, _) => String::new(),
        }
    }

    /// Where source node `node` takes its records' event time.
    pub fn timestamp_extractor(&self, node: usize) -> TimestampExtractor {
        self.timestamps.get(&node).cloned().unwrap_or_default()
    }

    /// All nodes, by index.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// All stores.
    pub fn stores(&self) -> &[StoreSpec] {
        &self.stores
    }

    /// The store with this name.
    pub fn store(&self, name: &str) -> Option<&StoreSpec> {
        self.stores.iter().find(|s| s.name == name)
    }

    /// The sub-topologies, in a stable order.
    pub fn subtopologies(&self) -> &[SubTopology] {
        &self.subtopologies
    }

    /// Repartition topics (suffixes) with their configured partition counts.
    pub fn repartition_topics(&self) -> &BTreeMap<String, Option<i32>> {
        &self.repartitions
    }

    /// The sub-topology that reads `topic` (resolved name).
    pub fn subtopology_reading(&self, application_id: &str, topic: &str) -> Option<&SubTopology> {
        self.subtopologies
            .iter()
            .find(|s| s.sources.iter().any(|t| t.resolve(application_id) == topic))
    }

    /// Every topic read by a source, resolved.
    pub fn source_topics(&self, application_id: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .subtopologies
            .iter()
            .flat_map(|s| s.sources.iter().map(|t| t.resolve(application_id)))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Topologies the unit tests of other modules run.
#[cfg(test)]
pub(crate) mod test_topologies {
    use std::sync::Arc;

    use super::{TopicRef, Topology, TopologyBuilder};
    use crate::serde::{erase, StringSerde};

    /// Topic `in` to topic `out`, strings, nothing in between.
    pub(crate) fn in_to_out() -> Topology {
        let s = || erase::<String>(Arc::new(StringSerde));
        let mut b = TopologyBuilder::new();
        let src = b.add_source("in", vec![TopicRef::External("in".into())], s(), s());
        b.add_sink(
            "out",
            TopicRef::External("out".into()),
            s(),
            s(),
            None,
            &[src],
        );
        b.build().expect("a valid topology")
    }
}
