//! [`Change`]: what a table's node forwards — a row's new value and the
//! value it replaces (Kafka Streams' `Change`, always with old values).

/// A change of one table row: the value after (`None`: the row was
/// deleted) and the value before (`None`: the row is new). Table operators
/// use the old value to forward exact tombstones: a filtered table deletes
/// a row only when the row matched before.
///
/// ```
/// use stream_dsl::change::Change;
/// let c = Change::new(Some(3), Some(2));
/// assert_eq!(c.map(|n| n * 10), Change::new(Some(30), Some(20)));
/// assert!(Change::<i64>::new(None, None).is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<V> {
    /// The row's value after the change; `None` when it was deleted.
    pub new: Option<V>,
    /// The row's value before the change; `None` when it did not exist.
    pub old: Option<V>,
}

impl<V> Change<V> {
    /// A change from `old` to `new`.
    pub fn new(new: Option<V>, old: Option<V>) -> Self {
        Change { new, old }
    }

    /// Whether the change has neither value (nothing to forward).
    pub fn is_empty(&self) -> bool {
        self.new.is_none() && self.old.is_none()
    }

    /// Maps both values.
    pub fn map<W>(self, f: impl Fn(V) -> W) -> Change<W> {
        Change {
            new: self.new.map(&f),
            old: self.old.map(&f),
        }
    }
}
