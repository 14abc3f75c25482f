//! Sliding-window aggregation (Kafka Streams'
//! `internals/KStreamSlidingWindowAggregate.java`, its in-order variant).
//!
//! Windows are created only at record boundaries: a record at `t` gets a
//! left window `[t − d, t]` (seeded with the aggregate of the window before
//! it when the previous record lies within `d`) and, when later records
//! exist within `d`, a right window `[t + 1, t + 1 + d]`; it also creates the
//! previous record's right window when that one did not exist, and is added
//! to every existing window that contains it. Records before `d` (where a
//! left window would start before 0) share the window `[0, d]`.
//!
//! Where we differ, on purpose:
//! - windows live in a key-first layout (the session layout: key, end,
//!   start) so that one record reads only its own key's windows, and
//!   expire in a sweep every `d + grace` of stream time;
//! - a record whose every window has closed is late and kept (dead letter
//!   or log, `StreamsConfig::on_late`) instead of only counted;
//! - emit-final closes a sliding window 1 ms after `end + grace`, see
//!   [`WindowSpec::close_after_end`](crate::windows::WindowSpec::close_after_end).

use std::collections::HashSet;
use std::sync::Arc;

use stream_core::data::{Data, downcast, downcast_ref};
use stream_core::processor::{Punctuation, PunctuationType};
use stream_core::record::Headers;
use stream_core::serde::Serde;
use stream_core::store::window;
use stream_core::{Context, KeyValueStore, ProcessError, Processor, Record, SerdeError};

use crate::change::Change;
use crate::windowed::{Adder, stamped, unstamp};
use crate::windows::{SlidingWindows, Window, Windowed};

/// The sliding-window aggregation processor.
pub(crate) struct SlidingAggregator<K, V, A> {
    pub(crate) store: String,
    pub(crate) key: Arc<dyn Serde<K>>,
    pub(crate) agg: Arc<dyn Serde<A>>,
    pub(crate) adder: Adder<K, V, A>,
    pub(crate) windows: SlidingWindows,
}

/// A window's largest record timestamp and aggregate.
type Held<A> = (i64, A);

/// One record being aggregated.
struct Step<K, V> {
    key: K,
    key_bytes: Vec<u8>,
    value: V,
    ts: i64,
    /// Windows ending before this are closed.
    close: i64,
    headers: Headers,
    /// Whether any window took the record.
    applied: bool,
}

/// What one record finds among its key's windows.
struct Found<A> {
    starts: HashSet<i64>,
    left: Option<Held<A>>,
    right: Option<Held<A>>,
    left_created: bool,
    right_created: bool,
    previous: Option<i64>,
}

impl<A> Default for Found<A> {
    fn default() -> Self {
        Found {
            starts: HashSet::new(),
            left: None,
            right: None,
            left_created: false,
            right_created: false,
            previous: None,
        }
    }
}

fn unexpected(start: i64, ts: i64) -> ProcessError {
    ProcessError::Serde(SerdeError::Other(format!(
        "sliding window store holds a window starting at {start}, unexpected for a record at {ts}"
    )))
}

impl<K: Data + Clone, V: Data + Clone, A: Data + Clone> SlidingAggregator<K, V, A> {
    fn d(&self) -> i64 {
        self.windows.difference_ms
    }

    /// The key's windows starting in `[from, to]`, oldest first.
    fn windows_of(
        &self,
        ctx: &mut Context<'_>,
        kb: &[u8],
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Held<A>)>, ProcessError> {
        let store = ctx.store(&self.store)?;
        let mut out = Vec::new();
        for (sk, sv) in store.scan_prefix(&window::session_prefix(kb))? {
            let Some((start, _)) = window::session_span(&sk) else {
                continue;
            };
            if sk.len() != 4 + kb.len() + 16 || start < from || start > to {
                continue;
            }
            let (ts, bytes) = unstamp(&sv)?;
            out.push((start, (ts, self.agg.deserialize(bytes)?)));
        }
        out.sort_by_key(|(start, _)| *start);
        Ok(out)
    }

    fn put_and_forward(
        &self,
        ctx: &mut Context<'_>,
        step: &Step<K, V>,
        start: i64,
        (ts, agg): Held<A>,
        old: Option<A>,
    ) -> Result<(), ProcessError> {
        let end = start + self.d();
        ctx.store(&self.store)?.put(
            &window::session_key(&step.key_bytes, (start, end)),
            stamped(ts, &self.agg.serialize(&agg)?),
        )?;
        ctx.forward(Record {
            key: Box::new(Windowed {
                key: step.key.clone(),
                window: Window { start, end },
            }),
            value: Box::new(Change::new(Some(agg), old)),
            timestamp: ts,
            headers: step.headers.clone(),
        });
        Ok(())
    }

    /// Adds the record to the window starting at `start` (holding
    /// `current`, or new) unless the window has closed.
    fn update(
        &self,
        ctx: &mut Context<'_>,
        step: &mut Step<K, V>,
        start: i64,
        current: Option<Held<A>>,
    ) -> Result<(), ProcessError> {
        if start + self.d() < step.close {
            return Ok(());
        }
        let (ts, old) = match current {
            Some((ts, a)) => (ts.max(step.ts), Some(a)),
            None => (step.ts, None),
        };
        let next = (self.adder)(&step.key, step.value.clone(), old.clone());
        self.put_and_forward(ctx, step, start, (ts, next), old)?;
        step.applied = true;
        Ok(())
    }

    /// A record at `ts ≥ d`.
    fn process_in_order(
        &self,
        ctx: &mut Context<'_>,
        step: &mut Step<K, V>,
    ) -> Result<(), ProcessError> {
        let (t, d) = (step.ts, self.d());
        let mut f = Found::default();
        for (start, held) in self.windows_of(ctx, &step.key_bytes, (t - 2 * d).max(0), t + 1)? {
            f.starts.insert(start);
            let end = start + d;
            if end < t {
                f.previous = Some(held.0);
                f.left = Some(held);
            } else if end == t {
                f.left_created = true;
                if held.0 < t {
                    f.previous = Some(held.0);
                }
                self.update(ctx, step, start, Some(held))?;
            } else if start <= t {
                f.right = Some(held.clone());
                self.update(ctx, step, start, Some(held))?;
            } else if start == t + 1 {
                f.right_created = true;
            } else {
                return Err(unexpected(start, t));
            }
        }
        if let Some(p) = f.previous
            && !f.starts.contains(&(p + 1))
            && p + 1 + d >= t
        {
            self.update(ctx, step, p + 1, None)?;
        }
        if !f.left_created {
            let seed = match (f.previous, f.left.take()) {
                (Some(p), Some((_, a))) if t - d <= p => Some((t, a)),
                _ => None,
            };
            self.update(ctx, step, t - d, seed)?;
        }
        self.create_right(ctx, step, &f)
    }

    /// The record's right window, from the aggregate of the records after
    /// it, when it has any and the window does not exist yet.
    fn create_right(
        &self,
        ctx: &mut Context<'_>,
        step: &mut Step<K, V>,
        f: &Found<A>,
    ) -> Result<(), ProcessError> {
        match &f.right {
            Some(held) if !f.right_created && held.0 > step.ts => {
                self.put_and_forward(ctx, step, step.ts + 1, held.clone(), None)
            }
            _ => Ok(()),
        }
    }

    /// A record at `0 ≤ ts < d`: its left window would start before 0, so
    /// it goes into `[0, d]`, which holds every such record.
    fn process_early(
        &self,
        ctx: &mut Context<'_>,
        step: &mut Step<K, V>,
    ) -> Result<(), ProcessError> {
        let t = step.ts;
        let mut f = Found::default();
        let mut combined: Option<Held<A>> = None;
        for (start, held) in self.windows_of(ctx, &step.key_bytes, 0, t + 1)? {
            f.starts.insert(start);
            if start == 0 {
                if held.0 < t {
                    f.previous = Some(held.0);
                }
                combined = Some(held);
            } else if start <= t {
                f.right = Some(held.clone());
                self.update(ctx, step, start, Some(held))?;
            } else if start == t + 1 {
                f.right_created = true;
            } else {
                return Err(unexpected(start, t));
            }
        }
        if f.right.is_none() {
            f.right = combined.clone().filter(|(ts, _)| *ts > t);
        }
        self.create_right(ctx, step, &f)?;
        if let Some(p) = f.previous
            && !f.starts.contains(&(p + 1))
        {
            self.update(ctx, step, p + 1, None)?;
        }
        self.update(ctx, step, 0, combined)
    }
}

impl<K: Data + Clone, V: Data + Clone, A: Data + Clone> Processor for SlidingAggregator<K, V, A> {
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let every = self.d().saturating_add(self.windows.grace_ms).max(1);
        ctx.schedule(every, PunctuationType::StreamTime);
        Ok(())
    }

    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let node = ctx.node_name();
        let stream_time = ctx.stream_time();
        let (t, d) = (r.timestamp, self.d());
        let close = stream_time - self.windows.grace_ms;
        let late = || ProcessError::Late {
            node: node.to_string(),
            timestamp: t,
            window_start: t - d,
            window_end: t,
            stream_time,
            grace_ms: self.windows.grace_ms,
        };
        // Kafka Streams' rule: late once even the right window has closed.
        if t + 1 + d <= close {
            return Err(late());
        }
        let key = downcast_ref::<K>(&r.key, node)?.clone();
        let mut step = Step {
            key_bytes: self.key.serialize(&key)?,
            key,
            value: downcast::<V>(r.value, node)?,
            ts: t,
            close,
            headers: r.headers,
            applied: false,
        };
        if t < d {
            self.process_early(ctx, &mut step)?;
        } else {
            self.process_in_order(ctx, &mut step)?;
        }
        if step.applied { Ok(()) } else { Err(late()) }
    }

    /// Deletes windows that started more than the retention before
    /// stream time.
    fn punctuate(&mut self, ctx: &mut Context<'_>, p: Punctuation) -> Result<(), ProcessError> {
        let horizon = p.time - self.windows.retention_ms();
        let mut store = ctx.store(&self.store)?;
        for (sk, _) in store.scan_prefix(&[])? {
            if window::session_span(&sk).is_some_and(|(start, _)| start < horizon) {
                store.delete(&sk)?;
            }
        }
        Ok(())
    }
}
