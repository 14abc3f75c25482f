//! Interactive queries: reading a store of a running instance by key or
//! prefix, and finding the instance that owns a key it does not.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::graph::{StoreFormat, Topology};
use crate::partitioner::partition_for_key;
use crate::serde::DynSerde;
use crate::task::TaskId;

/// Where a key of a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLocation {
    /// The task holding the key.
    pub task: TaskId,
    /// The source topic whose partition decides the task.
    pub topic: String,
}

/// Why a query could not be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// No store of that name in the topology.
    UnknownStore(String),
    /// The key cannot be encoded with the store's key serde.
    BadKey(String),
    /// The stream thread held the state longer than the query waits
    /// (a restore in progress, usually).
    Busy,
}

/// Encodes a key typed in a URL for `format`'s key serde: the text's UTF-8
/// bytes if the serde reads them back unchanged (strings, JSON), else the
/// text as a 64-bit integer (Kafka's `LongSerde` layout).
pub fn encode_key(format: Option<&StoreFormat>, text: &str) -> Result<Vec<u8>, QueryError> {
    let Some(f) = format else {
        return Ok(text.as_bytes().to_vec());
    };
    let mut candidates = vec![text.as_bytes().to_vec()];
    if let Ok(n) = text.parse::<i64>() {
        candidates.push(n.to_be_bytes().to_vec());
    }
    candidates
        .into_iter()
        .find(|bytes| round_trips(f.key.as_ref(), bytes))
        .ok_or_else(|| {
            QueryError::BadKey(format!(
                "`{text}` is not a valid key for this store's key serde"
            ))
        })
}

fn round_trips(serde: &dyn DynSerde, bytes: &[u8]) -> bool {
    serde
        .deserialize_dyn(bytes)
        .and_then(|v| serde.serialize_dyn(&v))
        .is_ok_and(|b| b == bytes)
}

/// Renders stored bytes as JSON: decoded with the serde when the type is a
/// plain one (strings, integers, floats, booleans, JSON), else as JSON text,
/// UTF-8 text or hex, in that order of preference.
pub fn render(serde: Option<&Arc<dyn DynSerde>>, bytes: &[u8]) -> Value {
    if let Some(v) = serde.and_then(|s| s.deserialize_dyn(bytes).ok()) {
        if let Some(v) = crate::serde::to_json(&v) {
            return v;
        }
    }
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return v;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "hex": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
    }
}

/// The task that holds `key` of `store`: its sub-topology, and the
/// partition of its first source topic the key hashes to (murmur2, as the
/// repartition topics and Java producers partition).
pub fn locate(
    topology: &Topology,
    application_id: &str,
    partitions: &HashMap<String, i32>,
    layout: crate::task::TaskLayout,
    store: &str,
    key: &[u8],
) -> Result<KeyLocation, QueryError> {
    let st = topology
        .subtopologies()
        .iter()
        .find(|st| st.stores.iter().any(|s| s == store))
        .ok_or_else(|| QueryError::UnknownStore(store.to_string()))?;
    let topic = st
        .sources
        .first()
        .map(|t| t.resolve(application_id))
        .ok_or_else(|| QueryError::UnknownStore(store.to_string()))?;
    let count = partitions.get(&topic).copied().unwrap_or(1);
    let partition = layout.task_of(partition_for_key(key, count));
    Ok(KeyLocation {
        task: TaskId {
            subtopology: st.id,
            partition,
        },
        topic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serde::{erase, I64Serde, StringSerde};

    fn format_of_string_to_i64() -> StoreFormat {
        StoreFormat {
            key: erase::<String>(Arc::new(StringSerde)),
            value: erase::<i64>(Arc::new(I64Serde)),
        }
    }

    #[test]
    fn should_encode_keys_for_the_store_serde() {
        let f = format_of_string_to_i64();
        assert_eq!(encode_key(Some(&f), "Acme Ltd").unwrap(), b"Acme Ltd");
        let longs = StoreFormat {
            key: erase::<i64>(Arc::new(I64Serde)),
            value: f.value.clone(),
        };
        assert_eq!(encode_key(Some(&longs), "42").unwrap(), 42i64.to_be_bytes());
        assert!(matches!(
            encode_key(Some(&longs), "x"),
            Err(QueryError::BadKey(_))
        ));
    }

    #[test]
    fn should_render_values_by_type_then_by_content() {
        let f = format_of_string_to_i64();
        assert_eq!(render(Some(&f.value), &7i64.to_be_bytes()), json!(7));
        assert_eq!(render(None, br#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(render(None, b"plain"), json!("plain"));
        assert_eq!(render(None, &[0xff, 0x00]), json!({"hex": "ff00"}));
    }
}
