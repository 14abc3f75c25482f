//! [`KTable`]: the changing result of an aggregation.

use std::sync::Arc;

use stream_core::data::Data;
use stream_core::serde::Serde;

use crate::builder::StreamsBuilder;
use crate::kstream::KStream;
use crate::windows::WindowSpec;

/// The result of an aggregation: a table per key, seen as its stream of
/// updates (every change of a key's aggregate is emitted).
pub struct KTable<K, V> {
    stream: KStream<K, V>,
    store: String,
    /// The windows of a windowed aggregation's table.
    windows: Option<WindowSpec>,
}

impl<K: Data + Clone, V: Data + Clone> KTable<K, V> {
    pub(crate) fn new(
        b: StreamsBuilder,
        node: usize,
        sources: Vec<String>,
        key_serde: Option<Arc<dyn Serde<K>>>,
        value_serde: Option<Arc<dyn Serde<V>>>,
        store: String,
    ) -> Self {
        KTable {
            stream: KStream::new(b, node, sources, key_serde, value_serde, false),
            store,
            windows: None,
        }
    }

    /// Marks the table as windowed by `windows`.
    pub(crate) fn with_windows(mut self, windows: WindowSpec) -> Self {
        self.windows = Some(windows);
        self
    }

    pub(crate) fn windows(&self) -> Option<WindowSpec> {
        self.windows
    }

    pub(crate) fn builder(&self) -> StreamsBuilder {
        self.stream.b.clone()
    }

    pub(crate) fn node(&self) -> usize {
        self.stream.node
    }

    pub(crate) fn sources(&self) -> Vec<String> {
        self.stream.sources.clone()
    }

    pub(crate) fn key_serde(&self) -> Option<Arc<dyn Serde<K>>> {
        self.stream.key_serde.clone()
    }

    pub(crate) fn value_serde(&self) -> Option<Arc<dyn Serde<V>>> {
        self.stream.value_serde.clone()
    }

    pub(crate) fn clone_table(&self) -> KTable<K, V> {
        KTable {
            stream: self.stream.clone(),
            store: self.store.clone(),
            windows: self.windows,
        }
    }

    /// The name of the store holding this table.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// let t = b.source("new_users").group_by_key().count(Materialized::default());
    /// assert_eq!(t.store_name(), "new_users-count");
    /// ```
    pub fn store_name(&self) -> &str {
        &self.store
    }

    /// The stream of updates of this table.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").group_by_key().count(Materialized::default())
    ///     .to_stream().map_values(|n| n.to_string()).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "x");
    /// assert_eq!(d.output_utf8("out"), vec![("k".to_string(), "1".to_string())]);
    /// ```
    pub fn to_stream(&self) -> KStream<K, V> {
        self.stream.clone()
    }

    /// Keeps the updates for which `predicate` holds.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").group_by_key().count(Materialized::default())
    ///     .filter(|_k, n| *n >= 2).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "x");
    /// d.pipe_str("in", "k", "y");
    /// assert_eq!(d.records("out").len(), 1);
    /// ```
    pub fn filter(
        &self,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
    ) -> KTable<K, V> {
        KTable {
            stream: self.stream.filter(predicate),
            store: self.store.clone(),
            windows: self.windows,
        }
    }

    /// Maps the updates' values.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").group_by_key().count(Materialized::default())
    ///     .map_values(|n| format!("seen {n}")).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "x");
    /// assert_eq!(d.output_utf8("out")[0].1, "seen 1");
    /// ```
    pub fn map_values<V2: Data + Clone>(
        &self,
        f: impl Fn(V) -> V2 + Send + Sync + 'static,
    ) -> KTable<K, V2> {
        KTable {
            stream: self.stream.map_values(f),
            store: self.store.clone(),
            windows: self.windows,
        }
    }

    /// Writes the updates to `topic`.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").group_by_key().count(Materialized::default()).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "x");
    /// assert_eq!(d.records("out").len(), 1);
    /// ```
    pub fn to_topic(&self, topic: &str) {
        self.stream.to_topic(topic)
    }
}
