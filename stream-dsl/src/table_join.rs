//! Table–table joins: [`KTable::join`], [`KTable::left_join`],
//! [`KTable::outer_join`] (Kafka Streams' `KTableKTableInnerJoin`,
//! `KTableKTableLeftJoin`, `KTableKTableRightJoin` and
//! `KTableKTableOuterJoin`).
//!
//! A change on either side looks up the other side's row (in its store)
//! and forwards the joined row's change:
//! - inner: nothing while the other side has no row; else the joiner of
//!   the new value (a tombstone when the row was deleted) and of the old;
//! - left: a left change always joins (the right row or `None`); a right
//!   change joins only while the left row exists;
//! - outer: every change joins, with `None` for a missing side; a row
//!   both of whose sides are gone is a tombstone.
//!
//! Where we differ: the result has the timestamp of the record that
//! changed it (Kafka Streams since 3.x gives the larger timestamp of the
//! two rows; the stores here keep no row timestamps).

use std::sync::Arc;

use stream_core::data::{Data, downcast, downcast_ref};
use stream_core::serde::Serde;
use stream_core::{Context, ProcessError, Processor, Record, TopologyError};

use crate::change::Change;
use crate::joiner::Joiner;
use crate::ktable::KTable;
use crate::ops;

/// Joins this side's value (`A`) with the other side's (`B`).
type SideJoin<A, B, R> = Arc<dyn Fn(Option<&A>, Option<&B>) -> Option<R> + Send + Sync>;

/// One side of a table–table join: a change of this side's row joins with
/// the other side's row, read from its store.
struct TableJoinSide<K, A, B, R> {
    other_store: String,
    key: Arc<dyn Serde<K>>,
    other: Arc<dyn Serde<B>>,
    join: SideJoin<A, B, R>,
}

impl<K, A, B, R> Processor for TableJoinSide<K, A, B, R>
where
    K: Data + Clone,
    A: Data + Clone,
    B: Data + Clone,
    R: Data + Clone,
{
    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let node = ctx.node_name();
        let kb = self.key.serialize(downcast_ref::<K>(&r.key, node)?)?;
        let other = match ctx.store(&self.other_store)?.get_counted(&kb)? {
            Some(bytes) => Some(self.other.deserialize(&bytes)?),
            None => None,
        };
        let c = downcast::<Change<A>>(r.value, node)?;
        let out = Change::new(
            (self.join)(c.new.as_ref(), other.as_ref()),
            (self.join)(c.old.as_ref(), other.as_ref()),
        );
        if !out.is_empty() {
            ctx.forward(ops::record_dyn(r.key, out, r.timestamp, r.headers));
        }
        Ok(())
    }
}

impl<K: Data + Clone, V: Data + Clone> KTable<K, V> {
    fn lower_table_join<V2: Data + Clone, R: Data + Clone>(
        &self,
        other: &KTable<K, V2>,
        joiner: Joiner<V, V2, R>,
    ) -> KTable<K, R> {
        let b = self.builder();
        let name = joiner.kind(false);
        let serdes = (self.key_serde(), self.value_serde(), other.value_serde());
        let (Some(key), Some(this_value), Some(other_value)) = serdes else {
            b.record_error(TopologyError::MissingSerde(format!(
                "{name} of {} and {}: the tables' serdes are unknown",
                self.store_name(),
                other.store_name()
            )));
            return self.joined(self.node(), None);
        };
        if !self.is_materialized() || !other.is_materialized() {
            b.record_error(TopologyError::Invalid(format!(
                "{name} of {} and {}: both tables need their own store (read from a topic, to_table, or an aggregation), not a filtered or mapped one",
                self.store_name(),
                other.store_name()
            )));
            return self.joined(self.node(), None);
        }
        let joiner = Arc::new(joiner);
        let (this_store, other_store) = (
            self.store_name().to_string(),
            other.store_name().to_string(),
        );
        let left_side = {
            let (store, key, value, j) = (
                other_store.clone(),
                key.clone(),
                other_value,
                joiner.clone(),
            );
            let join: SideJoin<V, V2, R> = Arc::new(move |a, b| j.apply(a, b));
            let factory: stream_core::graph::ProcessorFactory = Arc::new(move || {
                Box::new(TableJoinSide {
                    other_store: store.clone(),
                    key: key.clone(),
                    other: value.clone(),
                    join: join.clone(),
                }) as Box<dyn Processor>
            });
            b.add_processor(name, factory, &[self.node()], vec![other_store])
        };
        let right_side = {
            let (store, value, j) = (this_store.clone(), this_value, joiner);
            let join: SideJoin<V2, V, R> = Arc::new(move |b, a| j.apply(a, b));
            let factory: stream_core::graph::ProcessorFactory = Arc::new(move || {
                Box::new(TableJoinSide {
                    other_store: store.clone(),
                    key: key.clone(),
                    other: value.clone(),
                    join: join.clone(),
                }) as Box<dyn Processor>
            });
            b.add_processor(name, factory, &[other.node()], vec![this_store])
        };
        let pass: ops::OpFn = Arc::new(|ctx, r| {
            ctx.forward(r);
            Ok(())
        });
        let node = b.add_processor(
            "table-join-merge",
            ops::factory(pass),
            &[left_side, right_side],
            Vec::new(),
        );
        self.joined(node, stream_core::serde::builtin_serde::<R>())
    }

    /// Joins with `other` by key (inner join): a row exists while both
    /// sides have one, valued `joiner(left, right)`; it is deleted (a
    /// tombstone) when either side's row is. Both tables need their own
    /// store and co-partitioned topics.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// let c = Consumed::with(StringSerde, StringSerde);
    /// let names = b.table("names", c.clone(), Materialized::as_store("names"));
    /// let cities = b.table("cities", c, Materialized::as_store("cities"));
    /// names.join(&cities, |n, c| format!("{n} in {c}")).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("names", "1", "Ann");      // no city yet: nothing
    /// d.pipe_str("cities", "1", "Oslo");
    /// d.pipe("cities", Some(b"1"), None);  // the row goes: a tombstone
    /// let out: Vec<Option<String>> = d.records("out").into_iter()
    ///     .map(|r| r.value.map(|v| String::from_utf8(v).unwrap())).collect();
    /// assert_eq!(out, vec![Some("Ann in Oslo".to_string()), None]);
    /// ```
    pub fn join<V2: Data + Clone, R: Data + Clone>(
        &self,
        other: &KTable<K, V2>,
        joiner: impl Fn(&V, &V2) -> R + Send + Sync + 'static,
    ) -> KTable<K, R> {
        self.lower_table_join(other, Joiner::Inner(Box::new(joiner)))
    }

    /// Joins with `other` by key, keeping every row of this table (left
    /// join): `joiner(left, Some(right))`, or `joiner(left, None)` while
    /// `other` has no row for the key.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// let c = Consumed::with(StringSerde, StringSerde);
    /// let names = b.table("names", c.clone(), Materialized::as_store("names"));
    /// let cities = b.table("cities", c, Materialized::as_store("cities"));
    /// names.left_join(&cities, |n, c| format!("{n} in {}", c.map_or("?", |c| c.as_str()))).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("names", "1", "Ann");
    /// d.pipe_str("cities", "1", "Oslo");
    /// let out: Vec<String> = d.output_utf8("out").into_iter().map(|(_, v)| v).collect();
    /// assert_eq!(out, vec!["Ann in ?", "Ann in Oslo"]);
    /// ```
    pub fn left_join<V2: Data + Clone, R: Data + Clone>(
        &self,
        other: &KTable<K, V2>,
        joiner: impl Fn(&V, Option<&V2>) -> R + Send + Sync + 'static,
    ) -> KTable<K, R> {
        self.lower_table_join(other, Joiner::Left(Box::new(joiner)))
    }

    /// Joins with `other` by key, keeping the rows of both (outer join):
    /// `joiner(left, right)` with `None` for a side without a row; a key
    /// whose rows are both gone is deleted.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// let c = Consumed::with(StringSerde, StringSerde);
    /// let names = b.table("names", c.clone(), Materialized::as_store("names"));
    /// let cities = b.table("cities", c, Materialized::as_store("cities"));
    /// names.outer_join(&cities, |n, c| format!("{}/{}", n.map_or("-", |n| n.as_str()), c.map_or("-", |c| c.as_str())))
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("cities", "1", "Oslo");
    /// d.pipe_str("names", "1", "Ann");
    /// let out: Vec<String> = d.output_utf8("out").into_iter().map(|(_, v)| v).collect();
    /// assert_eq!(out, vec!["-/Oslo", "Ann/Oslo"]);
    /// ```
    pub fn outer_join<V2: Data + Clone, R: Data + Clone>(
        &self,
        other: &KTable<K, V2>,
        joiner: impl Fn(Option<&V>, Option<&V2>) -> R + Send + Sync + 'static,
    ) -> KTable<K, R> {
        self.lower_table_join(other, Joiner::Outer(Box::new(joiner)))
    }
}
