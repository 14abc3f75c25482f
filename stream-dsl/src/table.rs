//! Tables read from topics ([`StreamsBuilder::table`]) or made of a
//! stream ([`KStream::to_table`]), and the
//! stream–table joins ([`KStream::join`], [`KStream::left_join`]).
//!
//! Kafka Streams' semantics (`internals/KTableSource.java`,
//! `internals/KStreamKTableJoinProcessor.java`):
//! - a record with a value upserts its key's row, a record with a null
//!   value (tombstone) deletes it; every change is forwarded with the old
//!   value;
//! - a stream record joins with the table row of its key as the table
//!   stands when the record is processed; the result has the stream
//!   record's timestamp; an inner join forwards nothing when the key has no
//!   row, a left join calls the joiner with `None`; table updates never
//!   trigger output.
//!
//! Where we differ: the source topic is always the table's changelog
//! (Kafka Streams reuses it only with `topology.optimization=all`, and
//! writes a second copy otherwise); restore re-reads it up to where input
//! resumes, and a record that does not deserialize is skipped on restore
//! as it was dead-lettered when processed. A record with an empty value is
//! read as a tombstone, as a null one.

use std::sync::Arc;

use stream_core::data::{Data, downcast, downcast_ref};
use stream_core::graph::{Changelog, ChangelogCodec, StoreFormat, StoreSpec, TopicRef};
use stream_core::serde::{NullableSerde, Serde, erase};
use stream_core::{
    Context, KeyValueStore, ProcessError, Processor, Record, SerdeError, TopologyError,
};

use crate::builder::StreamsBuilder;
use crate::change::Change;
use crate::kstream::KStream;
use crate::ktable::KTable;
use crate::options::{Consumed, Materialized};

/// Keeps a table's rows in its store and forwards each change.
struct TableSource<K, V> {
    store: String,
    key: Arc<dyn Serde<K>>,
    value: Arc<dyn Serde<V>>,
}

impl<K: Data + Clone, V: Data + Clone> Processor for TableSource<K, V> {
    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let node = ctx.node_name();
        let kb = self.key.serialize(downcast_ref::<K>(&r.key, node)?)?;
        let new = downcast::<Option<V>>(r.value, node)?;
        let mut store = ctx.store(&self.store)?;
        let old = match store.get_counted(&kb)? {
            Some(bytes) => Some(self.value.deserialize(&bytes)?),
            None => None,
        };
        match &new {
            Some(v) => store.put(&kb, self.value.serialize(v)?)?,
            None => store.delete(&kb)?,
        }
        let change = Change::new(new, old);
        if !change.is_empty() {
            ctx.forward(Record {
                key: r.key,
                value: Box::new(change),
                timestamp: r.timestamp,
                headers: r.headers,
            });
        }
        Ok(())
    }
}

/// Restore's check of a table's source records: only records that
/// deserialize become rows (processing dead-letters the others).
pub(crate) struct ValidRecords<K, V> {
    pub(crate) key: Arc<dyn Serde<K>>,
    pub(crate) value: Arc<dyn Serde<V>>,
}

impl<K: 'static, V: 'static> ChangelogCodec for ValidRecords<K, V> {
    fn encode(&self, key: &[u8], value: &[u8]) -> Result<(Vec<u8>, Vec<u8>), SerdeError> {
        Ok((key.to_vec(), value.to_vec()))
    }
    fn decode(&self, key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let k = self.key.deserialize(key).ok()?;
        let v = self.value.deserialize(value).ok()?;
        Some((self.key.serialize(&k).ok()?, self.value.serialize(&v).ok()?))
    }
}

impl StreamsBuilder {
    /// A table read from `topic`: each record upserts its key's row, a
    /// tombstone deletes it. The rows live in the sled store named by
    /// `mat` (default `<topic>-table`), whose changelog is `topic` itself:
    /// nothing is written twice, and a restore re-reads the topic.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// let users = b.table("users", Consumed::with(StringSerde, StringSerde), Materialized::as_store("users"));
    /// users.to_topic("users-copy");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("users", "ann", "Acme");
    /// d.pipe("users", Some(b"ann"), None); // deleted
    /// let out: Vec<Option<Vec<u8>>> = d.records("users-copy").into_iter().map(|r| r.value).collect();
    /// assert_eq!(out, vec![Some(b"Acme".to_vec()), None]);
    /// ```
    pub fn table<K: Data + Clone, V: Data + Clone>(
        &self,
        topic: &str,
        consumed: Consumed<K, V>,
        mat: Materialized<K, V>,
    ) -> KTable<K, V> {
        let store = mat.name.clone().unwrap_or_else(|| format!("{topic}-table"));
        let (key, value) = (
            mat.key.clone().unwrap_or_else(|| consumed.key.clone()),
            mat.value.clone().unwrap_or_else(|| consumed.value.clone()),
        );
        let nullable: Arc<dyn Serde<Option<V>>> =
            Arc::new(NullableSerde::new(consumed.value.clone()));
        let source = self.with_graph(|g| {
            let node = g.add_source(
                format!("source-{topic}"),
                vec![TopicRef::External(topic.to_string())],
                erase(consumed.key.clone()),
                erase(nullable),
            );
            if let Some(ex) = consumed.timestamps.clone() {
                g.set_timestamp_extractor(node, ex);
            }
            g.add_store(StoreSpec {
                name: store.clone(),
                changelog: Changelog::SourceTopic {
                    topic: topic.to_string(),
                    codec: Some(Arc::new(ValidRecords {
                        key: key.clone(),
                        value: value.clone(),
                    })),
                },
                format: Some(StoreFormat {
                    key: erase(key.clone()),
                    value: erase(value.clone()),
                }),
                retention_ms: None,
                window: None,
            });
            node
        });
        let node = self.add_processor(
            "table-source",
            table_source(&store, &key, &value),
            &[source],
            vec![store.clone()],
        );
        KTable::new(
            self.clone(),
            node,
            vec![topic.to_string()],
            Some(key),
            Some(value),
            store,
        )
    }
}

impl<K: Data + Clone, V: Data + Clone> KStream<K, V> {
    /// The stream read as a table: each record upserts its key's row
    /// (Kafka Streams' `toTable`). A stream whose key changed is
    /// repartitioned first, so that each key's row lives in one task. The
    /// rows live in the store named by `mat` (default `<source>-to-table`),
    /// changelogged to `<app>-<store>-changelog`.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// // Registrations keyed by nothing, re-keyed by email: a table of users.
    /// let users = b.source("new_users").select_key(|_, email| email.clone()).to_table(Materialized::as_store("users"));
    /// b.source("clicks").join(&users, |page, email| format!("{page} by {email}")).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("new_users", "", "ann@x");
    /// d.pipe_str("clicks", "ann@x", "/home");
    /// assert_eq!(d.output_utf8("out")[0].1, "/home by ann@x");
    /// ```
    pub fn to_table(&self, mat: Materialized<K, V>) -> KTable<K, V> {
        let b = self.b.clone();
        let store = mat
            .name
            .clone()
            .unwrap_or_else(|| b.derived_name(&self.sources, "to-table"));
        let (Some(key), Some(value)) = (
            mat.key.clone().or_else(|| self.key_serde.clone()),
            mat.value.clone().or_else(|| self.value_serde.clone()),
        ) else {
            b.record_error(TopologyError::MissingSerde(format!(
                "to_table `{store}`: no serde known for key {} or value {}; pass them with Materialized",
                std::any::type_name::<K>(),
                std::any::type_name::<V>()
            )));
            return KTable::new(b, self.node, self.sources.clone(), None, None, store);
        };
        let parent = if self.key_changed {
            let suffix = stream_core::graph::repartition_suffix(&store);
            self.through_internal(&suffix, key.clone(), value.clone())
                .node
        } else {
            self.node
        };
        // The table source takes `Option<V>`: a stream's values are all present.
        let some: crate::ops::OpFn = Arc::new(|ctx, r| {
            let node = ctx.node_name();
            let v = downcast::<V>(r.value, node)?;
            ctx.forward(crate::ops::record_dyn(
                r.key,
                Some(v),
                r.timestamp,
                r.headers,
            ));
            Ok(())
        });
        let parent = b.add_processor(
            "to-table-values",
            crate::ops::factory(some),
            &[parent],
            Vec::new(),
        );
        b.with_graph(|g| {
            g.add_store(StoreSpec {
                name: store.clone(),
                changelog: if mat.logged {
                    Changelog::Internal
                } else {
                    Changelog::Disabled
                },
                format: Some(StoreFormat {
                    key: erase(key.clone()),
                    value: erase(value.clone()),
                }),
                retention_ms: None,
                window: None,
            })
        });
        let node = b.add_processor(
            "to-table",
            table_source(&store, &key, &value),
            &[parent],
            vec![store.clone()],
        );
        KTable::new(b, node, self.sources.clone(), Some(key), Some(value), store)
    }
}

/// The processor keeping a table's rows in `store`.
fn table_source<K: Data + Clone, V: Data + Clone>(
    store: &str,
    key: &Arc<dyn Serde<K>>,
    value: &Arc<dyn Serde<V>>,
) -> stream_core::graph::ProcessorFactory {
    let (s, k, v) = (store.to_string(), key.clone(), value.clone());
    Arc::new(move || {
        Box::new(TableSource {
            store: s.clone(),
            key: k.clone(),
            value: v.clone(),
        }) as Box<dyn Processor>
    })
}

/// Joins stream records with the table row of their key.
struct StreamTableJoin<K, V, V2, R> {
    store: String,
    key: Arc<dyn Serde<K>>,
    value: Arc<dyn Serde<V2>>,
    joiner: Arc<dyn Fn(V, Option<V2>) -> Option<R> + Send + Sync>,
}

impl<K, V, V2, R> Processor for StreamTableJoin<K, V, V2, R>
where
    K: Data + Clone,
    V: Data + Clone,
    V2: Data + Clone,
    R: Data + Clone,
{
    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let node = ctx.node_name();
        let kb = self.key.serialize(downcast_ref::<K>(&r.key, node)?)?;
        let row = match ctx.store(&self.store)?.get_counted(&kb)? {
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
    /// Lowers a stream–table join: repartitions the stream first when its
    /// key changed (so that each record meets its key's row in the same
    /// task), then looks rows up in the table's store.
    fn lower_table_join<V2: Data + Clone, R: Data + Clone>(
        &self,
        kind: &'static str,
        table: &KTable<K, V2>,
        joiner: Arc<dyn Fn(V, Option<V2>) -> Option<R> + Send + Sync>,
    ) -> KStream<K, R> {
        let b = self.b.clone();
        let (Some(tk), Some(tv)) = (table.key_serde(), table.value_serde()) else {
            b.record_error(TopologyError::MissingSerde(format!(
                "{kind} with table {}: the table's serdes are unknown",
                table.store_name()
            )));
            return self.derive_join(self.node, None);
        };
        if !table.is_materialized() {
            b.record_error(TopologyError::Invalid(format!(
                "{kind} with a table derived from `{}` (filtered or mapped): join with a table read from a topic or an aggregation",
                table.store_name()
            )));
            return self.derive_join(self.node, None);
        }
        let parent = if self.key_changed {
            let Some(vs) = self.value_serde.clone() else {
                b.record_error(TopologyError::MissingSerde(format!(
                    "{kind} after a key change: no serde known for the stream's value {}",
                    std::any::type_name::<V>()
                )));
                return self.derive_join(self.node, None);
            };
            let suffix =
                stream_core::graph::repartition_suffix(&format!("{}-join", table.store_name()));
            self.through_internal(&suffix, tk.clone(), vs).node
        } else {
            self.node
        };
        let store = table.store_name().to_string();
        let factory: stream_core::graph::ProcessorFactory = Arc::new(move || {
            Box::new(StreamTableJoin {
                store: store.clone(),
                key: tk.clone(),
                value: tv.clone(),
                joiner: joiner.clone(),
            }) as Box<dyn Processor>
        });
        let node = b.add_processor(
            kind,
            factory,
            &[parent],
            vec![table.store_name().to_string()],
        );
        self.derive_join(node, stream_core::serde::builtin_serde::<R>())
    }

    fn derive_join<R: Data + Clone>(
        &self,
        node: usize,
        value_serde: Option<Arc<dyn Serde<R>>>,
    ) -> KStream<K, R> {
        let mut sources = self.sources.clone();
        sources.dedup();
        KStream::new(
            self.b.clone(),
            node,
            sources,
            self.key_serde.clone(),
            value_serde,
            false,
        )
    }

    /// Joins each record with the table row of its key (inner join):
    /// `joiner(value, row)`; a record whose key has no row is dropped. The
    /// stream and the table's topic must have equal partition counts (the
    /// runtime checks at start); a stream whose key changed is
    /// repartitioned first.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// let users = b.table("users", Consumed::with(StringSerde, StringSerde), Materialized::as_store("users"));
    /// b.source("clicks")
    ///     .join(&users, |page, company| format!("{page} by {company}"))
    ///     .to_topic("enriched");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("clicks", "ann", "/home");     // no row yet: dropped
    /// d.pipe_str("users", "ann", "Acme");
    /// d.pipe_str("clicks", "ann", "/pricing");
    /// assert_eq!(d.output_utf8("enriched"), vec![("ann".to_string(), "/pricing by Acme".to_string())]);
    /// ```
    pub fn join<V2: Data + Clone, R: Data + Clone>(
        &self,
        table: &KTable<K, V2>,
        joiner: impl Fn(V, V2) -> R + Send + Sync + 'static,
    ) -> KStream<K, R> {
        self.lower_table_join(
            "stream-table-join",
            table,
            Arc::new(move |v, row| row.map(|r| joiner(v, r))),
        )
    }

    /// Joins each record with the table row of its key, if any (left
    /// join): `joiner(value, Some(row))`, or `joiner(value, None)` when the
    /// key has no row.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// let users = b.table("users", Consumed::with(StringSerde, StringSerde), Materialized::as_store("users"));
    /// b.source("clicks")
    ///     .left_join(&users, |page, company| format!("{page} by {}", company.unwrap_or_else(|| "?".into())))
    ///     .to_topic("enriched");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("clicks", "ann", "/home");
    /// d.pipe_str("users", "ann", "Acme");
    /// d.pipe_str("clicks", "ann", "/pricing");
    /// let out: Vec<String> = d.output_utf8("enriched").into_iter().map(|(_, v)| v).collect();
    /// assert_eq!(out, vec!["/home by ?", "/pricing by Acme"]);
    /// ```
    pub fn left_join<V2: Data + Clone, R: Data + Clone>(
        &self,
        table: &KTable<K, V2>,
        joiner: impl Fn(V, Option<V2>) -> R + Send + Sync + 'static,
    ) -> KStream<K, R> {
        self.lower_table_join(
            "stream-table-left-join",
            table,
            Arc::new(move |v, row| Some(joiner(v, row))),
        )
    }
}
