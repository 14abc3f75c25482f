//! Stream–stream windowed joins: [`KStream::join_stream`],
//! [`KStream::left_join_stream`], [`KStream::outer_join_stream`] with
//! [`JoinWindows`] (Kafka Streams' `KStreamKStreamJoin` and its outer-join
//! store, since 3.1).
//!
//! Each side's records wait in a sled store, changelogged; a record joins
//! every record of the other side with the same key whose timestamp lies
//! within the window (`[t − before, t + after]` from the left side), and
//! the result has the larger of the two timestamps. A left (or outer) join
//! also emits a record that found no partner — `joiner(v, None)` — but only
//! once its window has closed (stream time past `t + after + grace`) and
//! never if a partner arrived before: no spurious early results. Those
//! records wait in a third store, keyed by the time they are due.
//!
//! Where we differ: a record that arrives after its window closed is late
//! and kept (dead letter or log, `StreamsConfig::on_late`) rather than only
//! counted; stores are keyed by key first (a record reads only its key's
//! partners) and swept every `before + after + grace` of stream time.

use std::sync::Arc;
use std::time::Duration;

use stream_core::data::{Data, downcast, downcast_ref};
use stream_core::graph::{Changelog, ProcessorFactory, StoreSpec};
use stream_core::processor::{Punctuation, PunctuationType};
use stream_core::serde::Serde;
use stream_core::store::window;
use stream_core::{
    Context, KeyValueStore, ProcessError, Processor, Record, SerdeError, TopologyError,
};

use crate::joiner::Joiner;
use crate::kstream::KStream;
use crate::ops;

/// The window of a stream–stream join: how far apart in time two records
/// may be to join (Kafka Streams' `JoinWindows`).
///
/// ```
/// use std::time::Duration;
/// use stream_dsl::stream_join::JoinWindows;
/// let w = JoinWindows::of_time_difference(Duration::from_secs(10)).grace(Duration::from_secs(2));
/// assert_eq!((w.before_ms, w.after_ms, w.grace_ms), (10_000, 10_000, 2_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinWindows {
    /// How much earlier than a left record a right record may be (ms).
    pub before_ms: i64,
    /// How much later than a left record a right record may be (ms).
    pub after_ms: i64,
    /// How long after a window's end records still join (ms).
    pub grace_ms: i64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl JoinWindows {
    /// Records at most `difference` apart join, either way; no grace
    /// (Kafka Streams' `ofTimeDifferenceWithNoGrace`).
    pub fn of_time_difference(difference: Duration) -> Self {
        let d = ms(difference);
        JoinWindows {
            before_ms: d,
            after_ms: d,
            grace_ms: 0,
        }
    }

    /// Accepts out-of-order records up to `grace` after a window's end.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace_ms = ms(grace);
        self
    }

    /// Sets how much earlier than a left record a right record may be.
    pub fn before(mut self, before: Duration) -> Self {
        self.before_ms = ms(before);
        self
    }

    /// Sets how much later than a left record a right record may be.
    pub fn after(mut self, after: Duration) -> Self {
        self.after_ms = ms(after);
        self
    }

    /// How long records wait in the join stores (Kafka Streams':
    /// before + after + grace).
    pub fn retention_ms(&self) -> i64 {
        self.before_ms
            .saturating_add(self.after_ms)
            .saturating_add(self.grace_ms)
    }

    /// The same window seen from the right side.
    fn reversed(self) -> Self {
        JoinWindows {
            before_ms: self.after_ms,
            after_ms: self.before_ms,
            grace_ms: self.grace_ms,
        }
    }
}

/// A record's identity in a join store: its key, timestamp and input
/// coordinates (records with equal key and time are all kept).
fn entry_key(kb: &[u8], ts: i64, ctx: &Context<'_>) -> Vec<u8> {
    let mut k = window::session_prefix(kb);
    k.extend_from_slice(&ts.max(0).to_be_bytes());
    let (topic, partition, offset) = ctx
        .origin()
        .map_or((0u32, 0, 0), |o| (fnv(&o.topic), o.partition, o.offset));
    k.extend_from_slice(&topic.to_be_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// The timestamp of a join-store key made by [`entry_key`].
fn entry_ts(stored: &[u8]) -> Option<i64> {
    let n = stored.len();
    let b = stored.get(n.checked_sub(24)?..n - 16)?;
    Some(i64::from_be_bytes(b.try_into().ok()?))
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A lone record waiting for its window to close: key = due time (8) +
/// side (1) + its join-store key.
fn pending_key(due: i64, left: bool, entry: &[u8]) -> Vec<u8> {
    let mut k = due.max(0).to_be_bytes().to_vec();
    k.push(u8::from(left));
    k.extend_from_slice(entry);
    k
}

/// Stores of one join.
#[derive(Clone)]
struct Stores {
    this: String,
    other: String,
    pending: String,
}

/// One side of a stream–stream join.
struct JoinSide<K, A, B, R> {
    stores: Stores,
    left: bool,
    windows: JoinWindows,
    key: Arc<dyn Serde<K>>,
    this_value: Arc<dyn Serde<A>>,
    other_value: Arc<dyn Serde<B>>,
    /// Joins (this side's value, the other's).
    join: crate::fns::PairJoin<A, B, R>,
    keeps_lone: bool,
    /// Stream time of the last sweep of expired records.
    swept: Option<i64>,
}

impl<K, A, B, R> JoinSide<K, A, B, R>
where
    K: Data + Clone,
    A: Data + Clone,
    B: Data + Clone,
    R: Data + Clone,
{
    /// Emits the lone records whose windows closed by `stream_time`.
    fn flush(&self, ctx: &mut Context<'_>, stream_time: i64) -> Result<(), ProcessError> {
        if stream_time < 0 || !self.keeps_lone {
            return Ok(());
        }
        let due = ctx
            .store(&self.stores.pending)?
            .range(&0i64.to_be_bytes(), &(stream_time + 1).to_be_bytes())?;
        for (pk, pv) in due {
            ctx.store(&self.stores.pending)?.delete(&pk)?;
            let Some(&side) = pk.get(8) else { continue };
            let entry = &pk[9..];
            let (kb, ts) = split_entry(entry).ok_or_else(|| corrupt("pending key"))?;
            let key = self.key.deserialize(kb)?;
            // Each side's processor emits lone records of both sides: the
            // joiner's argument order follows this side.
            let out = if (side == 1) == self.left {
                (self.join)(Some(&self.this_value.deserialize(&pv)?), None)
            } else {
                (self.join)(None, Some(&self.other_value.deserialize(&pv)?))
            };
            if let Some(out) = out {
                ctx.forward(Record::new(Box::new(key), Box::new(out), ts));
            }
        }
        Ok(())
    }
}

/// The key bytes and timestamp of a join-store key.
fn split_entry(entry: &[u8]) -> Option<(&[u8], i64)> {
    let len = u32::from_be_bytes(entry.get(..4)?.try_into().ok()?) as usize;
    Some((entry.get(4..4 + len)?, entry_ts(entry)?))
}

fn corrupt(what: &str) -> ProcessError {
    ProcessError::Serde(SerdeError::Other(format!(
        "join store entry malformed: {what}"
    )))
}

impl<K, A, B, R> Processor for JoinSide<K, A, B, R>
where
    K: Data + Clone,
    A: Data + Clone,
    B: Data + Clone,
    R: Data + Clone,
{
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.schedule(1, PunctuationType::StreamTime);
        Ok(())
    }

    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let node = ctx.node_name();
        let (t, w, stream_time) = (r.timestamp, self.windows, ctx.stream_time());
        let close = t.saturating_add(w.after_ms).saturating_add(w.grace_ms);
        if close < stream_time {
            return Err(ProcessError::Late {
                node: node.to_string(),
                timestamp: t,
                window_start: t.saturating_sub(w.before_ms),
                window_end: t.saturating_add(w.after_ms),
                stream_time,
                grace_ms: w.grace_ms,
            });
        }
        let kb = self.key.serialize(downcast_ref::<K>(&r.key, node)?)?;
        let v = downcast::<A>(r.value, node)?;
        let entry = entry_key(&kb, t, ctx);
        let bytes = self.this_value.serialize(&v)?;
        ctx.store(&self.stores.this)?.put(&entry, bytes.clone())?;
        let (from, to) = (t.saturating_sub(w.before_ms), t.saturating_add(w.after_ms));
        let partners = ctx
            .store(&self.stores.other)?
            .scan_prefix(&window::session_prefix(&kb))?;
        let mut matched = false;
        for (ok, ov) in partners {
            let Some((okb, t2)) = split_entry(&ok) else {
                continue;
            };
            if okb != kb.as_slice() || t2 < from || t2 > to {
                continue;
            }
            matched = true;
            // The partner no longer waits alone for its window to close.
            let other_close = t2.saturating_add(w.before_ms).saturating_add(w.grace_ms);
            ctx.store(&self.stores.pending)?
                .delete(&pending_key(other_close, !self.left, &ok))?;
            let partner = self.other_value.deserialize(&ov)?;
            if let Some(out) = (self.join)(Some(&v), Some(&partner)) {
                ctx.forward(ops::record_dyn(
                    r.key.clone_data(),
                    out,
                    t.max(t2),
                    r.headers.clone(),
                ));
            }
        }
        if !matched && self.keeps_lone {
            ctx.store(&self.stores.pending)?
                .put(&pending_key(close, self.left, &entry), bytes)?;
        }
        self.flush(ctx, stream_time)
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>, p: Punctuation) -> Result<(), ProcessError> {
        self.flush(ctx, p.time)?;
        // Records older than the retention can join nothing any more:
        // swept once per retention of stream time.
        let retention = self.windows.retention_ms().max(1);
        if self.swept.is_some_and(|s| p.time - s < retention) {
            return Ok(());
        }
        self.swept = Some(p.time);
        let horizon = p.time - retention;
        let mut store = ctx.store(&self.stores.this)?;
        for (k, _) in store.scan_prefix(&[])? {
            if entry_ts(&k).is_some_and(|ts| ts < horizon) {
                store.delete(&k)?;
            }
        }
        Ok(())
    }
}

impl<K: Data + Clone, V: Data + Clone> KStream<K, V> {
    fn lower_stream_join<V2: Data + Clone, R: Data + Clone>(
        &self,
        other: &KStream<K, V2>,
        windows: JoinWindows,
        joiner: Joiner<V, V2, R>,
    ) -> KStream<K, R> {
        let b = self.b.clone();
        let kind = joiner.kind(true);
        let (Some(key), Some(lv), Some(rv)) = (
            self.key_serde.clone(),
            self.value_serde.clone(),
            other.value_serde.clone(),
        ) else {
            b.record_error(TopologyError::MissingSerde(format!(
                "{kind} of {} and {}: serdes of the key and both values are needed",
                self.sources.join("+"),
                other.sources.join("+")
            )));
            return KStream::new(b, self.node, self.sources.clone(), None, None, false);
        };
        let base = b.derived_name(&self.sources, kind);
        let stores = Stores {
            this: format!("{base}-this"),
            other: format!("{base}-other"),
            pending: format!("{base}-outer"),
        };
        for name in [&stores.this, &stores.other, &stores.pending] {
            b.with_graph(|g| {
                g.add_store(StoreSpec {
                    name: name.clone(),
                    changelog: Changelog::Internal,
                    format: None,
                    retention_ms: Some(windows.retention_ms()),
                    window: None,
                })
            });
        }
        // Each side must meet the other in one task: re-keyed sides are
        // repartitioned (into a common count, see the partition planner).
        let left_parent = self.copartitioned(&format!("{base}-left"), key.clone(), lv.clone());
        let right_parent = other.copartitioned(&format!("{base}-right"), key.clone(), rv.clone());
        let joiner = Arc::new(joiner);
        let all = vec![
            stores.this.clone(),
            stores.other.clone(),
            stores.pending.clone(),
        ];
        let left = {
            let (s, k, a, o, j) = (
                stores.clone(),
                key.clone(),
                lv.clone(),
                rv.clone(),
                joiner.clone(),
            );
            let keeps = j.keeps_lone(true);
            let join: crate::fns::PairJoin<V, V2, R> = Arc::new(move |a, b| j.apply(a, b));
            let factory: ProcessorFactory = Arc::new(move || {
                Box::new(JoinSide {
                    stores: s.clone(),
                    left: true,
                    windows,
                    key: k.clone(),
                    this_value: a.clone(),
                    other_value: o.clone(),
                    join: join.clone(),
                    keeps_lone: keeps,
                    swept: None,
                }) as Box<dyn Processor>
            });
            b.add_processor(kind, factory, &[left_parent], all.clone())
        };
        let right = {
            let s = Stores {
                this: stores.other.clone(),
                other: stores.this.clone(),
                pending: stores.pending.clone(),
            };
            let (k, a, o, j) = (key.clone(), rv, lv, joiner);
            let keeps = j.keeps_lone(false);
            let join: crate::fns::PairJoin<V2, V, R> = Arc::new(move |b, a| j.apply(a, b));
            let factory: ProcessorFactory = Arc::new(move || {
                Box::new(JoinSide {
                    stores: s.clone(),
                    left: false,
                    windows: windows.reversed(),
                    key: k.clone(),
                    this_value: a.clone(),
                    other_value: o.clone(),
                    join: join.clone(),
                    keeps_lone: keeps,
                    swept: None,
                }) as Box<dyn Processor>
            });
            b.add_processor(kind, factory, &[right_parent], all)
        };
        let pass: ops::OpFn = Arc::new(|ctx, r| {
            ctx.forward(r);
            Ok(())
        });
        let node = b.add_processor(
            "stream-join-merge",
            ops::factory(pass),
            &[left, right],
            Vec::new(),
        );
        let mut sources = self.sources.clone();
        sources.extend(other.sources.iter().cloned());
        KStream::new(
            b,
            node,
            sources,
            Some(key),
            stream_core::serde::builtin_serde::<R>(),
            false,
        )
    }

    /// This stream's node, after a repartition when its key changed.
    fn copartitioned(&self, name: &str, key: Arc<dyn Serde<K>>, value: Arc<dyn Serde<V>>) -> usize {
        if self.key_changed {
            let suffix = stream_core::graph::repartition_suffix(name);
            self.through_internal(&suffix, key, value).node
        } else {
            self.node
        }
    }

    /// Joins records of this stream and `other` with equal keys whose
    /// timestamps lie within `windows` (inner join): `joiner(left, right)`
    /// for every such pair, with the larger timestamp. Both sides wait in
    /// changelogged sled stores for `before + after + grace`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// let views = b.source("views");
    /// let clicks = b.source("clicks");
    /// views.join_stream(&clicks, JoinWindows::of_time_difference(Duration::from_secs(10)), |v, c| format!("{v}->{c}"))
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str_at("views", "ad1", "view", 1_000);
    /// d.pipe_str_at("clicks", "ad1", "click", 5_000);  // 4 s later: joins
    /// d.pipe_str_at("clicks", "ad1", "late", 30_000);  // 29 s later: does not
    /// assert_eq!(d.output_utf8("out"), vec![("ad1".to_string(), "view->click".to_string())]);
    /// ```
    pub fn join_stream<V2: Data + Clone, R: Data + Clone>(
        &self,
        other: &KStream<K, V2>,
        windows: JoinWindows,
        joiner: impl Fn(&V, &V2) -> R + Send + Sync + 'static,
    ) -> KStream<K, R> {
        self.lower_stream_join(other, windows, Joiner::Inner(Box::new(joiner)))
    }

    /// Like [`join_stream`](Self::join_stream), and also every record of
    /// this stream that found no partner, as `joiner(left, None)` — once
    /// its window has closed, never before.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("views")
    ///     .left_join_stream(&b.source("clicks"), JoinWindows::of_time_difference(Duration::from_secs(10)),
    ///         |v, c| format!("{v}->{}", c.map_or("none", |c| c.as_str())))
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str_at("views", "ad1", "view", 1_000);
    /// d.pipe_str_at("views", "ad2", "view", 2_000);
    /// assert!(d.output_utf8("out").is_empty()); // the windows are still open
    /// d.pipe_str_at("clicks", "ad2", "click", 3_000);
    /// d.pipe_str_at("clicks", "ad3", "click", 20_000); // stream time 20 s closes ad1's window
    /// let out: Vec<String> = d.output_utf8("out").into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
    /// assert_eq!(out, vec!["ad2:view->click", "ad1:view->none"]);
    /// ```
    pub fn left_join_stream<V2: Data + Clone, R: Data + Clone>(
        &self,
        other: &KStream<K, V2>,
        windows: JoinWindows,
        joiner: impl Fn(&V, Option<&V2>) -> R + Send + Sync + 'static,
    ) -> KStream<K, R> {
        self.lower_stream_join(other, windows, Joiner::Left(Box::new(joiner)))
    }

    /// Like [`left_join_stream`](Self::left_join_stream), for both sides:
    /// a lone record of either stream comes out with `None` for the other
    /// once its window has closed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("views")
    ///     .outer_join_stream(&b.source("clicks"), JoinWindows::of_time_difference(Duration::from_secs(10)),
    ///         |v, c| format!("{}->{}", v.map_or("none", |v| v.as_str()), c.map_or("none", |c| c.as_str())))
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str_at("clicks", "ad1", "click", 1_000);
    /// d.pipe_str_at("views", "ad9", "view", 30_000);
    /// assert_eq!(d.output_utf8("out"), vec![("ad1".to_string(), "none->click".to_string())]);
    /// ```
    pub fn outer_join_stream<V2: Data + Clone, R: Data + Clone>(
        &self,
        other: &KStream<K, V2>,
        windows: JoinWindows,
        joiner: impl Fn(Option<&V>, Option<&V2>) -> R + Send + Sync + 'static,
    ) -> KStream<K, R> {
        self.lower_stream_join(other, windows, Joiner::Outer(Box::new(joiner)))
    }
}
