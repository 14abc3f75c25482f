//! [`KTable`]: a changing table, from an aggregation or read from a topic
//! ([`StreamsBuilder::table`](crate::StreamsBuilder::table)), seen as the
//! stream of its rows' changes.
//!
//! Every table node forwards [`Change`] values (new and old value), as
//! Kafka Streams does with `sendOldValues`: `filter` forwards a tombstone
//! exactly when a row stops matching, and a sink writes a deleted row as a
//! record with a null value.

use std::sync::Arc;

use stream_core::data::{Data, downcast};
use stream_core::graph::TopicRef;
use stream_core::serde::{NullableSerde, Serde, erase};

use crate::builder::StreamsBuilder;
use crate::change::Change;
use crate::kstream::KStream;
use crate::ops;
use crate::windows::WindowSpec;

/// A table per key, seen as its stream of changes.
pub struct KTable<K, V> {
    /// Builder, node and serdes; the node forwards `Change<V>` values.
    stream: KStream<K, V>,
    store: String,
    /// Whether `store` holds exactly this table's rows (a table read from
    /// a topic, an aggregation): joins look rows up in it. A filtered or
    /// mapped table names its parent's store but is not materialized.
    materialized: bool,
    /// The windows of a windowed aggregation's table.
    windows: Option<WindowSpec>,
}

impl<K: Data + Clone, V: Data + Clone> KTable<K, V> {
    /// A materialized table whose node `node` forwards `Change<V>`.
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
            materialized: true,
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

    pub(crate) fn is_materialized(&self) -> bool {
        self.materialized
    }

    pub(crate) fn clone_table(&self) -> KTable<K, V> {
        KTable {
            stream: self.stream.clone(),
            store: self.store.clone(),
            materialized: self.materialized,
            windows: self.windows,
        }
    }

    /// A derived (not materialized) table hanging under `node`.
    fn derived<V2: Data + Clone>(
        &self,
        node: usize,
        value_serde: Option<Arc<dyn Serde<V2>>>,
    ) -> KTable<K, V2> {
        KTable {
            stream: KStream::new(
                self.stream.b.clone(),
                node,
                self.stream.sources.clone(),
                self.stream.key_serde.clone(),
                value_serde,
                false,
            ),
            store: self.store.clone(),
            materialized: false,
            windows: self.windows,
        }
    }

    /// The (not materialized) result of a join hanging under `node`.
    pub(crate) fn joined<R: Data + Clone>(
        &self,
        node: usize,
        value_serde: Option<Arc<dyn Serde<R>>>,
    ) -> KTable<K, R> {
        let mut t = self.derived(node, value_serde);
        t.windows = None;
        t
    }

    /// Adds a node mapping each change with `f` (`None`: forward nothing).
    fn on_changes<V2: Data + Clone>(
        &self,
        kind: &'static str,
        f: impl Fn(&K, Change<V>) -> Option<Change<V2>> + Send + Sync + 'static,
    ) -> usize {
        let body: ops::OpFn = Arc::new(move |ctx, r| {
            let node = ctx.node_name();
            let k = downcast::<K>(r.key, node)?;
            let c = downcast::<Change<V>>(r.value, node)?;
            if let Some(c2) = f(&k, c) {
                ctx.forward(ops::record(k, c2, r.timestamp, r.headers));
            }
            Ok(())
        });
        self.stream
            .b
            .add_processor(kind, ops::factory(body), &[self.stream.node], Vec::new())
    }

    /// A node forwarding each change's new value as `Option<V>`.
    fn new_values(&self) -> usize {
        let body: ops::OpFn = Arc::new(move |ctx, r| {
            let node = ctx.node_name();
            let c = downcast::<Change<V>>(r.value, node)?;
            ctx.forward(ops::record_dyn(r.key, c.new, r.timestamp, r.headers));
            Ok(())
        });
        self.stream.b.add_processor(
            "new-values",
            ops::factory(body),
            &[self.stream.node],
            Vec::new(),
        )
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

    /// The stream of this table's new values. A deleted row has no value
    /// and is not forwarded (Kafka Streams forwards a null value; write the
    /// table with [`to_topic`](Self::to_topic) to keep tombstones, or use
    /// [`to_change_stream`](Self::to_change_stream)).
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
        let body: ops::OpFn = Arc::new(move |ctx, r| {
            let node = ctx.node_name();
            let c = downcast::<Change<V>>(r.value, node)?;
            if let Some(v) = c.new {
                ctx.forward(ops::record_dyn(r.key, v, r.timestamp, r.headers));
            }
            Ok(())
        });
        let node = self.stream.b.add_processor(
            "to-stream",
            ops::factory(body),
            &[self.stream.node],
            Vec::new(),
        );
        KStream::new(
            self.stream.b.clone(),
            node,
            self.stream.sources.clone(),
            self.stream.key_serde.clone(),
            self.stream.value_serde.clone(),
            false,
        )
    }

    /// The stream of this table's changes as nullable values: `None` for a
    /// deleted row (Kafka Streams' `toStream()` with its null values).
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.table("users", Consumed::with(StringSerde, StringSerde), Materialized::as_store("users"))
    ///     .to_change_stream()
    ///     .map_values(|v| v.unwrap_or_else(|| "(deleted)".into()))
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("users", "ann", "Acme");
    /// d.pipe("users", Some(b"ann"), None);
    /// let out: Vec<String> = d.output_utf8("out").into_iter().map(|(_, v)| v).collect();
    /// assert_eq!(out, vec!["Acme", "(deleted)"]);
    /// ```
    pub fn to_change_stream(&self) -> KStream<K, Option<V>> {
        let node = self.new_values();
        let vs: Option<Arc<dyn Serde<Option<V>>>> = self
            .stream
            .value_serde
            .clone()
            .map(|s| Arc::new(NullableSerde::new(s)) as Arc<dyn Serde<Option<V>>>);
        KStream::new(
            self.stream.b.clone(),
            node,
            self.stream.sources.clone(),
            self.stream.key_serde.clone(),
            vs,
            false,
        )
    }

    /// Keeps the rows for which `predicate` holds. A row that stops
    /// matching is forwarded as deleted (a tombstone in a sink); updates of
    /// rows that never matched are not forwarded.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.table("stock", Consumed::with(StringSerde, I64Serde), Materialized::as_store("stock"))
    ///     .filter(|_k, n| *n > 0)
    ///     .to_topic("in-stock");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe("stock", Some(b"pen"), Some(&0i64.to_be_bytes()));  // never matched: nothing
    /// d.pipe("stock", Some(b"pen"), Some(&5i64.to_be_bytes()));  // matches
    /// d.pipe("stock", Some(b"pen"), Some(&0i64.to_be_bytes()));  // stops matching: tombstone
    /// let out: Vec<Option<Vec<u8>>> = d.records("in-stock").into_iter().map(|r| r.value).collect();
    /// assert_eq!(out, vec![Some(5i64.to_be_bytes().to_vec()), None]);
    /// ```
    pub fn filter(
        &self,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
    ) -> KTable<K, V> {
        let node = self.on_changes::<V>("table-filter", move |k, c| {
            let c = Change::new(
                c.new.filter(|v| predicate(k, v)),
                c.old.filter(|v| predicate(k, v)),
            );
            (!c.is_empty()).then_some(c)
        });
        self.derived(node, self.stream.value_serde.clone())
    }

    /// Keeps the rows for which `predicate` does not hold (see
    /// [`filter`](Self::filter)).
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").group_by_key().count(Materialized::default())
    ///     .filter_not(|_k, n| *n >= 2).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "x");
    /// d.pipe_str("in", "k", "y"); // 2: stops matching, a tombstone
    /// let out: Vec<Option<Vec<u8>>> = d.records("out").into_iter().map(|r| r.value).collect();
    /// assert_eq!(out, vec![Some(1i64.to_be_bytes().to_vec()), None]);
    /// ```
    pub fn filter_not(
        &self,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
    ) -> KTable<K, V> {
        self.filter(move |k, v| !predicate(k, v))
    }

    /// Maps the rows' values (new and old alike).
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
        let node = self.on_changes("table-map-values", move |_, c| Some(c.map(&f)));
        self.derived(node, stream_core::serde::builtin_serde::<V2>())
    }

    /// Writes the table's changes to `topic`: each new value, and a
    /// tombstone (null value) for a deleted row.
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
        let b = &self.stream.b;
        let (Some(ks), Some(vs)) = (self.key_serde(), self.value_serde()) else {
            b.record_error(stream_core::TopologyError::MissingSerde(format!(
                "sink to `{topic}`: no serde known for key {} or value {}",
                std::any::type_name::<K>(),
                std::any::type_name::<V>()
            )));
            return;
        };
        let node = self.new_values();
        let nullable: Arc<dyn Serde<Option<V>>> = Arc::new(NullableSerde::new(vs));
        let name = b.node_name("sink");
        b.with_graph(|g| {
            g.add_sink(
                name,
                TopicRef::External(topic.to_string()),
                erase(ks),
                erase(nullable),
                None,
                &[node],
            )
        });
    }
}
