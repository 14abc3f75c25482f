//! Window specifications and windowed keys: [`TimeWindows`] (tumbling and
//! hopping), [`SlidingWindows`], [`SessionWindows`], [`Window`],
//! [`Windowed`] and its serdes.
//!
//! Semantics follow Kafka Streams' `TimeWindows` (`kstream/TimeWindows.java`,
//! `internals/KStreamWindowAggregate.java`): windows are half-open
//! `[start, start + size)`, aligned to the epoch, start at 0 or later; a
//! window accepts records until stream time reaches `end + grace`; a
//! windowed key is written as the key's bytes followed by the window start
//! (8 bytes, big-endian), Kafka Streams' `TimeWindowedSerializer` format.

use std::sync::Arc;
use std::time::Duration;

use stream_core::SerdeError;
use stream_core::serde::Serde;
use stream_core::store::window::WindowLayout;

/// A time interval in ms: half-open `[start, end)` for tumbling and
/// hopping windows, closed `[start, end]` for sessions and sliding windows
/// (as Kafka Streams' `TimeWindow` and `SessionWindow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    /// Inclusive start.
    pub start: i64,
    /// End: exclusive for time windows, inclusive for sessions and
    /// sliding windows.
    pub end: i64,
}

/// A key together with the window its aggregate belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Windowed<K> {
    /// The record key.
    pub key: K,
    /// The window.
    pub window: Window,
}

/// Fixed-size windows: tumbling (advance = size, the default) or hopping
/// (advance < size, overlapping), with a grace period for out-of-order
/// records.
///
/// ```
/// use std::time::Duration;
/// use stream_dsl::windows::TimeWindows;
/// let w = TimeWindows::of_size(Duration::from_secs(60)).advance_by(Duration::from_secs(30));
/// assert_eq!(w.windows_for(70_000), vec![30_000, 60_000]);
/// let t = TimeWindows::of_size(Duration::from_secs(60));
/// assert_eq!(t.windows_for(70_000), vec![60_000]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindows {
    /// Window size (ms).
    pub size_ms: i64,
    /// Distance between window starts (ms).
    pub advance_ms: i64,
    /// How long after its end a window still accepts records (ms).
    pub grace_ms: i64,
    /// How long a window is kept in its store after its start (ms);
    /// at least `size + grace`.
    pub retention_ms: i64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl TimeWindows {
    /// Tumbling windows of `size` with no grace period (Kafka Streams'
    /// `ofSizeWithNoGrace`): a record is late once stream time has passed
    /// its window's end.
    pub fn of_size(size: Duration) -> Self {
        let size_ms = ms(size);
        TimeWindows {
            size_ms,
            advance_ms: size_ms,
            grace_ms: 0,
            retention_ms: size_ms,
        }
    }

    /// Hopping windows: a new window every `advance` (at most the size).
    pub fn advance_by(mut self, advance: Duration) -> Self {
        self.advance_ms = ms(advance).min(self.size_ms);
        self
    }

    /// Accepts out-of-order records up to `grace` after a window's end.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        self.retention_ms = self.retention_ms.max(self.size_ms + self.grace_ms);
        self
    }

    /// Keeps windows in the store for `retention` after their start (at
    /// least size + grace): longer lets interactive queries see closed
    /// windows.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention_ms = ms(retention).max(self.size_ms + self.grace_ms);
        self
    }

    /// Starts of the windows that contain `ts`, oldest first (Kafka
    /// Streams' `TimeWindows.windowsFor`).
    pub fn windows_for(&self, ts: i64) -> Vec<i64> {
        let first = (ts - self.size_ms + self.advance_ms).max(0);
        let mut start = first - first % self.advance_ms;
        let mut out = Vec::new();
        while start <= ts {
            out.push(start);
            start += self.advance_ms;
        }
        out
    }

    /// The window starting at `start`.
    pub fn window(&self, start: i64) -> Window {
        Window {
            start,
            end: start + self.size_ms,
        }
    }
}

/// Serializes a [`Windowed`] key as the inner key's bytes followed by the
/// window start (8 bytes, big-endian): Kafka Streams' time-windowed key
/// format, so a Java consumer with `TimeWindowedDeserializer` reads it. The
/// end is not written; reading needs the window size.
pub struct WindowedSerde<K> {
    inner: Arc<dyn Serde<K>>,
    size_ms: i64,
}

impl<K> WindowedSerde<K> {
    /// Wraps the key serde `inner` for windows of `size_ms`.
    pub fn new(inner: Arc<dyn Serde<K>>, size_ms: i64) -> Self {
        WindowedSerde { inner, size_ms }
    }
}

impl<K: 'static> Serde<Windowed<K>> for WindowedSerde<K> {
    fn identity(&self) -> String {
        format!("windowed({}, size={})", self.inner.identity(), self.size_ms)
    }
    fn serialize(&self, value: &Windowed<K>) -> Result<Vec<u8>, SerdeError> {
        let mut out = self.inner.serialize(&value.key)?;
        out.extend_from_slice(&value.window.start.to_be_bytes());
        Ok(out)
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<Windowed<K>, SerdeError> {
        if bytes.len() < 8 {
            return Err(SerdeError::Other(format!(
                "a windowed key needs at least 8 bytes, got {}",
                bytes.len()
            )));
        }
        let (key, start) = bytes.split_at(bytes.len() - 8);
        let mut be = [0u8; 8];
        be.copy_from_slice(start);
        let start = i64::from_be_bytes(be);
        Ok(Windowed {
            key: self.inner.deserialize(key)?,
            window: Window {
                start,
                end: start + self.size_ms,
            },
        })
    }
}

/// Session windows: a key's records closer than the inactivity gap to
/// each other form one session, `[first, last]` (both ends inclusive, as
/// Kafka Streams' `SessionWindow`); a record that bridges two sessions
/// merges them. A session accepts records until stream time passes its
/// the grace: a record whose merged session would end before
/// `stream time − grace` is late (Kafka Streams' rule).
///
/// ```
/// use std::time::Duration;
/// use stream_dsl::windows::SessionWindows;
/// let s = SessionWindows::with_inactivity_gap(Duration::from_secs(5)).grace(Duration::from_secs(1));
/// assert_eq!((s.gap_ms, s.grace_ms), (5_000, 1_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionWindows {
    /// Largest distance between two records of one session (ms).
    pub gap_ms: i64,
    /// How long after a session could last end it still accepts records (ms).
    pub grace_ms: i64,
}

impl SessionWindows {
    /// Sessions separated by more than `gap` of inactivity, no grace.
    pub fn with_inactivity_gap(gap: Duration) -> Self {
        SessionWindows {
            gap_ms: ms(gap),
            grace_ms: 0,
        }
    }

    /// Accepts out-of-order records up to `grace` late.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        self
    }
}

/// Sliding windows (Kafka Streams' `SlidingWindows`): for each record, the
/// windows `[t − difference, t]` ending at it and `[t + 1, t + 1 +
/// difference]` starting just after it, both ends inclusive, so that every
/// distinct set of records lying within `difference` of each other has
/// exactly one window. Only windows that hold records exist (unlike
/// hopping windows with a 1 ms advance). A window accepts records until
/// stream time passes its end + grace.
///
/// ```
/// use std::time::Duration;
/// use stream_dsl::windows::SlidingWindows;
/// let s = SlidingWindows::with_time_difference(Duration::from_secs(10)).grace(Duration::from_secs(2));
/// assert_eq!((s.difference_ms, s.grace_ms, s.retention_ms()), (10_000, 2_000, 22_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindows {
    /// Largest time difference between two records of one window (ms):
    /// the window size.
    pub difference_ms: i64,
    /// How long after its end a window still accepts records (ms).
    pub grace_ms: i64,
}

impl SlidingWindows {
    /// Windows of records at most `difference` apart, no grace (Kafka
    /// Streams' `ofTimeDifferenceWithNoGrace`).
    pub fn with_time_difference(difference: Duration) -> Self {
        SlidingWindows {
            difference_ms: ms(difference),
            grace_ms: 0,
        }
    }

    /// Accepts out-of-order records up to `grace` after a window's end.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// How long windows stay in the store after their start: two
    /// differences (a new record's left window is seeded from the window
    /// before it) plus the grace, as Kafka Streams keeps them.
    pub fn retention_ms(&self) -> i64 {
        self.difference_ms
            .saturating_mul(2)
            .saturating_add(self.grace_ms)
    }
}

/// The windows of [`KGroupedStream::windowed_by`](crate::KGroupedStream::windowed_by):
/// fixed (tumbling or hopping) or sliding; both convert into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeWindowing {
    /// Tumbling or hopping windows.
    Fixed(TimeWindows),
    /// Sliding windows.
    Sliding(SlidingWindows),
}

impl From<TimeWindows> for TimeWindowing {
    fn from(w: TimeWindows) -> Self {
        TimeWindowing::Fixed(w)
    }
}

impl From<SlidingWindows> for TimeWindowing {
    fn from(w: SlidingWindows) -> Self {
        TimeWindowing::Sliding(w)
    }
}

impl TimeWindowing {
    /// The window size (sliding: the time difference).
    pub fn size_ms(&self) -> i64 {
        match self {
            TimeWindowing::Fixed(w) => w.size_ms,
            TimeWindowing::Sliding(s) => s.difference_ms,
        }
    }

    /// How long windows stay in the store after their start.
    pub fn retention_ms(&self) -> i64 {
        match self {
            TimeWindowing::Fixed(w) => w.retention_ms,
            TimeWindowing::Sliding(s) => s.retention_ms(),
        }
    }

    /// How the store lays windows out: by time for fixed windows, by key
    /// (the session layout) for sliding ones, whose records each read
    /// their own key's windows.
    pub fn layout(&self) -> WindowLayout {
        match self {
            TimeWindowing::Fixed(w) => WindowLayout::Time { size_ms: w.size_ms },
            TimeWindowing::Sliding(_) => WindowLayout::Session,
        }
    }

    /// The windowed table's [`WindowSpec`].
    pub fn spec(&self) -> WindowSpec {
        match *self {
            TimeWindowing::Fixed(w) => WindowSpec::Time(w),
            TimeWindowing::Sliding(s) => WindowSpec::Sliding(s),
        }
    }
}

/// Which windows a windowed table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Tumbling or hopping windows.
    Time(TimeWindows),
    /// Session windows.
    Session(SessionWindows),
    /// Sliding windows.
    Sliding(SlidingWindows),
}

impl WindowSpec {
    /// How long after a window's end its final result is due: the grace,
    /// and for sessions the gap too (a session can still grow by the gap;
    /// Kafka Streams suppresses session windows for gap + grace).
    ///
    /// Sliding windows include their end, and Kafka Streams' aggregation
    /// still accepts a record when stream time equals `end + grace`; their
    /// final result is therefore due 1 ms later, so that it is final (Kafka
    /// Streams' suppression emits at `end + grace` and can emit a window
    /// twice when a record with that exact stream time follows).
    pub fn close_after_end(&self) -> i64 {
        match self {
            WindowSpec::Time(w) => w.grace_ms,
            WindowSpec::Session(s) => s.gap_ms.saturating_add(s.grace_ms),
            WindowSpec::Sliding(s) => s.grace_ms.saturating_add(1),
        }
    }

    /// For `describe()`: `tumbling 60000 ms, grace 0 ms` and the like.
    pub fn describe(&self) -> String {
        match self {
            WindowSpec::Time(w) if w.advance_ms == w.size_ms => {
                format!("tumbling {} ms, grace {} ms", w.size_ms, w.grace_ms)
            }
            WindowSpec::Time(w) => format!(
                "hopping {} ms, advance {} ms, grace {} ms",
                w.size_ms, w.advance_ms, w.grace_ms
            ),
            WindowSpec::Session(s) => {
                format!("session gap {} ms, grace {} ms", s.gap_ms, s.grace_ms)
            }
            WindowSpec::Sliding(s) => {
                format!("sliding {} ms, grace {} ms", s.difference_ms, s.grace_ms)
            }
        }
    }
}

/// Serializes a session-[`Windowed`] key as the key's bytes, the session's
/// end and its start (8 bytes each, big-endian): Kafka Streams'
/// `SessionWindowedSerializer` format.
pub struct SessionWindowedSerde<K> {
    inner: Arc<dyn Serde<K>>,
}

impl<K> SessionWindowedSerde<K> {
    /// Wraps the key serde `inner`.
    pub fn new(inner: Arc<dyn Serde<K>>) -> Self {
        SessionWindowedSerde { inner }
    }
}

fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_be_bytes(a)
}

impl<K: 'static> Serde<Windowed<K>> for SessionWindowedSerde<K> {
    fn identity(&self) -> String {
        format!("session-windowed({})", self.inner.identity())
    }
    fn serialize(&self, value: &Windowed<K>) -> Result<Vec<u8>, SerdeError> {
        let mut out = self.inner.serialize(&value.key)?;
        out.extend_from_slice(&value.window.end.to_be_bytes());
        out.extend_from_slice(&value.window.start.to_be_bytes());
        Ok(out)
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<Windowed<K>, SerdeError> {
        if bytes.len() < 16 {
            return Err(SerdeError::Other(format!(
                "a session-windowed key needs at least 16 bytes, got {}",
                bytes.len()
            )));
        }
        let (key, times) = bytes.split_at(bytes.len() - 16);
        Ok(Windowed {
            key: self.inner.deserialize(key)?,
            window: Window {
                start: be_i64(&times[8..]),
                end: be_i64(times),
            },
        })
    }
}

/// When a windowed table emits (Kafka Streams' `Suppressed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressed {
    /// One final result per window, once stream time passes the window's
    /// end + grace (`Suppressed.untilWindowCloses`). The pending results
    /// wait in a sled store, changelogged and restored.
    UntilWindowCloses,
}

impl Suppressed {
    /// Final results only.
    pub fn until_window_closes() -> Self {
        Suppressed::UntilWindowCloses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stream_core::serde::StringSerde;

    #[test]
    fn should_place_records_in_every_window_that_contains_them() {
        let w =
            TimeWindows::of_size(Duration::from_millis(10)).advance_by(Duration::from_millis(5));
        assert_eq!(w.windows_for(0), vec![0]);
        assert_eq!(w.windows_for(4), vec![0]);
        assert_eq!(w.windows_for(5), vec![0, 5]);
        assert_eq!(w.windows_for(12), vec![5, 10]);
        let t = TimeWindows::of_size(Duration::from_millis(10));
        assert_eq!(t.windows_for(9), vec![0]);
        assert_eq!(t.windows_for(10), vec![10]);
    }

    #[test]
    fn should_write_windowed_keys_as_kafka_streams_does() {
        let s = WindowedSerde::new(Arc::new(StringSerde), 60_000);
        let k = Windowed {
            key: "acme".to_string(),
            window: Window {
                start: 120_000,
                end: 180_000,
            },
        };
        let b = s.serialize(&k).unwrap();
        assert_eq!(&b[..4], b"acme");
        assert_eq!(&b[4..], &120_000i64.to_be_bytes());
        assert_eq!(s.deserialize(&b).unwrap(), k);
        assert!(s.deserialize(b"x").is_err());
    }
}
