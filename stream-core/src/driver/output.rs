//! What the driver shows of a run: topics' records, dead letters, stores.

use std::collections::BTreeMap;

use super::{StoredRecord, TestDriver};
use crate::graph::{dead_letter_topic_name, TopicRef};
use crate::task::Task;

impl TestDriver {
    /// Every record in `topic`, partition by partition.
    pub fn records(&self, topic: &str) -> Vec<StoredRecord> {
        self.topics
            .get(topic)
            .map(|ps| ps.iter().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// The records of one partition of `topic`, by offset.
    pub fn records_of(&self, topic: &str, partition: i32) -> Vec<StoredRecord> {
        self.topics
            .get(topic)
            .and_then(|ps| ps.get(partition as usize))
            .cloned()
            .unwrap_or_default()
    }

    /// Key and value of every record in `topic` as UTF-8 (lossy).
    pub fn output_utf8(&self, topic: &str) -> Vec<(String, String)> {
        self.records(topic)
            .into_iter()
            .map(|r| {
                (
                    String::from_utf8_lossy(&r.key.unwrap_or_default()).into_owned(),
                    String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }

    /// The latest value per key of `topic`, as a compacted topic would keep it.
    pub fn latest_per_key(&self, topic: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut m = BTreeMap::new();
        for r in self.records(topic) {
            match r.value {
                Some(v) => m.insert(r.key.unwrap_or_default(), v),
                None => m.remove(&r.key.unwrap_or_default()),
            };
        }
        m
    }

    /// The records parked in the dead-letter topic.
    pub fn dead_letters(&self) -> Vec<StoredRecord> {
        self.records(&dead_letter_topic_name(self.app()))
    }

    /// All entries of a store across its tasks, committed and buffered.
    pub fn store_entries(&self, store: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut m = BTreeMap::new();
        for t in self.tasks.values() {
            if let Some(i) = t.stores().index_of(store) {
                if let Ok(es) = t.stores().entries(i) {
                    m.extend(es);
                }
            }
        }
        m
    }

    /// The input records behind `key`'s value in `store`, oldest first
    /// (lineage on: [`with_lineage`](Self::with_lineage)).
    pub fn lineage(&self, store: &str, key: &[u8]) -> Vec<crate::task::lineage::LineageEntry> {
        self.store_entries(&crate::task::lineage::companion_name(store))
            .get(key)
            .and_then(|v| crate::task::lineage::decode(v))
            .unwrap_or_default()
    }

    /// The resolved name of an internal topic suffix for this application.
    pub fn internal_topic(&self, suffix: &str) -> String {
        TopicRef::Internal(suffix.to_string()).resolve(self.app())
    }

    /// The tasks, for inspection.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }
}
