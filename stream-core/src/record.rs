//! Records as processors see them.

use crate::data::{clone_dyn, DynData};

/// Record headers: name and raw bytes, in order.
pub type Headers = Vec<(String, Vec<u8>)>;

/// A record inside the processor graph: deserialized key and value plus
/// timestamp and headers. Where it came from (topic, partition, offset) is
/// on the [`Context`](crate::processor::Context) while it is processed.
pub struct Record {
    /// The key.
    pub key: DynData,
    /// The value.
    pub value: DynData,
    /// Event time in milliseconds since the epoch.
    pub timestamp: i64,
    /// Headers, carried from the source record unless a processor changes them.
    pub headers: Headers,
}

impl Record {
    /// A record with the given key, value and timestamp and no headers.
    pub fn new(key: DynData, value: DynData, timestamp: i64) -> Self {
        Record {
            key,
            value,
            timestamp,
            headers: Vec::new(),
        }
    }

    /// A deep copy (the key and value are cloned through their own type).
    pub fn duplicate(&self) -> Record {
        Record {
            key: clone_dyn(&self.key),
            value: clone_dyn(&self.value),
            timestamp: self.timestamp,
            headers: self.headers.clone(),
        }
    }
}

/// A record on its way out of a task, already in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    /// Destination topic (fully resolved name), shared with the sink or
    /// store that writes to it rather than copied for every record.
    pub topic: std::sync::Arc<str>,
    /// Explicit partition, or `None` to let the producer's partitioner decide.
    pub partition: Option<i32>,
    /// Key bytes; `None` is a null key.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Headers,
    /// Timestamp in milliseconds.
    pub timestamp: i64,
    /// Why the record is produced.
    pub kind: OutKind,
}

/// What an [`OutRecord`] is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutKind {
    /// Output of a sink node (user topic or repartition topic).
    Sink,
    /// A state change of the named store (the name shared, not copied per record).
    Changelog(std::sync::Arc<str>),
    /// A record that failed and is parked in the dead-letter topic.
    DeadLetter,
}
