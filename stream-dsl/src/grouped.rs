//! [`KGroupedStream`]: a stream grouped by key, and the aggregations that
//! turn it into a [`KTable`].

use std::sync::Arc;

use stream_core::data::{Data, downcast, downcast_ref};
use stream_core::graph::{Changelog, ChangelogCodec, StoreFormat, StoreSpec, repartition_suffix};
use stream_core::serde::{I64Serde, Serde, UnitSerde, erase};
use stream_core::{
    Context, KeyValueStore, ProcessError, Processor, Record, SerdeError, TopologyError,
};

use crate::change::Change;
use crate::kstream::KStream;
use crate::ktable::KTable;
use crate::options::Materialized;
use stream_core::serde::builtin_serde;

/// A stream grouped by key, waiting for an aggregation.
pub struct KGroupedStream<K, V> {
    pub(crate) stream: KStream<K, V>,
    pub(crate) key_serde: Option<Arc<dyn Serde<K>>>,
    pub(crate) name: Option<String>,
    pub(crate) repartition: bool,
    /// Partitions of the repartition topic (`None`: its input's).
    pub(crate) partitions: Option<i32>,
}

pub(crate) type Adder<K, V, A> = Arc<dyn Fn(&K, V, A) -> A + Send + Sync>;

/// An aggregation's store, serdes and parent node, ready for its processor.
pub(crate) struct Prepared<K, A> {
    pub(crate) b: crate::builder::StreamsBuilder,
    pub(crate) store: String,
    pub(crate) key: Arc<dyn Serde<K>>,
    pub(crate) agg: Arc<dyn Serde<A>>,
    pub(crate) parent: usize,
}

/// An aggregation that could not be built: where its table would hang.
pub(crate) struct Unbuilt {
    node: usize,
    store: String,
}

/// Folds records into their key's aggregate in `store`.
pub(crate) struct Aggregator<K, V, A> {
    pub(crate) store: String,
    pub(crate) key: Arc<dyn Serde<K>>,
    pub(crate) agg: Arc<dyn Serde<A>>,
    pub(crate) init: Arc<dyn Fn() -> A + Send + Sync>,
    pub(crate) adder: Adder<K, V, A>,
}

impl<K: Data + Clone, V: Data + Clone, A: Data + Clone> Processor for Aggregator<K, V, A> {
    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let node = ctx.node_name();
        let k = downcast_ref::<K>(&r.key, node)?;
        let kb = self.key.serialize(k)?;
        let mut store = ctx.store(&self.store)?;
        let old = match store.get_counted(&kb)? {
            Some(bytes) => Some(self.agg.deserialize(&bytes)?),
            None => None,
        };
        let current = old.clone().unwrap_or_else(|| (self.init)());
        let v = downcast::<V>(r.value, node)?;
        let next = (self.adder)(k, v, current);
        store.put(&kb, self.agg.serialize(&next)?)?;
        ctx.forward(Record {
            key: r.key,
            value: Box::new(Change::new(Some(next), old)),
            timestamp: r.timestamp,
            headers: r.headers,
        });
        Ok(())
    }
}

struct TypedCodec<K, A> {
    key: Arc<dyn Serde<K>>,
    agg: Arc<dyn Serde<A>>,
    encode: crate::fns::EncodeFn<K, A>,
    decode: crate::fns::DecodeFn<K, A>,
}

impl<K: 'static, A: 'static> ChangelogCodec for TypedCodec<K, A> {
    fn encode(&self, key: &[u8], value: &[u8]) -> Result<(Vec<u8>, Vec<u8>), SerdeError> {
        let k = self.key.deserialize(key)?;
        let a = self.agg.deserialize(value)?;
        Ok((key.to_vec(), (self.encode)(&k, &a)))
    }
    fn decode(&self, key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let k = self.key.deserialize(key).ok()?;
        let a = (self.decode)(&k, value)?;
        Some((key.to_vec(), self.agg.serialize(&a).ok()?))
    }
}

impl<K: Data + Clone, V: Data + Clone> KGroupedStream<K, V> {
    pub(crate) fn new(
        stream: KStream<K, V>,
        key_serde: Option<Arc<dyn Serde<K>>>,
        name: Option<String>,
        repartition: bool,
    ) -> Self {
        KGroupedStream {
            stream,
            key_serde,
            name,
            repartition,
            partitions: None,
        }
    }

    /// The same grouping with this repartition partition count.
    pub(crate) fn with_partitions(mut self, partitions: Option<i32>) -> Self {
        self.partitions = partitions;
        self
    }

    pub(crate) fn missing(&self, what: &str) {
        self.stream.b.record_error(TopologyError::MissingSerde(format!(
            "aggregation over {}: no serde known for {what}; pass one with Grouped or Materialized",
            self.stream.sources.join("+")
        )));
    }

    /// What every aggregation (plain, windowed, session) needs before its
    /// processor: the store's name, the key and aggregate serdes, and the
    /// node it hangs under (after a repartition when the key changed). A
    /// missing serde is recorded as a topology error: `Err` then names what
    /// to build the (never run) table from.
    pub(crate) fn prepare<VIn: Data + Clone, A: Data + Clone>(
        &self,
        op: &str,
        input: &KStream<K, VIn>,
        value_serde: Option<Arc<dyn Serde<VIn>>>,
        mat: &Materialized<K, A>,
    ) -> Result<Prepared<K, A>, Unbuilt> {
        let b = self.stream.b.clone();
        let store = mat
            .name
            .clone()
            .unwrap_or_else(|| b.derived_name(&self.stream.sources, op));
        let key_serde = mat.key.clone().or_else(|| self.key_serde.clone());
        let agg_serde = mat.value.clone().or_else(builtin_serde::<A>);
        let unbuilt = |store: String| Unbuilt {
            node: input.node,
            store,
        };
        let (Some(key), Some(agg)) = (key_serde, agg_serde) else {
            self.missing(if self.key_serde.is_none() {
                "the key"
            } else {
                "the aggregate"
            });
            return Err(unbuilt(store));
        };
        let parent = if self.repartition {
            let Some(vs) = value_serde else {
                self.missing("the value");
                return Err(unbuilt(store));
            };
            let suffix = repartition_suffix(self.name.as_deref().unwrap_or(&store));
            input
                .through_internal_with(&suffix, key.clone(), vs, self.partitions)
                .node
        } else {
            input.node
        };
        Ok(Prepared {
            b,
            store,
            key,
            agg,
            parent,
        })
    }

    /// The table handed back when an aggregation could not be built (the
    /// topology's `build()` then fails with the recorded error).
    pub(crate) fn unbuilt<K2: Data + Clone, V2: Data + Clone>(&self, u: Unbuilt) -> KTable<K2, V2> {
        KTable::new(
            self.stream.b.clone(),
            u.node,
            self.stream.sources.clone(),
            None,
            None,
            u.store,
        )
    }

    /// Lowers an aggregation: optional repartition, the store, the aggregator.
    fn lower<VIn: Data + Clone, A: Data + Clone>(
        &self,
        op: &str,
        input: KStream<K, VIn>,
        value_serde: Option<Arc<dyn Serde<VIn>>>,
        init: Arc<dyn Fn() -> A + Send + Sync>,
        adder: Adder<K, VIn, A>,
        mat: Materialized<K, A>,
    ) -> KTable<K, A> {
        let p = match self.prepare(op, &input, value_serde, &mat) {
            Ok(p) => p,
            Err(e) => return self.unbuilt(e),
        };
        let (b, store, key_serde, agg_serde, parent) = (p.b, p.store, p.key, p.agg, p.parent);
        let changelog = match (&mat.changelog, mat.logged) {
            (_, false) => Changelog::Disabled,
            (None, true) => Changelog::Internal,
            (Some(ex), true) => Changelog::Existing {
                topic: ex.topic.clone(),
                codec: Arc::new(TypedCodec {
                    key: key_serde.clone(),
                    agg: agg_serde.clone(),
                    encode: ex.encode.clone(),
                    decode: ex.decode.clone(),
                }),
            },
        };
        b.with_graph(|g| {
            g.add_store(StoreSpec {
                retention_ms: None,
                window: None,
                name: store.clone(),
                changelog,
                format: Some(StoreFormat {
                    key: erase(key_serde.clone()),
                    value: erase(agg_serde.clone()),
                }),
            })
        });
        let (s, k, a, i, ad) = (
            store.clone(),
            key_serde.clone(),
            agg_serde.clone(),
            init,
            adder,
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
        let node = b.add_processor(op_kind(op), factory, &[parent], vec![store.clone()]);
        KTable::new(
            b,
            node,
            self.stream.sources.clone(),
            Some(key_serde),
            Some(agg_serde),
            store,
        )
    }

    /// Counts records per key into a store; every change is emitted.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").group_by_key().count(Materialized::as_store("counts")).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "x");
    /// d.pipe_str("in", "k", "y");
    /// assert_eq!(d.store_entries("counts")[&b"k".to_vec()], 2i64.to_be_bytes().to_vec());
    /// assert_eq!(d.records("out").len(), 2);
    /// ```
    pub fn count(&self, mat: Materialized<K, i64>) -> KTable<K, i64> {
        let mat = if mat.value.is_none() {
            mat.with_value_serde(I64Serde)
        } else {
            mat
        };
        if self.repartition {
            // A count needs no values: send none through the repartition topic.
            let units = self.stream.map_values(|_| ());
            self.lower(
                "count",
                units,
                Some(Arc::new(UnitSerde)),
                Arc::new(|| 0i64),
                Arc::new(|_, _, n| n + 1),
                mat,
            )
        } else {
            self.lower(
                "count",
                self.stream.clone(),
                self.stream.value_serde.clone(),
                Arc::new(|| 0i64),
                Arc::new(|_, _, n| n + 1),
                mat,
            )
        }
    }

    /// Combines the values of each key with `f(aggregate, value)`; the first
    /// value of a key is its initial aggregate.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").group_by_key().reduce(|a, v| format!("{a}{v}"), Materialized::as_store("concat")).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "a");
    /// d.pipe_str("in", "k", "b");
    /// assert_eq!(d.store_entries("concat")[&b"k".to_vec()], b"ab".to_vec());
    /// ```
    pub fn reduce(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        mat: Materialized<K, V>,
    ) -> KTable<K, Option<V>>
    where
        V: Data + Clone,
    {
        let mat = if mat.value.is_none() {
            match self.stream.value_serde.clone() {
                Some(s) => Materialized {
                    value: Some(s),
                    ..mat
                },
                None => mat,
            }
        } else {
            mat
        };
        let Some(vs) = mat.value.clone() else {
            self.missing("the value");
            return KTable::new(
                self.stream.b.clone(),
                self.stream.node,
                self.stream.sources.clone(),
                None,
                None,
                String::new(),
            );
        };
        let opt_mat = Materialized::<K, Option<V>> {
            name: mat.name,
            key: mat.key,
            value: Some(Arc::new(OptionSerde(vs))),
            changelog: None,
            logged: mat.logged,
        };
        let f = Arc::new(f);
        self.lower(
            "reduce",
            self.stream.clone(),
            self.stream.value_serde.clone(),
            Arc::new(|| None),
            Arc::new(move |_, v, acc: Option<V>| {
                Some(match acc {
                    None => v,
                    Some(a) => f(a, v),
                })
            }),
            opt_mat,
        )
    }

    /// Folds the values of each key into an aggregate of another type.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in")
    ///     .group_by_key()
    ///     .aggregate(|| 0i64, |_k, v, total| total + v.len() as i64, Materialized::as_store("lengths"))
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "abc");
    /// d.pipe_str("in", "k", "de");
    /// assert_eq!(d.store_entries("lengths")[&b"k".to_vec()], 5i64.to_be_bytes().to_vec());
    /// ```
    pub fn aggregate<A: Data + Clone>(
        &self,
        init: impl Fn() -> A + Send + Sync + 'static,
        adder: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        mat: Materialized<K, A>,
    ) -> KTable<K, A> {
        self.lower(
            "aggregate",
            self.stream.clone(),
            self.stream.value_serde.clone(),
            Arc::new(init),
            Arc::new(adder),
            mat,
        )
    }
}

fn op_kind(op: &str) -> &'static str {
    match op {
        "count" => "count",
        "reduce" => "reduce",
        _ => "aggregate",
    }
}

/// Stores `Option<V>` as V's bytes (a reduce's aggregate is never `None`
/// once stored).
struct OptionSerde<V>(Arc<dyn Serde<V>>);

impl<V: 'static> Serde<Option<V>> for OptionSerde<V> {
    fn identity(&self) -> String {
        self.0.identity()
    }
    fn serialize(&self, value: &Option<V>) -> Result<Vec<u8>, SerdeError> {
        match value {
            Some(v) => self.0.serialize(v),
            None => Err(SerdeError::Other("reduce stored an empty aggregate".into())),
        }
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<Option<V>, SerdeError> {
        self.0.deserialize(bytes).map(Some)
    }
}
