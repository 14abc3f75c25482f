//! The closure types the operators keep, named once.

use std::sync::Arc;

/// Picks a key from a record: `group_by`'s and the global joins' selector.
pub(crate) type KeySelector<K, V, GK> = Arc<dyn Fn(&K, &V) -> GK + Send + Sync>;

/// Encodes an aggregate of a key into the bytes of an existing topic.
pub(crate) type EncodeFn<K, A> = Arc<dyn Fn(&K, &A) -> Vec<u8> + Send + Sync>;

/// Decodes an aggregate of a key from the bytes of an existing topic
/// (`None`: the bytes hold no aggregate).
pub(crate) type DecodeFn<K, A> = Arc<dyn Fn(&K, &[u8]) -> Option<A> + Send + Sync>;

/// Joins two sides' optional values: `None` when the join has no row for them.
pub(crate) type PairJoin<A, B, R> = Arc<dyn Fn(Option<&A>, Option<&B>) -> Option<R> + Send + Sync>;
