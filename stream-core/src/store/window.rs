//! How window stores lay out their entries in a key-value store, shared by
//! the window aggregations (which write them) and interactive queries
//! (which read them).
//!
//! - time windows: key = window start (8 bytes, big-endian; starts are
//!   never negative, so byte order is time order) + the key's bytes;
//! - sessions: key = key length (4 bytes) + key + end (8) + start (8): a
//!   key's sessions are one prefix scan;
//! - values (both): the largest record timestamp in the window (8 bytes)
//!   + the aggregate's bytes.

use crate::error::StoreError;
use crate::store::KeyValueStore;

/// The layout of a window store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowLayout {
    /// Tumbling or hopping windows of `size_ms`.
    Time {
        /// Window size (ms).
        size_ms: i64,
    },
    /// Session windows.
    Session,
}

/// A window `[start, end)` (time windows) or `[start, end]` (sessions), ms.
pub type Span = (i64, i64);

fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_be_bytes(a)
}

/// Store key of the time window starting at `start` for `key`.
pub fn time_key(start: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&start.max(0).to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The start and key bytes of a time-window store key.
pub fn split_time_key(stored: &[u8]) -> Option<(i64, &[u8])> {
    (stored.len() >= 8).then(|| (be_i64(stored), &stored[8..]))
}

/// The prefix of a key's sessions.
pub fn session_prefix(key: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + key.len() + 16);
    p.extend_from_slice(&(key.len() as u32).to_be_bytes());
    p.extend_from_slice(key);
    p
}

/// Store key of `key`'s session `[start, end]`.
pub fn session_key(key: &[u8], (start, end): Span) -> Vec<u8> {
    let mut k = session_prefix(key);
    k.extend_from_slice(&end.to_be_bytes());
    k.extend_from_slice(&start.to_be_bytes());
    k
}

/// The `(start, end)` of a session store key.
pub fn session_span(stored: &[u8]) -> Option<Span> {
    let n = stored.len();
    (n >= 20).then(|| (be_i64(&stored[n - 8..]), be_i64(&stored[n - 16..n - 8])))
}

/// The key bytes and span of a stored window key.
pub fn split(layout: WindowLayout, stored: &[u8]) -> Option<(&[u8], Span)> {
    match layout {
        WindowLayout::Time { size_ms } => {
            let (start, key) = split_time_key(stored)?;
            Some((key, (start, start + size_ms)))
        }
        WindowLayout::Session => {
            let span = session_span(stored)?;
            Some((&stored[4..stored.len() - 16], span))
        }
    }
}

/// A stored value: the window's largest record timestamp and its aggregate.
pub fn stamp(ts: i64, aggregate: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + aggregate.len());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(aggregate);
    v
}

/// The timestamp and aggregate bytes of a stored value.
pub fn unstamp(stored: &[u8]) -> Option<(i64, &[u8])> {
    (stored.len() >= 8).then(|| (be_i64(stored), &stored[8..]))
}

/// `key`'s windows that overlap `[from, to]` (ms), oldest first: their
/// span and stored value (timestamp + aggregate).
///
/// ```
/// use stream_core::store::{KeyValueStore, MemoryBackend, StoreSet};
/// use stream_core::store::window::{fetch, stamp, time_key, WindowLayout};
/// let mut set = StoreSet::new(vec![("w".into(), false)], Box::new(MemoryBackend::new(1)));
/// let mut v = set.view(0);
/// v.put(&time_key(0, b"a"), stamp(5, b"x")).unwrap();
/// v.put(&time_key(60_000, b"a"), stamp(61_000, b"y")).unwrap();
/// v.put(&time_key(60_000, b"b"), stamp(61_000, b"z")).unwrap();
/// let got = fetch(&v, WindowLayout::Time { size_ms: 60_000 }, b"a", 30_000, i64::MAX).unwrap();
/// assert_eq!(got, vec![((0, 60_000), stamp(5, b"x")), ((60_000, 120_000), stamp(61_000, b"y"))]);
/// ```
pub fn fetch(
    store: &dyn KeyValueStore,
    layout: WindowLayout,
    key: &[u8],
    from: i64,
    to: i64,
) -> Result<Vec<(Span, Vec<u8>)>, StoreError> {
    match layout {
        WindowLayout::Time { size_ms } => {
            let lo = from.saturating_sub(size_ms - 1).max(0);
            let hi = to.saturating_add(1).max(0);
            Ok(store
                .range(&time_key(lo, &[]), &time_key(hi, &[]))?
                .into_iter()
                .filter_map(|(k, v)| {
                    let (start, kb) = split_time_key(&k)?;
                    (kb == key).then_some(((start, start + size_ms), v))
                })
                .collect())
        }
        WindowLayout::Session => {
            let mut out: Vec<(Span, Vec<u8>)> = store
                .scan_prefix(&session_prefix(key))?
                .into_iter()
                .filter_map(|(k, v)| {
                    let span = session_span(&k)?;
                    (k.len() == 4 + key.len() + 16 && span.1 >= from && span.0 <= to)
                        .then_some((span, v))
                })
                .collect();
            out.sort_by_key(|(s, _)| *s);
            Ok(out)
        }
    }
}
