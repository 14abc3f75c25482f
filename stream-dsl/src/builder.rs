//! The entry point: [`StreamsBuilder`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use stream_core::data::Data;
use stream_core::graph::{Changelog, ProcessorFactory, StoreSpec, TopicRef, TopologyBuilder};
use stream_core::serde::{StringSerde, erase};
use stream_core::{Topology, TopologyError};

use crate::kstream::KStream;
use crate::options::Consumed;

pub(crate) struct Inner {
    pub(crate) graph: TopologyBuilder,
    counters: HashMap<&'static str, usize>,
    derived: HashMap<String, usize>,
}

/// Builds a topology. Cheap to clone: clones share one graph.
///
/// ```
/// use stream_dsl::prelude::*;
///
/// let builder = StreamsBuilder::new();
/// builder.source("in").to_topic("out");
/// let topology = builder.build().unwrap();
/// assert!(topology.describe("app").contains("Source: source-in"));
/// ```
#[derive(Clone)]
pub struct StreamsBuilder {
    pub(crate) inner: Rc<RefCell<Inner>>,
}

impl Default for StreamsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamsBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        StreamsBuilder {
            inner: Rc::new(RefCell::new(Inner {
                graph: TopologyBuilder::new(),
                counters: HashMap::new(),
                derived: HashMap::new(),
            })),
        }
    }

    /// A stream of the records of `topic`, keys and values as UTF-8 strings.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "v");
    /// assert_eq!(d.output_utf8("out"), vec![("k".to_string(), "v".to_string())]);
    /// ```
    pub fn source(&self, topic: &str) -> KStream<String, String> {
        self.source_with(topic, Consumed::with(StringSerde, StringSerde))
    }

    /// A stream of the records of `topic`, read with the given serdes.
    /// Records that fail to deserialize go to the dead-letter topic.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// #[derive(serde::Deserialize, serde::Serialize, Clone)]
    /// struct User { email: String }
    ///
    /// let b = StreamsBuilder::new();
    /// b.source_with("users", Consumed::<String, User>::json())
    ///     .map_values(|u| u.email)
    ///     .to_topic("emails");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("users", "", r#"{"email":"a@b.c"}"#);
    /// d.pipe_str("users", "", r#"{"email":"#); // truncated: dead-lettered
    /// assert_eq!(d.output_utf8("emails"), vec![(String::new(), "a@b.c".to_string())]);
    /// assert_eq!(d.dead_letters().len(), 1);
    /// ```
    pub fn source_with<K: Data + Clone, V: Data + Clone>(
        &self,
        topic: &str,
        consumed: Consumed<K, V>,
    ) -> KStream<K, V> {
        let name = format!("source-{topic}");
        let node = self.inner.borrow_mut().graph.add_source(
            name,
            vec![TopicRef::External(topic.to_string())],
            erase(consumed.key.clone()),
            erase(consumed.value.clone()),
        );
        if let Some(ex) = consumed.timestamps {
            self.inner
                .borrow_mut()
                .graph
                .set_timestamp_extractor(node, ex);
        }
        KStream::new(
            self.clone(),
            node,
            vec![topic.to_string()],
            Some(consumed.key),
            Some(consumed.value),
            false,
        )
    }

    /// Declares a store for custom processors ([`KStream::process`]); it is
    /// changelogged to `<app>-<name>-changelog`.
    pub fn add_store(&self, name: &str) {
        self.inner.borrow_mut().graph.add_store(StoreSpec {
            retention_ms: None,
            window: None,
            name: name.to_string(),
            changelog: Changelog::Internal,
            format: None,
        });
    }

    /// Checks the graph and returns the topology.
    pub fn build(self) -> Result<Topology, TopologyError> {
        let inner = match Rc::try_unwrap(self.inner) {
            Ok(cell) => cell.into_inner(),
            Err(shared) => {
                let mut b = shared.borrow_mut();
                Inner {
                    graph: std::mem::take(&mut b.graph),
                    counters: std::mem::take(&mut b.counters),
                    derived: std::mem::take(&mut b.derived),
                }
            }
        };
        inner.graph.build()
    }

    /// A node name `<kind>-<n>` (names are for display; state never depends on them).
    pub(crate) fn node_name(&self, kind: &'static str) -> String {
        let mut inner = self.inner.borrow_mut();
        let n = inner.counters.entry(kind).or_insert(0);
        *n += 1;
        format!("{kind}-{n}")
    }

    /// A stable name for a stateful operator: from the source topics it
    /// descends from and the operation, so that adding stateless operators
    /// upstream never renames a store or an internal topic.
    pub(crate) fn derived_name(&self, sources: &[String], op: &str) -> String {
        let base = format!("{}-{op}", sources.join("+"));
        let mut inner = self.inner.borrow_mut();
        let n = inner.derived.entry(base.clone()).or_insert(0);
        *n += 1;
        if *n == 1 { base } else { format!("{base}-{n}") }
    }

    pub(crate) fn add_processor(
        &self,
        kind: &'static str,
        factory: ProcessorFactory,
        parents: &[usize],
        stores: Vec<String>,
    ) -> usize {
        let name = self.node_name(kind);
        self.inner
            .borrow_mut()
            .graph
            .add_processor(name, factory, parents, stores)
    }

    pub(crate) fn record_error(&self, e: TopologyError) {
        self.inner.borrow_mut().graph.record_error(e);
    }

    pub(crate) fn with_graph<R>(&self, f: impl FnOnce(&mut TopologyBuilder) -> R) -> R {
        f(&mut self.inner.borrow_mut().graph)
    }
}
