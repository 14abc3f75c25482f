//! Record lineage: for every key of a logged store, the input coordinates
//! (topic, partition, offset, timestamp) of the last N updates that
//! produced its value — for the watchlist, which registrations made a
//! company's count.
//!
//! Off by default (`StreamsConfig::lineage_depth` = 0). When on, each
//! logged store gets a companion store `<store>.lineage` in the same task
//! (sled on disk, like the store), and every changelog record of the store
//! carries the key's list in header `sx.lin`: compaction keeps a key's
//! latest record, so a restore brings the whole list back with the value.
//!
//! The coordinates are those of the application's own input: a record
//! that came through a repartition topic is traced to the upstream input
//! named by its `sx.up` mark; its timestamp is the record's (kept through
//! the repartition). Stores updated by punctuation (window expiry,
//! emit-final) get no entry for that update.
//!
//! Encoding (header and stored value alike): per entry, newest last,
//! offset (8 bytes), partition (4), timestamp (8), topic length (2), topic.

use serde::Serialize;

/// The lineage lists of one input record's changes, by (store index, key):
/// what each changelog record carries in its `sx.lin` header.
pub(crate) type ChangeLineage = std::collections::HashMap<(usize, Vec<u8>), Vec<u8>>;

/// Header carrying a key's lineage on its changelog records.
pub const LINEAGE_HEADER: &str = "sx.lin";

/// Suffix of a store's companion lineage store.
pub const LINEAGE_SUFFIX: &str = ".lineage";

/// The name of `store`'s lineage store.
pub fn companion_name(store: &str) -> String {
    format!("{store}{LINEAGE_SUFFIX}")
}

/// One input record behind an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineageEntry {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// Record timestamp (ms).
    pub timestamp: i64,
}

/// Appends the encoding of `e` to `out`.
fn put(out: &mut Vec<u8>, e: &LineageEntry) {
    let topic = &e.topic.as_bytes()[..e.topic.len().min(u16::MAX as usize)];
    out.extend_from_slice(&e.offset.to_be_bytes());
    out.extend_from_slice(&e.partition.to_be_bytes());
    out.extend_from_slice(&e.timestamp.to_be_bytes());
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic);
}

/// Encodes a list (newest last).
pub fn encode(entries: &[LineageEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 40);
    for e in entries {
        put(&mut out, e);
    }
    out
}

/// Decodes a list; `None` if the bytes are not one.
pub fn decode(mut b: &[u8]) -> Option<Vec<LineageEntry>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 22 {
            return None;
        }
        let offset = i64::from_be_bytes(b[0..8].try_into().ok()?);
        let partition = i32::from_be_bytes(b[8..12].try_into().ok()?);
        let timestamp = i64::from_be_bytes(b[12..20].try_into().ok()?);
        let len = u16::from_be_bytes(b[20..22].try_into().ok()?) as usize;
        let topic = std::str::from_utf8(b.get(22..22 + len)?).ok()?.to_string();
        out.push(LineageEntry {
            topic,
            partition,
            offset,
            timestamp,
        });
        b = &b[22 + len..];
    }
    Some(out)
}

/// `existing` with `entry` appended, keeping the newest `depth` entries.
pub(crate) fn append(existing: Option<&[u8]>, entry: &LineageEntry, depth: usize) -> Vec<u8> {
    let mut list = existing.and_then(decode).unwrap_or_default();
    // Replaying an input already recorded (at-least-once) adds nothing.
    if list.last() == Some(entry) {
        return encode(&list);
    }
    list.push(entry.clone());
    let drop = list.len().saturating_sub(depth);
    encode(&list[drop..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(offset: i64) -> LineageEntry {
        LineageEntry {
            topic: "new_users".into(),
            partition: 1,
            offset,
            timestamp: 1000 + offset,
        }
    }

    #[test]
    fn should_keep_the_newest_entries_up_to_the_depth() {
        let mut b = append(None, &e(1), 2);
        b = append(Some(&b), &e(2), 2);
        b = append(Some(&b), &e(3), 2);
        assert_eq!(decode(&b), Some(vec![e(2), e(3)]));
        // A replay of the newest input is not recorded twice.
        let again = append(Some(&b), &e(3), 2);
        assert_eq!(decode(&again), Some(vec![e(2), e(3)]));
        assert_eq!(decode(&[1, 2, 3]), None);
    }
}
