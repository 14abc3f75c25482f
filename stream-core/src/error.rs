//! Typed errors, one enum per layer.
//!
//! Errors that cross a crate boundary are never a catch-all: a failed
//! deserialization names its topic, partition and offset; a store failure
//! names its store; a Kafka failure names the operation that failed.

use thiserror::Error;

/// A value could not be turned into bytes or back.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum SerdeError {
    /// The bytes are not valid UTF-8.
    #[error("invalid UTF-8: {0}")]
    Utf8(String),
    /// The bytes are not the JSON the serde expects.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The bytes have the wrong length for a fixed-width type.
    #[error("expected {expected} bytes, found {found}")]
    Length {
        /// The width the type needs.
        expected: usize,
        /// The width that arrived.
        found: usize,
    },
    /// Any other reason, described.
    #[error("{0}")]
    Other(String),
}

/// Where a record came from: the coordinates a person needs to find it again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.topic, self.partition, self.offset)
    }
}

/// A failed deserialization, with the record's coordinates.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("cannot deserialize the {part} of {origin}: {source}")]
pub struct DeserializationError {
    /// The record that failed.
    pub origin: Origin,
    /// `"key"` or `"value"`.
    pub part: &'static str,
    /// Why.
    pub source: SerdeError,
}

/// A state store operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The sled database reported an error.
    #[error("store {store}: sled: {source}")]
    Sled {
        /// The store.
        store: String,
        /// sled's error.
        source: sled::Error,
    },
    /// A processor asked for a store it did not declare.
    #[error("processor asked for store `{0}`, which is not connected to it")]
    Unknown(String),
    /// The local copy does not match its checkpoint and must be rebuilt.
    #[error("store {store}: local state is damaged: {reason}")]
    Damaged {
        /// The store.
        store: String,
        /// What did not match.
        reason: String,
    },
    /// The state directory cannot be used.
    #[error("state directory {path}: {reason}")]
    StateDir {
        /// The directory.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A write through a read-only view (interactive queries).
    #[error("the store is read-only here")]
    ReadOnly,
}

/// A processor could not handle a record.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// A value could not be (de)serialized inside the topology.
    #[error(transparent)]
    Serde(#[from] SerdeError),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A node received a value of another type than it was built for
    /// (a bug in the topology's construction, not in the data).
    #[error("type mismatch at {node}: expected {expected}, found {found}")]
    TypeMismatch {
        /// The node.
        node: String,
        /// The type it was built for.
        expected: &'static str,
        /// The type it received.
        found: &'static str,
    },
    /// User code reported a failure.
    #[error("{0}")]
    User(String),
    /// The record is older than every window it belongs to allows (window
    /// end + grace at or before stream time): it was not aggregated. Kept:
    /// counted, and dead-lettered with the window and stream time unless
    /// the late-record policy is log-only.
    #[error("late record at {timestamp} ms for window [{window_start}, {window_end}) of {node}: stream time {stream_time} ms is past its end + grace {grace_ms} ms")]
    Late {
        /// The node that dropped it.
        node: String,
        /// The record's timestamp.
        timestamp: i64,
        /// Start of the (last) window it belonged to.
        window_start: i64,
        /// End of that window (exclusive).
        window_end: i64,
        /// The task's stream time when it arrived.
        stream_time: i64,
        /// The window's grace period.
        grace_ms: i64,
    },
}

/// The topology cannot be built as declared.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum TopologyError {
    /// Two nodes or stores share a name.
    #[error("the name `{0}` is used twice in the topology")]
    DuplicateName(String),
    /// A node refers to a store that was never added.
    #[error("node `{node}` uses store `{store}`, which does not exist")]
    UnknownStore {
        /// The node.
        node: String,
        /// The missing store.
        store: String,
    },
    /// A node refers to a parent that does not exist.
    #[error("node `{node}` names parent `{parent}`, which does not exist")]
    UnknownParent {
        /// The node.
        node: String,
        /// The missing parent.
        parent: String,
    },
    /// A serde is needed and none is known.
    #[error("{0}")]
    MissingSerde(String),
    /// Operators combined in a way that cannot run (the message says why).
    #[error("{0}")]
    Invalid(String),
    /// The topology has no source.
    #[error("the topology has no source")]
    Empty,
}
