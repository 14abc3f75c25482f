//! [`KGroupedTable`]: a table re-grouped by a new key
//! ([`KTable::group_by`]), aggregated with an adder and a subtractor
//! (Kafka Streams' `KTableRepartitionMap`, `KTableAggregate`,
//! `KTableReduce`).
//!
//! Every change of a row travels through a repartition topic as up to two
//! records: the old value to subtract from its old group, then the new one
//! to add to its new group — a row that moves between groups leaves the
//! old one. Where we differ: Kafka Streams sends one record when the group
//! did not change (its intermediate result is then skipped); here the
//! group sees the subtraction and the addition as two updates, with the
//! same final result.

use std::sync::Arc;

use stream_core::data::{Data, downcast, downcast_ref};
use stream_core::graph::{Changelog, StoreFormat, StoreSpec, repartition_suffix};
use stream_core::serde::{I64Serde, Serde, builtin_serde, erase};
use stream_core::{
    Context, KeyValueStore, ProcessError, Processor, Record, SerdeError, TopologyError,
};

use crate::change::Change;
use crate::kstream::KStream;
use crate::ktable::KTable;
use crate::ops;
use crate::options::{Grouped, Materialized};

/// [`Change`] on the wire: a flags byte (1: new present, 2: old present),
/// the new value's length (4 bytes, big-endian), the new value, the old.
pub struct ChangeSerde<V>(Arc<dyn Serde<V>>);

impl<V> ChangeSerde<V> {
    /// Wraps the serde of the values.
    pub fn new(inner: Arc<dyn Serde<V>>) -> Self {
        ChangeSerde(inner)
    }
}

impl<V: 'static> Serde<Change<V>> for ChangeSerde<V> {
    fn identity(&self) -> String {
        format!("change({})", self.0.identity())
    }
    fn serialize(&self, c: &Change<V>) -> Result<Vec<u8>, SerdeError> {
        let new = c.new.as_ref().map(|v| self.0.serialize(v)).transpose()?;
        let old = c.old.as_ref().map(|v| self.0.serialize(v)).transpose()?;
        let flags = u8::from(new.is_some()) | (u8::from(old.is_some()) << 1);
        let new = new.unwrap_or_default();
        let mut out = vec![flags];
        out.extend_from_slice(&(new.len() as u32).to_be_bytes());
        out.extend_from_slice(&new);
        out.extend_from_slice(&old.unwrap_or_default());
        Ok(out)
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<Change<V>, SerdeError> {
        let short = || {
            SerdeError::Other(format!(
                "a change needs at least 5 bytes, got {}",
                bytes.len()
            ))
        };
        let flags = *bytes.first().ok_or_else(short)?;
        let len = bytes
            .get(1..5)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(short)? as usize;
        let new = bytes.get(5..5 + len).ok_or_else(short)?;
        let old = &bytes[5 + len..];
        Ok(Change::new(
            (flags & 1 != 0)
                .then(|| self.0.deserialize(new))
                .transpose()?,
            (flags & 2 != 0)
                .then(|| self.0.deserialize(old))
                .transpose()?,
        ))
    }
}

/// A table grouped by a new key, waiting for an aggregation.
pub struct KGroupedTable<K, V> {
    /// The regrouped changes, after the repartition topic.
    changes: KStream<K, Change<V>>,
    key: Arc<dyn Serde<K>>,
    /// Names the default store.
    base: Vec<String>,
}

/// Adds a value to a group's aggregate (`None`: the group is new).
type Add<K, V, A> = Arc<dyn Fn(&K, V, Option<A>) -> A + Send + Sync>;
/// Subtracts a value from a group's aggregate.
type Sub<K, V, A> = Arc<dyn Fn(&K, V, A) -> A + Send + Sync>;

struct TableAggregator<K, V, A> {
    store: String,
    key: Arc<dyn Serde<K>>,
    agg: Arc<dyn Serde<A>>,
    add: Add<K, V, A>,
    sub: Sub<K, V, A>,
}

impl<K: Data + Clone, V: Data + Clone, A: Data + Clone> Processor for TableAggregator<K, V, A> {
    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let node = ctx.node_name();
        let k = downcast_ref::<K>(&r.key, node)?;
        let kb = self.key.serialize(k)?;
        let mut store = ctx.store(&self.store)?;
        let before = match store.get_counted(&kb)? {
            Some(bytes) => Some(self.agg.deserialize(&bytes)?),
            None => None,
        };
        let c = downcast::<Change<V>>(r.value, node)?;
        // Kafka Streams' order: subtract the old value (from an existing
        // aggregate), then add the new one.
        let agg = match (c.old, before.clone()) {
            (Some(old), Some(a)) => Some((self.sub)(k, old, a)),
            (_, a) => a,
        };
        let agg = match c.new {
            Some(new) => Some((self.add)(k, new, agg)),
            None => agg,
        };
        let Some(after) = agg else { return Ok(()) };
        store.put(&kb, self.agg.serialize(&after)?)?;
        ctx.forward(Record {
            key: r.key,
            value: Box::new(Change::new(Some(after), before)),
            timestamp: r.timestamp,
            headers: r.headers,
        });
        Ok(())
    }
}

/// Declares a key-value store `name` with its serdes, changelogged unless
/// `logged` is false.
pub(crate) fn add_kv_store<K: Data + Clone, A: Data + Clone>(
    b: &crate::StreamsBuilder,
    name: &str,
    key: &Arc<dyn Serde<K>>,
    agg: &Arc<dyn Serde<A>>,
    logged: bool,
) {
    b.with_graph(|g| {
        g.add_store(StoreSpec {
            name: name.to_string(),
            changelog: if logged {
                Changelog::Internal
            } else {
                Changelog::Disabled
            },
            format: Some(StoreFormat {
                key: erase(key.clone()),
                value: erase(agg.clone()),
            }),
            retention_ms: None,
            window: None,
        })
    });
}

impl<K: Data + Clone, V: Data + Clone> KTable<K, V> {
    /// Groups the table's rows by a new key: `selector(key, value)` gives
    /// each row's group and the value it brings there. A row that moves to
    /// another group is subtracted from the old one. The regrouping goes
    /// through a repartition topic (`grouped` gives its serdes).
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// // Users per company, from a table of users (email → company).
    /// let b = StreamsBuilder::new();
    /// b.table("users", Consumed::with(StringSerde, StringSerde), Materialized::as_store("users"))
    ///     .group_by(|_email, company| (company.clone(), 1i64), Grouped::with(StringSerde, I64Serde))
    ///     .count(Materialized::as_store("per-company"))
    ///     .to_topic("counts");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("users", "ann@x", "Acme");
    /// d.pipe_str("users", "bob@x", "Acme");
    /// d.pipe_str("users", "ann@x", "Initech"); // Ann moves: Acme 1, Initech 1
    /// let latest = d.latest_per_key("counts");
    /// assert_eq!(latest[&b"Acme".to_vec()], 1i64.to_be_bytes().to_vec());
    /// assert_eq!(latest[&b"Initech".to_vec()], 1i64.to_be_bytes().to_vec());
    /// ```
    pub fn group_by<K2: Data + Clone, V2: Data + Clone>(
        &self,
        selector: impl Fn(&K, &V) -> (K2, V2) + Send + Sync + 'static,
        grouped: Grouped<K2, V2>,
    ) -> KGroupedTable<K2, V2> {
        let b = self.builder();
        let value = grouped.value.clone().or_else(builtin_serde::<V2>);
        let name = grouped
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-groupby", b.derived_name(&self.sources(), "table")));
        let body: ops::OpFn = Arc::new(move |ctx, r| {
            let node = ctx.node_name();
            let k = downcast::<K>(r.key, node)?;
            let c = downcast::<Change<V>>(r.value, node)?;
            // The old value leaves its group first, then the new one joins.
            if let Some(old) = c.old {
                let (k2, v2) = selector(&k, &old);
                ctx.forward(ops::record(
                    k2,
                    Change::new(None, Some(v2)),
                    r.timestamp,
                    r.headers.clone(),
                ));
            }
            if let Some(new) = c.new {
                let (k2, v2) = selector(&k, &new);
                ctx.forward(ops::record(
                    k2,
                    Change::new(Some(v2), None),
                    r.timestamp,
                    r.headers,
                ));
            }
            Ok(())
        });
        let node = b.add_processor(
            "table-group-by",
            ops::factory(body),
            &[self.node()],
            Vec::new(),
        );
        let Some(value) = value else {
            b.record_error(TopologyError::MissingSerde(format!(
                "group_by of table {}: no serde known for {}; pass one with Grouped::with",
                self.store_name(),
                std::any::type_name::<V2>()
            )));
            let changes = KStream::new(b, node, self.sources(), None, None, false);
            return KGroupedTable {
                changes,
                key: grouped.key,
                base: self.sources(),
            };
        };
        let selected: KStream<K2, Change<V2>> =
            KStream::new(b, node, self.sources(), None, None, true);
        let changes = selected.through_internal(
            &repartition_suffix(&name),
            grouped.key.clone(),
            Arc::new(ChangeSerde::new(value)),
        );
        KGroupedTable {
            changes,
            key: grouped.key,
            base: self.sources(),
        }
    }
}

impl<K: Data + Clone, V: Data + Clone> KGroupedTable<K, V> {
    fn lower<A: Data + Clone>(
        &self,
        op: &str,
        add: Add<K, V, A>,
        sub: Sub<K, V, A>,
        mat: Materialized<K, A>,
    ) -> KTable<K, A> {
        let b = self.changes.b.clone();
        let store = mat
            .name
            .clone()
            .unwrap_or_else(|| b.derived_name(&self.base, op));
        let key = mat.key.clone().unwrap_or_else(|| self.key.clone());
        let Some(agg) = mat.value.clone().or_else(builtin_serde::<A>) else {
            b.record_error(TopologyError::MissingSerde(format!(
                "{op} of a grouped table into {store}: no serde known for {}; pass one with Materialized",
                std::any::type_name::<A>()
            )));
            return KTable::new(b, self.changes.node, self.base.clone(), None, None, store);
        };
        add_kv_store(&b, &store, &key, &agg, mat.logged);
        let (s, k, a) = (store.clone(), key.clone(), agg.clone());
        let factory: stream_core::graph::ProcessorFactory = Arc::new(move || {
            Box::new(TableAggregator {
                store: s.clone(),
                key: k.clone(),
                agg: a.clone(),
                add: add.clone(),
                sub: sub.clone(),
            }) as Box<dyn Processor>
        });
        let kind = match op {
            "count" => "table-count",
            "reduce" => "table-reduce",
            _ => "table-aggregate",
        };
        let node = b.add_processor(kind, factory, &[self.changes.node], vec![store.clone()]);
        KTable::new(b, node, self.base.clone(), Some(key), Some(agg), store)
    }

    /// Counts the rows in each group. See [`KTable::group_by`].
    pub fn count(&self, mat: Materialized<K, i64>) -> KTable<K, i64> {
        let mat = if mat.value.is_none() {
            mat.with_value_serde(I64Serde)
        } else {
            mat
        };
        self.lower(
            "count",
            Arc::new(|_, _, n| n.unwrap_or(0) + 1),
            Arc::new(|_, _, n| n - 1),
            mat,
        )
    }

    /// Folds each group's rows: `adder(agg, value)` when a row joins the
    /// group, `subtractor(agg, value)` when it leaves; the first row is
    /// the aggregate.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// // Total stock per warehouse, from a table of items (item → "warehouse:count").
    /// let b = StreamsBuilder::new();
    /// b.table("items", Consumed::with(StringSerde, StringSerde), Materialized::as_store("items"))
    ///     .group_by(|_, v| {
    ///         let (w, n) = v.split_once(':').unwrap_or((v.as_str(), "0"));
    ///         (w.to_string(), n.parse::<i64>().unwrap_or(0))
    ///     }, Grouped::with(StringSerde, I64Serde))
    ///     .reduce(|a, v| a + v, |a, v| a - v, Materialized::as_store("stock"))
    ///     .to_topic("stock");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("items", "pen", "north:5");
    /// d.pipe_str("items", "cup", "north:2");
    /// d.pipe_str("items", "pen", "north:3"); // 5 leaves, 3 joins
    /// let latest = d.latest_per_key("stock");
    /// assert_eq!(latest[&b"north".to_vec()], 5i64.to_be_bytes().to_vec());
    /// ```
    pub fn reduce(
        &self,
        adder: impl Fn(V, V) -> V + Send + Sync + 'static,
        subtractor: impl Fn(V, V) -> V + Send + Sync + 'static,
        mat: Materialized<K, V>,
    ) -> KTable<K, V> {
        self.lower(
            "reduce",
            Arc::new(move |_, v, a| match a {
                Some(a) => adder(a, v),
                None => v,
            }),
            Arc::new(move |_, v, a| subtractor(a, v)),
            mat,
        )
    }

    /// Folds each group's rows into an aggregate: `adder(key, value, agg)`
    /// when a row joins, `subtractor(key, value, agg)` when it leaves,
    /// starting from `init()`.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// // Names of the users per company.
    /// let b = StreamsBuilder::new();
    /// b.table("users", Consumed::with(StringSerde, StringSerde), Materialized::as_store("users"))
    ///     .group_by(|email, company| (company.clone(), email.clone()), Grouped::with(StringSerde, StringSerde))
    ///     .aggregate(
    ///         String::new,
    ///         |_, email, names| format!("{names}{email};"),
    ///         |_, email, names| names.replace(&format!("{email};"), ""),
    ///         Materialized::as_store("names"),
    ///     )
    ///     .to_topic("names");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("users", "ann", "Acme");
    /// d.pipe_str("users", "bob", "Acme");
    /// d.pipe_str("users", "ann", "Initech");
    /// let latest = d.latest_per_key("names");
    /// assert_eq!(latest[&b"Acme".to_vec()], b"bob;".to_vec());
    /// ```
    pub fn aggregate<A: Data + Clone>(
        &self,
        init: impl Fn() -> A + Send + Sync + 'static,
        adder: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        subtractor: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        mat: Materialized<K, A>,
    ) -> KTable<K, A> {
        self.lower(
            "aggregate",
            Arc::new(move |k, v, a| adder(k, v, a.unwrap_or_else(&init))),
            Arc::new(subtractor),
            mat,
        )
    }
}
