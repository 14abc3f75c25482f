//! State stores.
//!
//! A processor sees a [`KeyValueStore`]. Behind it, each store of a task is a
//! stack of layers, outermost first:
//!
//! 1. **metering** ([`StoreMetrics`]): counts gets, puts and deletes;
//! 2. **change logging**: every put and delete is recorded, and the task
//!    turns the records into changelog records after each input record;
//! 3. **write buffer**: changes stay in memory until the task commits, so the
//!    durable copy never holds state that Kafka has not committed;
//! 4. **backend** ([`StateBackend`]): the durable copy of all stores of one
//!    task, written in one atomic batch together with the task's
//!    [`Checkpoint`] (sled on disk, or memory in tests).

mod backend;
pub mod global;
mod memory;
mod sled_backend;
pub mod window;

use std::collections::BTreeMap;

pub use backend::{Batch, Checkpoint, StateBackend};
pub use global::{GlobalStores, GlobalTree};
pub use memory::MemoryBackend;
pub use sled_backend::{SledBackend, StateDir, DEFAULT_CACHE_BYTES};

use crate::error::StoreError;

/// A key-value store as processors use it: bytes in, bytes out.
pub trait KeyValueStore {
    /// The value stored under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `value` under `key`.
    fn put(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError>;
    /// Removes `key`.
    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError>;
    /// All entries whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError>;
    /// Entries with `from <= key < to`, in key order.
    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError>;
}

/// One recorded state change: key, and value (`None` = deleted).
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// Operation counters of one store partition.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreMetrics {
    /// `get` calls.
    pub gets: u64,
    /// `put` calls.
    pub puts: u64,
    /// `delete` calls.
    pub deletes: u64,
}

/// The in-memory layers of one store.
#[derive(Default)]
struct Layers {
    name: String,
    logged: bool,
    buffer: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    changes: Vec<Change>,
    metrics: StoreMetrics,
}

/// All stores of one task over their shared backend.
pub struct StoreSet {
    layers: Vec<Layers>,
    backend: Box<dyn StateBackend>,
}

impl StoreSet {
    /// Stores named `names` (with whether each is change-logged) over `backend`.
    pub fn new(names: Vec<(String, bool)>, backend: Box<dyn StateBackend>) -> Self {
        let layers = names
            .into_iter()
            .map(|(name, logged)| Layers {
                name,
                logged,
                ..Default::default()
            })
            .collect();
        StoreSet { layers, backend }
    }

    /// Index of a store by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.name == name)
    }

    /// Names of the stores, by index.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.layers.iter().map(|l| l.name.as_str())
    }

    /// A view of one store through all its layers.
    pub fn view(&mut self, idx: usize) -> StoreView<'_> {
        StoreView { idx, set: self }
    }

    /// Takes the changes recorded since the last call, per store index.
    pub fn take_changes(&mut self) -> Vec<(usize, Vec<Change>)> {
        self.layers
            .iter_mut()
            .enumerate()
            .filter(|(_, l)| !l.changes.is_empty())
            .map(|(i, l)| (i, std::mem::take(&mut l.changes)))
            .collect()
    }

    /// Writes a change straight into the write buffer without logging it
    /// (used by restore: the change came from the changelog).
    pub fn apply_restored(&mut self, idx: usize, key: Vec<u8>, value: Option<Vec<u8>>) {
        if let Some(l) = self.layers.get_mut(idx) {
            l.buffer.insert(key, value);
        }
    }

    /// Number of buffered (uncommitted) entries over all stores.
    pub fn buffered(&self) -> usize {
        self.layers.iter().map(|l| l.buffer.len()).sum()
    }

    /// Writes every buffered change and `checkpoint` to the backend in one
    /// atomic batch, then empties the buffers.
    pub fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let batches: Vec<Batch> = self
            .layers
            .iter()
            .map(|l| {
                l.buffer
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .collect();
        self.backend.commit(&batches, checkpoint)?;
        for l in &mut self.layers {
            l.buffer.clear();
        }
        Ok(())
    }

    /// Like [`commit`](Self::commit) for restored entries (see
    /// [`StateBackend::commit_restored`]).
    pub fn commit_restored(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let batches: Vec<Batch> = self
            .layers
            .iter_mut()
            .map(|l| std::mem::take(&mut l.buffer).into_iter().collect())
            .collect();
        self.backend.commit_restored(&batches, checkpoint)
    }

    /// Forgets buffered changes (the task is closed without committing).
    pub fn discard_uncommitted(&mut self) {
        for l in &mut self.layers {
            l.buffer.clear();
            l.changes.clear();
        }
    }

    /// The checkpoint of the last commit, if any.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.backend.checkpoint()
    }

    /// Empties the durable copy (before a full restore).
    pub fn wipe(&mut self) -> Result<(), StoreError> {
        self.discard_uncommitted();
        self.backend.wipe()
    }

    /// Entries of store `idx` in its durable copy (as of the last commit).
    pub fn committed_len(&self, idx: usize) -> u64 {
        self.backend.len(idx).unwrap_or(0)
    }

    /// Metrics of a store.
    pub fn metrics(&self, idx: usize) -> StoreMetrics {
        self.layers.get(idx).map(|l| l.metrics).unwrap_or_default()
    }

    /// The value under `key` as the task sees it (its buffered changes
    /// over the durable copy), without counting a read.
    pub fn get(&self, idx: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.layers.get(idx).and_then(|l| l.buffer.get(key)) {
            return Ok(v.clone());
        }
        self.backend.get(idx, key)
    }

    /// Entries whose key starts with `prefix`, buffered changes merged in, in key order.
    pub fn scan_prefix(
        &self,
        idx: usize,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            self.backend.scan_prefix(idx, prefix)?.into_iter().collect();
        if let Some(l) = self.layers.get(idx) {
            for (k, v) in l.buffer.range(prefix.to_vec()..) {
                if !k.starts_with(prefix) {
                    break;
                }
                match v {
                    Some(v) => merged.insert(k.clone(), v.clone()),
                    None => merged.remove(k),
                };
            }
        }
        Ok(merged.into_iter().collect())
    }

    /// Entries with `from <= key < to`, buffered changes merged in, in key order.
    pub fn range(
        &self,
        idx: usize,
        from: &[u8],
        to: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            self.backend.range(idx, from, to)?.into_iter().collect();
        if let Some(l) = self.layers.get(idx) {
            for (k, v) in l.buffer.range(from.to_vec()..to.to_vec()) {
                match v {
                    Some(v) => merged.insert(k.clone(), v.clone()),
                    None => merged.remove(k),
                };
            }
        }
        Ok(merged.into_iter().collect())
    }

    /// Committed entries of a store plus its buffered changes, in key order.
    pub fn entries(&self, idx: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.scan_prefix(idx, &[])
    }
}

/// One store seen through its layers; what [`Context::store`](crate::processor::Context::store) returns.
pub struct StoreView<'a> {
    idx: usize,
    set: &'a mut StoreSet,
}

impl KeyValueStore for StoreView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.set.get(self.idx, key)
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let l = &mut self.set.layers[self.idx];
        l.metrics.puts += 1;
        if l.logged {
            l.changes.push((key.to_vec(), Some(value.clone())));
        }
        l.buffer.insert(key.to_vec(), Some(value));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        let l = &mut self.set.layers[self.idx];
        l.metrics.deletes += 1;
        if l.logged {
            l.changes.push((key.to_vec(), None));
        }
        l.buffer.insert(key.to_vec(), None);
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.set.scan_prefix(self.idx, prefix)
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.set.range(self.idx, from, to)
    }
}

impl StoreView<'_> {
    /// Counts a read (metering layer); `get` itself takes `&self`.
    pub fn get_counted(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.set.layers[self.idx].metrics.gets += 1;
        self.get(key)
    }
}
