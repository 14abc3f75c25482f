//! An in-memory backend, for the test driver and stores that need no disk.

use std::collections::BTreeMap;

use super::{Batch, Checkpoint, StateBackend};
use crate::error::StoreError;

/// Keeps every store in a `BTreeMap`; lost with the process.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    stores: Vec<BTreeMap<Vec<u8>, Vec<u8>>>,
    checkpoint: Option<Checkpoint>,
}

impl MemoryBackend {
    /// A backend for `stores` stores.
    pub fn new(stores: usize) -> Self {
        MemoryBackend {
            stores: vec![BTreeMap::new(); stores],
            checkpoint: None,
        }
    }
}

impl StateBackend for MemoryBackend {
    fn get(&self, store: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.stores.get(store).and_then(|s| s.get(key).cloned()))
    }

    fn scan_prefix(&self, store: usize, prefix: &[u8]) -> Result<super::Entries, StoreError> {
        Ok(self
            .stores
            .get(store)
            .map(|s| {
                s.range(prefix.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn range(&self, store: usize, from: &[u8], to: &[u8]) -> Result<super::Entries, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self
            .stores
            .get(store)
            .map(|s| {
                s.range(from.to_vec()..to.to_vec())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn commit(&mut self, batches: &[Batch], checkpoint: &Checkpoint) -> Result<(), StoreError> {
        for (i, batch) in batches.iter().enumerate() {
            if let Some(s) = self.stores.get_mut(i) {
                for (k, v) in batch {
                    match v {
                        Some(v) => s.insert(k.clone(), v.clone()),
                        None => s.remove(k),
                    };
                }
            }
        }
        self.checkpoint = Some(checkpoint.clone());
        Ok(())
    }

    fn checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self.checkpoint.clone())
    }

    fn wipe(&mut self) -> Result<(), StoreError> {
        for s in &mut self.stores {
            s.clear();
        }
        self.checkpoint = None;
        Ok(())
    }

    fn len(&self, store: usize) -> Result<u64, StoreError> {
        Ok(self.stores.get(store).map(|s| s.len() as u64).unwrap_or(0))
    }
}
