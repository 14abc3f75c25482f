//! Session-windowed aggregations: [`SessionWindowedKStream`] (from
//! [`KGroupedStream::windowed_by_session`]).
//!
//! Kafka Streams' semantics (`internals/KStreamSessionWindowAggregate.java`):
//! a record at `t` joins every session of its key that ends at or after
//! `t − gap` and starts at or before `t + gap`; those sessions merge into
//! one (their aggregates combined with the merger, starting from the
//! initializer), which is removed and replaced by the merged session.
//! Each removed session is forwarded as a tombstone (`None`), the new one
//! as `Some(aggregate)`. A record whose merged session would end before
//! `stream time − grace` is late: not aggregated, and kept as for time
//! windows (dead letter or log, `StreamsConfig::on_late`).
//!
//! Where we differ: a record that would merge a session that has already
//! closed (stream time reached its end + gap + grace, when emit-final
//! writes its result) is late too. Kafka Streams merges it, so a session
//! it emitted as final can change afterwards; here a final stays final.
//!
//! Sessions are stored under (key length, key, end, start): a key's
//! sessions are one prefix scan. A session can still be merged by a record
//! up to `gap` after its end, and that record is not late while it bridges
//! to a session ending after `stream time − grace` (which can start up to
//! a gap later): sessions that ended before `stream time − grace − 2·gap`
//! are deleted (through the changelog) by a stream-time punctuation once
//! per `gap + grace` of stream time. Kafka Streams keeps sessions for
//! `gap + grace` (segment-granular), which can drop a session a bridging
//! record would still have merged; this keeps one gap more.

use std::sync::Arc;

use stream_core::data::{Data, downcast, downcast_ref};
use stream_core::graph::{Changelog, ProcessorFactory, StoreFormat, StoreSpec};
use stream_core::processor::{Punctuation, PunctuationType};
use stream_core::serde::erase;
use stream_core::serde::{I64Serde, NullableSerde, Serde, UnitSerde};
use stream_core::store::window::{self, WindowLayout};
use stream_core::{Context, KeyValueStore, ProcessError, Processor, Record};

use crate::change::Change;
use crate::grouped::KGroupedStream;
use crate::kstream::KStream;
use crate::ktable::KTable;
use crate::options::Materialized;
use crate::windowed::{stamped, unstamp};
use crate::windows::{SessionWindowedSerde, SessionWindows, Window, WindowSpec, Windowed};

/// Folds a value into a session's aggregate (`None`: a new session).
type Adder<K, V, A> = Arc<dyn Fn(&K, V, Option<A>) -> A + Send + Sync>;
/// Merges a session's aggregate into the merged one (`None`: the first).
type Merger<K, A> = Arc<dyn Fn(&K, Option<A>, A) -> A + Send + Sync>;

/// A grouped stream cut into sessions, waiting for an aggregation.
pub struct SessionWindowedKStream<K, V> {
    grouped: KGroupedStream<K, V>,
    windows: SessionWindows,
}

impl<K: Data + Clone, V: Data + Clone> KGroupedStream<K, V> {
    /// Aggregates per key and session of activity.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("clicks")
    ///     .group_by_key()
    ///     .windowed_by_session(SessionWindows::with_inactivity_gap(Duration::from_secs(5)))
    ///     .count(Materialized::as_store("sessions"))
    ///     .to_stream()
    ///     .map(|w, n| (format!("{}@{}-{}", w.key, w.window.start, w.window.end), format!("{n:?}")))
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str_at("clicks", "a", "x", 1_000);
    /// d.pipe_str_at("clicks", "a", "x", 4_000); // extends [1 s, 1 s]
    /// let out: Vec<String> = d.output_utf8("out").into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    /// assert_eq!(out, vec!["a@1000-1000=Some(1)", "a@1000-1000=None", "a@1000-4000=Some(2)"]);
    /// ```
    pub fn windowed_by_session(&self, windows: SessionWindows) -> SessionWindowedKStream<K, V> {
        SessionWindowedKStream {
            grouped: KGroupedStream::new(
                self.stream.clone(),
                self.key_serde.clone(),
                self.name.clone(),
                self.repartition,
            )
            .with_partitions(self.partitions),
            windows,
        }
    }
}

fn session_key(key: &[u8], w: Window) -> Vec<u8> {
    window::session_key(key, (w.start, w.end))
}

fn window_of(stored: &[u8]) -> Option<Window> {
    window::session_span(stored).map(|(start, end)| Window { start, end })
}

struct SessionAggregator<K, V, A> {
    store: String,
    key: Arc<dyn Serde<K>>,
    agg: Arc<dyn Serde<A>>,
    adder: Adder<K, V, A>,
    merger: Merger<K, A>,
    windows: SessionWindows,
}

impl<K: Data + Clone, V: Data + Clone, A: Data + Clone> Processor for SessionAggregator<K, V, A> {
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let every = self
            .windows
            .gap_ms
            .saturating_add(self.windows.grace_ms)
            .max(1);
        ctx.schedule(every, PunctuationType::StreamTime);
        Ok(())
    }

    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let node = ctx.node_name();
        let (ts, gap) = (r.timestamp, self.windows.gap_ms);
        let stream_time = ctx.stream_time();
        let k = downcast_ref::<K>(&r.key, node)?.clone();
        let kb = self.key.serialize(&k)?;
        let v = downcast::<V>(r.value, node)?;
        let mut store = ctx.store(&self.store)?;
        let mut merged = Window { start: ts, end: ts };
        let mut absorbed = Vec::new();
        for (sk, sv) in store.scan_prefix(&window::session_prefix(&kb))? {
            let Some(w) = window_of(&sk) else { continue };
            if w.end >= ts - gap && w.start <= ts + gap {
                merged.start = merged.start.min(w.start);
                merged.end = merged.end.max(w.end);
                absorbed.push((sk, w, sv));
            }
        }
        // Kafka Streams' rule: late if the merged session ends before
        // stream time − grace. And one of ours: late if it would merge a
        // session that has closed (end + gap + grace at or before stream
        // time), whose final result emit-final has already written.
        let close_after_end = self.windows.gap_ms.saturating_add(self.windows.grace_ms);
        let reopens = absorbed
            .iter()
            .any(|(_, w, _)| w.end.saturating_add(close_after_end) <= stream_time);
        if reopens || merged.end < stream_time - self.windows.grace_ms {
            return Err(ProcessError::Late {
                node: node.to_string(),
                timestamp: ts,
                window_start: merged.start,
                window_end: merged.end,
                stream_time,
                grace_ms: self.windows.grace_ms,
            });
        }
        let mut agg: Option<A> = None;
        let mut max_ts = ts;
        for (sk, w, sv) in absorbed {
            let (sts, bytes) = unstamp(&sv)?;
            let a = self.agg.deserialize(bytes)?;
            agg = Some((self.merger)(&k, agg, a.clone()));
            max_ts = max_ts.max(sts);
            store.delete(&sk)?;
            ctx.forward(Record::new(
                Box::new(Windowed {
                    key: k.clone(),
                    window: w,
                }),
                // The absorbed session's row now holds no aggregate.
                Box::new(Change::new(Some(None::<A>), Some(Some(a)))),
                sts,
            ));
            store = ctx.store(&self.store)?;
        }
        let next = (self.adder)(&k, v, agg);
        store.put(
            &session_key(&kb, merged),
            stamped(max_ts, &self.agg.serialize(&next)?),
        )?;
        ctx.forward(Record {
            key: Box::new(Windowed {
                key: k,
                window: merged,
            }),
            value: Box::new(Change::<Option<A>>::new(Some(Some(next)), None)),
            timestamp: max_ts,
            headers: r.headers,
        });
        Ok(())
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>, p: Punctuation) -> Result<(), ProcessError> {
        let horizon = p.time - self.windows.grace_ms - 2 * self.windows.gap_ms;
        let mut store = ctx.store(&self.store)?;
        for (sk, _) in store.scan_prefix(&[])? {
            if window_of(&sk).is_some_and(|w| w.end < horizon) {
                store.delete(&sk)?;
            }
        }
        Ok(())
    }
}

impl<K: Data + Clone, V: Data + Clone> SessionWindowedKStream<K, V> {
    fn lower<VIn: Data + Clone, A: Data + Clone>(
        &self,
        op: &str,
        input: KStream<K, VIn>,
        value_serde: Option<Arc<dyn Serde<VIn>>>,
        adder: Adder<K, VIn, A>,
        merger: Merger<K, A>,
        mat: Materialized<K, A>,
    ) -> KTable<Windowed<K>, Option<A>> {
        let g = &self.grouped;
        let p = match g.prepare(op, &input, value_serde, &mat) {
            Ok(p) => p,
            Err(e) => return g.unbuilt(e),
        };
        let (b, store, key_serde, agg_serde, parent) = (p.b, p.store, p.key, p.agg, p.parent);
        let w = self.windows;
        b.with_graph(|gr| {
            gr.add_store(StoreSpec {
                name: store.clone(),
                changelog: if mat.logged {
                    Changelog::Internal
                } else {
                    Changelog::Disabled
                },
                format: Some(StoreFormat {
                    key: erase(key_serde.clone()),
                    value: erase(agg_serde.clone()),
                }),
                retention_ms: Some(w.gap_ms.saturating_mul(2).saturating_add(w.grace_ms)),
                window: Some(WindowLayout::Session),
            })
        });
        let (s, k, a) = (store.clone(), key_serde.clone(), agg_serde.clone());
        let factory: ProcessorFactory = Arc::new(move || {
            Box::new(SessionAggregator {
                store: s.clone(),
                key: k.clone(),
                agg: a.clone(),
                adder: adder.clone(),
                merger: merger.clone(),
                windows: w,
            }) as Box<dyn Processor>
        });
        let kind = match op {
            "count" => "session-count",
            "reduce" => "session-reduce",
            _ => "session-aggregate",
        };
        let node = b.add_processor(kind, factory, &[parent], vec![store.clone()]);
        let spec = WindowSpec::Session(w);
        b.with_graph(|gr| gr.set_note(node, spec.describe()));
        let windowed: Arc<dyn Serde<Windowed<K>>> = Arc::new(SessionWindowedSerde::new(key_serde));
        let nullable: Arc<dyn Serde<Option<A>>> = Arc::new(NullableSerde::new(agg_serde));
        KTable::new(
            b,
            node,
            g.stream.sources.clone(),
            Some(windowed),
            Some(nullable),
            store,
        )
        .with_windows(spec)
    }

    /// Counts records per key and session; `None` marks a session merged
    /// into a newer one. See [`KGroupedStream::windowed_by_session`].
    pub fn count(&self, mat: Materialized<K, i64>) -> KTable<Windowed<K>, Option<i64>> {
        let mat = if mat.value.is_none() {
            mat.with_value_serde(I64Serde)
        } else {
            mat
        };
        let g = &self.grouped;
        let add: Adder<K, (), i64> = Arc::new(|_, _, n| n.unwrap_or(0) + 1);
        let merge: Merger<K, i64> = Arc::new(|_, a, b| a.unwrap_or(0) + b);
        if g.repartition {
            let units = g.stream.map_values(|_| ());
            self.lower("count", units, Some(Arc::new(UnitSerde)), add, merge, mat)
        } else {
            let units = g.stream.map_values(|_| ());
            self.lower("count", units, None, add, merge, mat)
        }
    }

    /// Folds each session's values into an aggregate; `merger` combines
    /// two sessions' aggregates when a record bridges them (Kafka Streams
    /// starts the merge from `init()`, and so does this).
    ///
    /// ```
    /// use std::time::Duration;
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in")
    ///     .group_by_key()
    ///     .windowed_by_session(
    ///         SessionWindows::with_inactivity_gap(Duration::from_secs(5)).grace(Duration::from_secs(10)),
    ///     )
    ///     .aggregate(String::new, |_k, v, acc| acc + &v, |_k, a, b| a + &b, Materialized::as_store("s"))
    ///     .to_stream()
    ///     .filter(|_, v| v.is_some())
    ///     .map(|w, v| (w.key, v.unwrap_or_default()))
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str_at("in", "k", "a", 1_000);
    /// d.pipe_str_at("in", "k", "c", 10_000);
    /// d.pipe_str_at("in", "k", "b", 6_000); // within 5 s of both: bridges them
    /// assert_eq!(d.output_utf8("out").last().unwrap().1, "acb");
    /// ```
    pub fn aggregate<A: Data + Clone>(
        &self,
        init: impl Fn() -> A + Send + Sync + 'static,
        adder: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        merger: impl Fn(&K, A, A) -> A + Send + Sync + 'static,
        mat: Materialized<K, A>,
    ) -> KTable<Windowed<K>, Option<A>> {
        let g = &self.grouped;
        let init = Arc::new(init);
        let i2 = init.clone();
        let add: Adder<K, V, A> = Arc::new(move |k, v, a| adder(k, v, a.unwrap_or_else(|| init())));
        let merge: Merger<K, A> =
            Arc::new(move |k, acc, s| merger(k, acc.unwrap_or_else(|| i2()), s));
        self.lower(
            "aggregate",
            g.stream.clone(),
            g.stream.value_serde.clone(),
            add,
            merge,
            mat,
        )
    }

    /// Combines each session's values with `f`, which also merges sessions.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in")
    ///     .group_by_key()
    ///     .windowed_by_session(SessionWindows::with_inactivity_gap(Duration::from_secs(5)))
    ///     .reduce(|a, v| format!("{a}{v}"), Materialized::as_store("s"))
    ///     .to_stream()
    ///     .filter(|_, v| v.is_some())
    ///     .map(|w, v| (w.key, v.unwrap_or_default()))
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str_at("in", "k", "a", 1_000);
    /// d.pipe_str_at("in", "k", "b", 2_000);
    /// assert_eq!(d.output_utf8("out").last().unwrap().1, "ab");
    /// ```
    pub fn reduce(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        mat: Materialized<K, V>,
    ) -> KTable<Windowed<K>, Option<V>> {
        let g = &self.grouped;
        let mat = Materialized {
            value: mat.value.clone().or_else(|| g.stream.value_serde.clone()),
            ..mat
        };
        let f = Arc::new(f);
        let f2 = f.clone();
        let add: Adder<K, V, V> = Arc::new(move |_, v, acc| match acc {
            None => v,
            Some(a) => f(a, v),
        });
        let merge: Merger<K, V> = Arc::new(move |_, acc, s| match acc {
            None => s,
            Some(a) => f2(a, s),
        });
        self.lower(
            "reduce",
            g.stream.clone(),
            g.stream.value_serde.clone(),
            add,
            merge,
            mat,
        )
    }
}
