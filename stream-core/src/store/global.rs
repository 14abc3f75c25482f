//! Global tables' stores: every row of a topic, shared by all tasks of an
//! instance, written only by the instance's global reader
//! ([`crate::runtime`]'s `global` module, or the test driver) and read by
//! processors through [`Context::global_store`](crate::Context::global_store).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use super::buckets::BucketTree;
use crate::error::StoreError;

/// The rows of one global table: a sled tree, or memory in the test driver.
#[derive(Clone)]
pub struct GlobalTree(Rows);

#[derive(Clone)]
enum Rows {
    /// On disk, in sorted runs ([`BucketTree`]), with the offsets read so
    /// far in a second tree: `partition (4 bytes)` → next offset (8 bytes),
    /// big-endian.
    Sled {
        rows: BucketTree,
        offsets: sled::Tree,
    },
    /// In memory.
    Memory(Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>),
}

fn sled_err(store: &str, source: sled::Error) -> StoreError {
    StoreError::Sled {
        store: store.to_string(),
        source,
    }
}

fn poisoned(store: &str) -> StoreError {
    StoreError::Damaged {
        store: store.to_string(),
        reason: "a writer panicked while holding the global table".into(),
    }
}

impl GlobalTree {
    /// An empty in-memory table.
    pub fn memory() -> Self {
        GlobalTree(Rows::Memory(Arc::default()))
    }

    /// A table kept in sled: `rows` bucketed, `offsets` by partition.
    pub(crate) fn sled(rows: BucketTree, offsets: sled::Tree) -> Self {
        GlobalTree(Rows::Sled { rows, offsets })
    }

    /// The row of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.0 {
            Rows::Sled { rows, .. } => rows.get(key),
            Rows::Memory(m) => Ok(m.read().map_err(|_| poisoned("global"))?.get(key).cloned()),
        }
    }

    /// Upserts (`Some`) or deletes (`None`) the row of `key`.
    pub fn apply(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        self.apply_all(&[(key, value)])
    }

    /// Upserts (`Some`) or deletes (`None`) rows, the last change of a key
    /// winning; one write per run of rows on disk, so the global reader
    /// hands over what one poll read.
    pub fn apply_all(&self, changes: &[(&[u8], Option<&[u8]>)]) -> Result<(), StoreError> {
        match &self.0 {
            Rows::Sled { rows, .. } => rows.apply(changes, &mut 0),
            Rows::Memory(m) => {
                let mut m = m.write().map_err(|_| poisoned("global"))?;
                for (key, value) in changes {
                    match value {
                        Some(v) => m.insert(key.to_vec(), v.to_vec()),
                        None => m.remove(*key),
                    };
                }
                Ok(())
            }
        }
    }

    /// Removes every row (and the offsets read).
    pub fn clear(&self) -> Result<(), StoreError> {
        match &self.0 {
            Rows::Sled { rows, offsets } => {
                rows.clear()?;
                offsets.clear().map_err(|e| sled_err("global", e))
            }
            Rows::Memory(m) => {
                m.write().map_err(|_| poisoned("global"))?.clear();
                Ok(())
            }
        }
    }

    /// Number of rows (on disk: read from every run; 0 if one does not
    /// decode).
    pub fn len(&self) -> usize {
        match &self.0 {
            Rows::Sled { rows, .. } => rows.count().map_or(0, |n| n as usize),
            Rows::Memory(m) => m.read().map(|m| m.len()).unwrap_or(0),
        }
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next offset to read of `partition` (`None`: from the start).
    pub fn offset(&self, partition: i32) -> Result<Option<i64>, StoreError> {
        match &self.0 {
            Rows::Sled { offsets, .. } => Ok(offsets
                .get(partition.to_be_bytes())
                .map_err(|e| sled_err("global", e))?
                .and_then(|v| v.as_ref().try_into().ok().map(i64::from_be_bytes))),
            Rows::Memory(_) => Ok(None),
        }
    }

    /// Records that `partition` was read up to `next` (exclusive).
    pub fn set_offset(&self, partition: i32, next: i64) -> Result<(), StoreError> {
        match &self.0 {
            Rows::Sled { offsets, .. } => offsets
                .insert(partition.to_be_bytes(), &next.to_be_bytes())
                .map(|_| ())
                .map_err(|e| sled_err("global", e)),
            Rows::Memory(_) => Ok(()),
        }
    }
}

/// The global tables of an instance, by store name.
#[derive(Clone, Default)]
pub struct GlobalStores(Arc<HashMap<String, GlobalTree>>);

impl GlobalStores {
    /// The given tables.
    pub fn new(trees: HashMap<String, GlobalTree>) -> Self {
        GlobalStores(Arc::new(trees))
    }

    /// The table of `store`.
    pub fn get(&self, store: &str) -> Option<&GlobalTree> {
        self.0.get(store)
    }

    /// Every table, by store name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &GlobalTree)> {
        self.0.iter()
    }
}
