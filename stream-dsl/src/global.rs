//! Global tables ([`StreamsBuilder::global_table`]) and the stream–global
//! joins ([`KStream::join_global`], [`KStream::left_join_global`]): Kafka
//! Streams' `GlobalKTable` and `KStreamGlobalKTableJoin`.
//!
//! Every instance holds the whole topic, read outside the consumer group
//! (every partition, by assignment) before its tasks process anything and
//! followed afterwards by a reader thread of its own. A stream record looks
//! up the row of a key it computes (`key_selector(key, value)`), so the
//! stream needs no co-partitioning and no repartition. As in Kafka Streams
//! the lookup sees the table as the reader has it when the record is
//! processed, not at the record's time.

use std::marker::PhantomData;
use std::sync::Arc;

use stream_core::data::{Data, downcast, downcast_ref};
use stream_core::graph::{GlobalTableSpec, ProcessorFactory, StoreFormat};
use stream_core::serde::{Serde, builtin_serde, erase};
use stream_core::{Context, ProcessError, Processor, Record};

use crate::builder::StreamsBuilder;
use crate::kstream::KStream;
use crate::options::{Consumed, Materialized};
use crate::table::ValidRecords;

/// A table every instance holds whole: join streams with it by any key.
pub struct GlobalKTable<K, V> {
    store: String,
    key: Arc<dyn Serde<K>>,
    value: Arc<dyn Serde<V>>,
    _k: PhantomData<fn() -> (K, V)>,
}

impl<K, V> GlobalKTable<K, V> {
    /// The store holding the rows.
    pub fn store_name(&self) -> &str {
        &self.store
    }
}

impl StreamsBuilder {
    /// A global table read from `topic` into the store named by `mat`
    /// (default `<topic>-global`): every instance reads every partition.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// let companies = b.global_table("companies", Consumed::with(StringSerde, StringSerde), Materialized::as_store("companies"));
    /// // Users keyed by email name their company by id: no co-partitioning needed.
    /// b.source("users")
    ///     .join_global(&companies, |_email, company_id| company_id.clone(), |id, name| format!("{id}: {name}"))
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app")
    ///     .with_partitions("users", 4)
    ///     .with_partitions("companies", 3);
    /// d.pipe_str("companies", "c7", "Acme");
    /// d.pipe_str("users", "ann@x", "c7");
    /// d.pipe_str("users", "bob@x", "c9"); // no such company: dropped
    /// assert_eq!(d.output_utf8("out"), vec![("ann@x".to_string(), "c7: Acme".to_string())]);
    /// ```
    pub fn global_table<K: Data + Clone, V: Data + Clone>(
        &self,
        topic: &str,
        consumed: Consumed<K, V>,
        mat: Materialized<K, V>,
    ) -> GlobalKTable<K, V> {
        let store = mat
            .name
            .clone()
            .unwrap_or_else(|| format!("{topic}-global"));
        let key = mat.key.clone().unwrap_or_else(|| consumed.key.clone());
        let value = mat.value.clone().unwrap_or_else(|| consumed.value.clone());
        self.with_graph(|g| {
            g.add_global_table(GlobalTableSpec {
                store: store.clone(),
                topic: topic.to_string(),
                codec: Arc::new(ValidRecords {
                    key: key.clone(),
                    value: value.clone(),
                }),
                format: Some(StoreFormat {
                    key: erase(key.clone()),
                    value: erase(value.clone()),
                }),
            })
        });
        GlobalKTable {
            store,
            key,
            value,
            _k: PhantomData,
        }
    }
}

/// Looks each stream record's row up in a global table.
struct GlobalJoin<K, V, GK, GV, R> {
    store: String,
    key: Arc<dyn Serde<GK>>,
    value: Arc<dyn Serde<GV>>,
    selector: crate::fns::KeySelector<K, V, GK>,
    joiner: Arc<dyn Fn(V, Option<GV>) -> Option<R> + Send + Sync>,
}

impl<K, V, GK, GV, R> Processor for GlobalJoin<K, V, GK, GV, R>
where
    K: Data + Clone,
    V: Data + Clone,
    GK: Data + Clone,
    GV: Data + Clone,
    R: Data + Clone,
{
    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let node = ctx.node_name();
        let gk = (self.selector)(
            downcast_ref::<K>(&r.key, node)?,
            downcast_ref::<V>(&r.value, node)?,
        );
        let row = match ctx
            .global_store(&self.store)?
            .get(&self.key.serialize(&gk)?)?
        {
            Some(bytes) => Some(self.value.deserialize(&bytes)?),
            None => None,
        };
        let v = downcast::<V>(r.value, node)?;
        if let Some(out) = (self.joiner)(v, row) {
            ctx.forward(Record {
                key: r.key,
                value: Box::new(out),
                timestamp: r.timestamp,
                headers: r.headers,
            });
        }
        Ok(())
    }
}

impl<K: Data + Clone, V: Data + Clone> KStream<K, V> {
    fn lower_global_join<GK: Data + Clone, GV: Data + Clone, R: Data + Clone>(
        &self,
        kind: &'static str,
        table: &GlobalKTable<GK, GV>,
        selector: crate::fns::KeySelector<K, V, GK>,
        joiner: Arc<dyn Fn(V, Option<GV>) -> Option<R> + Send + Sync>,
    ) -> KStream<K, R> {
        let (store, key, value) = (table.store.clone(), table.key.clone(), table.value.clone());
        let factory: ProcessorFactory = Arc::new(move || {
            Box::new(GlobalJoin {
                store: store.clone(),
                key: key.clone(),
                value: value.clone(),
                selector: selector.clone(),
                joiner: joiner.clone(),
            }) as Box<dyn Processor>
        });
        let node = self
            .b
            .add_processor(kind, factory, &[self.node], Vec::new());
        let note = format!("global table {}", table.store);
        self.b.with_graph(|g| g.set_note(node, note));
        KStream::new(
            self.b.clone(),
            node,
            self.sources.clone(),
            self.key_serde.clone(),
            builtin_serde::<R>(),
            self.key_changed,
        )
    }

    /// Joins each record with the row of `key_selector(key, value)` in a
    /// global table (inner join): `joiner(value, row)`; a record whose row
    /// does not exist is dropped. See [`StreamsBuilder::global_table`].
    pub fn join_global<GK: Data + Clone, GV: Data + Clone, R: Data + Clone>(
        &self,
        table: &GlobalKTable<GK, GV>,
        key_selector: impl Fn(&K, &V) -> GK + Send + Sync + 'static,
        joiner: impl Fn(V, GV) -> R + Send + Sync + 'static,
    ) -> KStream<K, R> {
        self.lower_global_join(
            "global-join",
            table,
            Arc::new(key_selector),
            Arc::new(move |v, row| row.map(|r| joiner(v, r))),
        )
    }

    /// Joins each record with the row of `key_selector(key, value)` in a
    /// global table, if any (left join): `joiner(value, Option<row>)`.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// let companies = b.global_table("companies", Consumed::with(StringSerde, StringSerde), Materialized::as_store("companies"));
    /// b.source("users")
    ///     .left_join_global(&companies, |_, id| id.clone(), |id, name| format!("{id}: {}", name.unwrap_or_else(|| "?".into())))
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("users", "bob@x", "c9");
    /// assert_eq!(d.output_utf8("out")[0].1, "c9: ?");
    /// ```
    pub fn left_join_global<GK: Data + Clone, GV: Data + Clone, R: Data + Clone>(
        &self,
        table: &GlobalKTable<GK, GV>,
        key_selector: impl Fn(&K, &V) -> GK + Send + Sync + 'static,
        joiner: impl Fn(V, Option<GV>) -> R + Send + Sync + 'static,
    ) -> KStream<K, R> {
        self.lower_global_join(
            "global-left-join",
            table,
            Arc::new(key_selector),
            Arc::new(move |v, row| Some(joiner(v, row))),
        )
    }
}
