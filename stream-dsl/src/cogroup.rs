//! [`CogroupedKStream`]: several grouped streams folded into one aggregate
//! per key (Kafka Streams' `cogroup`, `internals/CogroupedKStreamImpl`).
//!
//! Each input keeps its own adder; all of them update one store, so a
//! key's aggregate sees the records of every input. Inputs whose key
//! changed go through their own repartition topics, which the partition
//! planner gives one count; external inputs must be co-partitioned (the
//! runtime checks at start).

use std::sync::Arc;

use stream_core::data::Data;
use stream_core::serde::{Serde, builtin_serde};
use stream_core::{Processor, TopologyError};

use crate::grouped::{Adder, Aggregator, KGroupedStream};
use crate::grouped_table::add_kv_store;
use crate::ktable::KTable;
use crate::ops;
use crate::options::Materialized;

/// Adds one input's aggregator under the shared store; returns its node.
type Lowering<K, A> = Box<
    dyn Fn(
        &str,
        &Arc<dyn Serde<K>>,
        &Arc<dyn Serde<A>>,
        &Arc<dyn Fn() -> A + Send + Sync>,
        usize,
    ) -> Option<usize>,
>;

/// Grouped streams folded into one aggregate, waiting for
/// [`aggregate`](Self::aggregate).
pub struct CogroupedKStream<K, A> {
    b: crate::StreamsBuilder,
    sources: Vec<String>,
    key: Option<Arc<dyn Serde<K>>>,
    inputs: Vec<Lowering<K, A>>,
}

impl<K: Data + Clone, V: Data + Clone> KGroupedStream<K, V> {
    /// Starts a cogroup with this grouped stream and its `adder`; add
    /// others with [`CogroupedKStream::cogroup`].
    ///
    /// ```
    /// use stream_core::serde::JsonSerde;
    /// use stream_dsl::prelude::*;
    ///
    /// // Per customer: pages viewed and items bought, in one aggregate.
    /// let b = StreamsBuilder::new();
    /// let views = b.source("views").group_by_key();
    /// let buys = b.source("buys").group_by_key();
    /// views.cogroup(|_, _page, (v, b): (i64, i64)| (v + 1, b))
    ///     .cogroup(&buys, |_, _item, (v, b)| (v, b + 1))
    ///     .aggregate(|| (0i64, 0i64), Materialized::as_store("activity").with_value_serde(JsonSerde::new()))
    ///     .map_values(|(v, b)| format!("{v} views, {b} buys"))
    ///     .to_topic("activity");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("views", "ann", "/home");
    /// d.pipe_str("buys", "ann", "pen");
    /// d.pipe_str("views", "ann", "/cart");
    /// assert_eq!(d.output_utf8("activity").last().unwrap().1, "2 views, 1 buys");
    /// ```
    pub fn cogroup<A: Data + Clone>(
        &self,
        adder: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
    ) -> CogroupedKStream<K, A> {
        CogroupedKStream {
            b: self.stream.b.clone(),
            sources: self.stream.sources.clone(),
            key: self.key_serde.clone(),
            inputs: Vec::new(),
        }
        .cogroup(self, adder)
    }
}

impl<K: Data + Clone, A: Data + Clone> CogroupedKStream<K, A> {
    /// Adds `other` with its own `adder`.
    pub fn cogroup<V: Data + Clone>(
        mut self,
        other: &KGroupedStream<K, V>,
        adder: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
    ) -> Self {
        let grouped = KGroupedStream::new(
            other.stream.clone(),
            other.key_serde.clone(),
            other.name.clone(),
            other.repartition,
        )
        .with_partitions(other.partitions);
        let adder: Adder<K, V, A> = Arc::new(adder);
        if self.key.is_none() {
            self.key = other.key_serde.clone();
        }
        for s in &other.stream.sources {
            if !self.sources.contains(s) {
                self.sources.push(s.clone());
            }
        }
        let lowering: Lowering<K, A> = Box::new(move |store, key, agg, init, index| {
            // Each input's repartition topic is named after the store and
            // the input's position, unless the grouping is named.
            let g = KGroupedStream::new(
                grouped.stream.clone(),
                Some(key.clone()),
                Some(
                    grouped
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("{store}-{index}")),
                ),
                grouped.repartition,
            )
            .with_partitions(grouped.partitions);
            let mut mat = Materialized::<K, A>::as_store(store);
            mat.key = Some(key.clone());
            mat.value = Some(agg.clone());
            let p = g
                .prepare(
                    "cogroup",
                    &grouped.stream,
                    grouped.stream.value_serde.clone(),
                    &mat,
                )
                .ok()?;
            let (s, k, a, i, ad) = (
                store.to_string(),
                key.clone(),
                agg.clone(),
                init.clone(),
                adder.clone(),
            );
            let factory: stream_core::graph::ProcessorFactory = Arc::new(move || {
                Box::new(Aggregator {
                    store: s.clone(),
                    key: k.clone(),
                    agg: a.clone(),
                    init: i.clone(),
                    adder: ad.clone(),
                }) as Box<dyn Processor>
            });
            Some(p.b.add_processor(
                "cogroup-aggregate",
                factory,
                &[p.parent],
                vec![store.to_string()],
            ))
        });
        self.inputs.push(lowering);
        self
    }

    /// Folds every input's records into one aggregate per key, starting
    /// from `init()`, in the store named by `mat`. See
    /// [`KGroupedStream::cogroup`].
    pub fn aggregate(
        &self,
        init: impl Fn() -> A + Send + Sync + 'static,
        mat: Materialized<K, A>,
    ) -> KTable<K, A> {
        let b = self.b.clone();
        let store = mat
            .name
            .clone()
            .unwrap_or_else(|| b.derived_name(&self.sources, "cogroup"));
        let key = mat.key.clone().or_else(|| self.key.clone());
        let agg = mat.value.clone().or_else(builtin_serde::<A>);
        let (Some(key), Some(agg)) = (key, agg) else {
            b.record_error(TopologyError::MissingSerde(format!(
                "cogroup into {store}: no serde known for the key or the aggregate {}; pass them with Materialized",
                std::any::type_name::<A>()
            )));
            return KTable::new(b, 0, self.sources.clone(), None, None, store);
        };
        add_kv_store(&b, &store, &key, &agg, mat.logged);
        let init: Arc<dyn Fn() -> A + Send + Sync> = Arc::new(init);
        let nodes: Vec<usize> = self
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(i, lower)| lower(&store, &key, &agg, &init, i))
            .collect();
        let pass: ops::OpFn = Arc::new(|ctx, r| {
            ctx.forward(r);
            Ok(())
        });
        let node = b.add_processor("cogroup-merge", ops::factory(pass), &nodes, Vec::new());
        KTable::new(b, node, self.sources.clone(), Some(key), Some(agg), store)
    }
}
