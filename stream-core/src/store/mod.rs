//! State stores.
//!
//! A processor sees a [`KeyValueStore`]. Behind it, each store of a task is a
//! stack of layers, outermost first:
//!
//! 1. **metering** ([`StoreMetrics`]): counts gets, puts and deletes;
//! 2. **change logging**: every put and delete is recorded, and the task
//!    turns the records into changelog records after each input record;
//! 3. **write buffer**: changes stay in memory until the task commits, so the
//!    durable copy never holds state that Kafka has not committed. A
//!    commit first *seals* the buffer (it moves to a sealed layer and a
//!    fresh buffer takes new changes); once everything produced before the
//!    seal is acknowledged the sealed layer becomes the *writing* layer,
//!    which the state writer thread writes to the backend while processing
//!    goes on; reads see the buffer, then the sealed layer, then the
//!    writing layer, then the backend;
//!    Restore writes the entries it reads into a hash table instead
//!    (restored entries, `restored.rs`: keys and values in large chunks of
//!    bytes), since a changelog holds each key many times and nothing reads
//!    the store until restore hands it over: one hash lookup per record.
//!    A write of restored entries hands the table itself to the backend
//!    ([`RestoredBatch`]), which reads answer from until it is written:
//!    mid-way through a restore unsorted (the writer sorts), at its end
//!    sorted first, as processing reads it by range;
//! 4. **backend** ([`StateBackend`]): the durable copy of all stores of one
//!    task, written in one atomic batch together with the task's
//!    [`Checkpoint`] (sled on disk, or memory in tests). In sled, a Bloom
//!    filter per store answers reads of keys it never held
//!    (`key_filter.rs`).

mod backend;
mod buckets;
pub mod global;
mod key_filter;
mod memory;
mod restored;
pub(crate) mod robin_hood;
pub(crate) use restored::prefetch;
pub(crate) use restored::Mark;
#[cfg(test)]
pub(crate) use restored::RestoredEntries;
pub use restored::{RestoredBatch, SortedEntries};
mod sled_backend;
pub mod window;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use backend::{Batch, Changes, Checkpoint, PendingCommit, StateBackend};
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
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError>;
    /// Entries with `from <= key < to`, in key order.
    fn range(&self, from: &[u8], to: &[u8]) -> Result<Entries, StoreError>;
}

/// Entries read from a store, key and value, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

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

/// Pending changes of one store, by key (`None` deletes).
type Pending = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The in-memory layers of one store.
#[derive(Default)]
struct Layers {
    name: String,
    logged: bool,
    buffer: Pending,
    /// Changes of a commit in flight: sealed, not yet written.
    sealed: Pending,
    /// Entries read by restore, not yet handed to the backend (empty
    /// whenever the task processes).
    restored: restored::RestoredEntries,
    changes: Vec<Change>,
    metrics: StoreMetrics,
}

/// What a write in flight writes, readable until it is written.
enum Writing {
    /// A commit's changes per store (or restored entries merged into a
    /// write buffer that held changes).
    Sorted(Arc<Changes>),
    /// A restore's buffer, handed over whole; `recycle`: the restore goes
    /// on, and its stores take their tables of slots back once written
    /// ([`RestoredEntries::keep_spare`](restored::RestoredEntries::keep_spare)).
    Restored(Arc<RestoredBatch>, bool),
}

/// All stores of one task over their shared backend.
pub struct StoreSet {
    layers: Vec<Layers>,
    /// The write in flight: its entries (read until written), the write
    /// and its checkpoint.
    writing: Option<(Writing, PendingCommit, Checkpoint)>,
    backend: Box<dyn StateBackend>,
    /// Emptied change lists handed back by [`StoreSet::recycle_changes`],
    /// reused so that recording a change allocates no list per record.
    spare: SpareChanges,
}

/// Changes taken from the stores, per store index.
pub type TakenChanges = Vec<(usize, Vec<Change>)>;

/// Largest change list kept for reuse.
pub const SPARE_CHANGES_CAPACITY: usize = 1024;

/// Emptied lists for [`StoreSet::take_changes`].
#[derive(Default)]
struct SpareChanges {
    outer: TakenChanges,
    lists: Vec<Vec<Change>>,
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
        StoreSet {
            layers,
            spare: SpareChanges::default(),
            writing: None,
            backend,
        }
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
    /// Hand the emptied lists back with [`StoreSet::recycle_changes`].
    pub fn take_changes(&mut self) -> TakenChanges {
        let mut out = std::mem::take(&mut self.spare.outer);
        for (i, l) in self.layers.iter_mut().enumerate() {
            if !l.changes.is_empty() {
                let next = self.spare.lists.pop().unwrap_or_default();
                out.push((i, std::mem::replace(&mut l.changes, next)));
            }
        }
        out
    }

    /// Hands back the lists [`StoreSet::take_changes`] returned, emptied
    /// or not, for reuse (a list grown past [`SPARE_CHANGES_CAPACITY`] by
    /// a large punctuation is dropped rather than kept).
    pub fn recycle_changes(&mut self, mut used: TakenChanges) {
        for (_, mut l) in used.drain(..) {
            if l.capacity() <= SPARE_CHANGES_CAPACITY && self.spare.lists.len() < self.layers.len()
            {
                l.clear();
                self.spare.lists.push(l);
            }
        }
        // At most one entry per store: its capacity stays small.
        self.spare.outer = used;
    }

    /// Records a change read by restore, without logging it (it came from
    /// the changelog).
    pub fn apply_restored(&mut self, idx: usize, key: &[u8], value: Option<&[u8]>) {
        if let Some(l) = self.layers.get_mut(idx) {
            l.restored.apply(key, value);
        }
    }

    /// [`apply_restored`](Self::apply_restored) for a change marked
    /// `mark`, unless it is older than `key`'s last change from the same
    /// input partition (see `RestoredEntries::apply_marked`; `before`
    /// gives the key's last mark from before the buffer was last emptied).
    /// Returns whether it was applied.
    pub(crate) fn apply_restored_marked(
        &mut self,
        idx: usize,
        key: &[u8],
        value: Option<&[u8]>,
        mark: Mark,
        before: impl FnOnce() -> Option<Mark>,
    ) -> bool {
        match self.layers.get_mut(idx) {
            Some(l) => l.restored.apply_marked(key, value, mark, before),
            None => true,
        }
    }

    /// Every restored entry not yet handed to the backend that holds a
    /// marked change: `(store, key, mark)`.
    pub(crate) fn restored_marks(&self) -> impl Iterator<Item = (usize, &[u8], Mark)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.restored.marks().map(move |(k, m)| (i, k, m)))
    }

    /// Hints that a change read by restore for `key` comes soon (see
    /// [`apply_restored`](Self::apply_restored)): its slot is fetched into
    /// the cache meanwhile. Changes nothing.
    pub fn prefetch_restored(&self, idx: usize, key: &[u8]) {
        if let Some(l) = self.layers.get(idx) {
            l.restored.prefetch(key);
        }
    }

    /// Approximate memory held by restored entries not yet handed to the
    /// backend, over all stores.
    pub fn restored_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.restored.bytes()).sum()
    }

    /// Number of buffered and sealed entries over all stores: changes not
    /// yet handed to the backend (a commit being written is not counted).
    pub fn buffered(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.buffer.len() + l.sealed.len() + l.restored.len())
            .sum()
    }

    /// Writes every buffered (and sealed) change and `checkpoint` to the
    /// backend in one atomic batch, then empties the buffers; returns once
    /// written.
    pub fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.seal();
        self.commit_sealed(checkpoint)?;
        self.wait_written()
    }

    /// Seals the write buffer: its changes move to the sealed layer (still
    /// read, not yet written) and new changes go to a fresh buffer. Sealing
    /// again before [`commit_sealed`](Self::commit_sealed) adds the newer
    /// changes to the sealed layer.
    pub fn seal(&mut self) {
        for l in &mut self.layers {
            if l.sealed.is_empty() {
                std::mem::swap(&mut l.sealed, &mut l.buffer);
            } else {
                l.sealed.append(&mut l.buffer);
            }
        }
    }

    /// Whether sealed changes wait to be written.
    pub fn has_sealed(&self) -> bool {
        self.layers.iter().any(|l| !l.sealed.is_empty())
    }

    /// Starts writing the sealed changes and `checkpoint` to the backend as
    /// one atomic commit (changes made since the seal stay buffered): they
    /// become the writing layer, read until the write is over
    /// ([`poll_written`](Self::poll_written),
    /// [`wait_written`](Self::wait_written)). Waits for the previous
    /// commit's write first.
    pub fn commit_sealed(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.hand_over(|l| &mut l.sealed, false, checkpoint)
    }

    /// Whether the last commit is written (its writing layer then goes);
    /// its error if the write failed.
    pub fn poll_written(&mut self) -> Result<bool, StoreError> {
        let Some((_, pending, _)) = &mut self.writing else {
            return Ok(true);
        };
        match pending.poll() {
            None => Ok(false),
            Some(r) => {
                if let Some((writing, _, _)) = self.writing.take() {
                    if r.is_ok() {
                        self.written(writing);
                    }
                }
                r.map(|_| true)
            }
        }
    }

    /// Waits until the last commit is written.
    pub fn wait_written(&mut self) -> Result<(), StoreError> {
        let Some((writing, pending, _)) = self.writing.take() else {
            return Ok(());
        };
        pending.wait()?;
        self.written(writing);
        Ok(())
    }

    /// A write is over: a restore that goes on takes its tables back,
    /// unless the writer still holds the batch.
    fn written(&mut self, writing: Writing) {
        if let Writing::Restored(batch, true) = writing {
            if let Ok(batch) = Arc::try_unwrap(batch) {
                for (l, written) in self.layers.iter_mut().zip(batch.into_stores()) {
                    l.restored.keep_spare(written);
                }
            }
        }
    }

    /// Starts writing the restored entries and `checkpoint`, in key order
    /// ([`StateBackend::start_restored_batch`], which sorts them where they
    /// are written, or for the first range read that comes before; merged
    /// into the write buffer if it holds changes,
    /// [`StateBackend::start_restored`]); like
    /// [`commit_sealed`](Self::commit_sealed), they stay readable until
    /// written, and the previous write is waited for first.
    pub fn commit_restored(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        if self.layers.iter().all(|l| l.buffer.is_empty()) {
            return self.hand_over_restored(true, checkpoint);
        }
        for l in &mut self.layers {
            if l.restored.is_empty() {
                continue;
            }
            let entries = l.restored.take_sorted();
            l.buffer.extend(entries);
        }
        self.hand_over(|l| &mut l.buffer, true, checkpoint)
    }

    /// Moves one layer of every store (`layer`) to the writing layer and
    /// starts its write: a commit, or restored entries (`restored`).
    fn hand_over(
        &mut self,
        layer: fn(&mut Layers) -> &mut Pending,
        restored: bool,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        self.wait_written()?;
        let changes: Changes = self
            .layers
            .iter_mut()
            .map(|l| std::mem::take(layer(l)))
            .collect();
        let changes = Arc::new(changes);
        let shared = Arc::clone(&changes);
        let pending = if restored {
            self.backend.start_restored(shared, checkpoint.clone())
        } else {
            self.backend.start_commit(shared, checkpoint.clone())
        };
        self.writing = Some((Writing::Sorted(changes), pending, checkpoint.clone()));
        Ok(())
    }

    /// Starts writing the restored entries and `checkpoint` as
    /// [`commit_restored`](Self::commit_restored) does, mid-way through a
    /// restore: the entries go to the backend unsorted, to be sorted where
    /// they are written, while the restore reads on into a new buffer.
    pub fn spill_restored(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        if self.layers.iter().any(|l| !l.buffer.is_empty()) {
            return self.commit_restored(checkpoint);
        }
        self.hand_over_restored(false, checkpoint)
    }

    /// Hands every store's restored entries to the backend as they lie
    /// in the restore's buffer ([`StateBackend::start_restored_batch`]),
    /// copying nothing, to be read in key order if `sort`
    /// ([`RestoredBatch::new_sorted`]); they stay readable until written.
    /// Waits for the previous write first.
    fn hand_over_restored(
        &mut self,
        sort: bool,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        self.wait_written()?;
        let taken = self.layers.iter_mut().map(|l| l.restored.take()).collect();
        let batch = Arc::new(if sort {
            RestoredBatch::new_sorted(taken)
        } else {
            RestoredBatch::new(taken)
        });
        let pending = self
            .backend
            .start_restored_batch(Arc::clone(&batch), checkpoint.clone());
        self.writing = Some((Writing::Restored(batch, !sort), pending, checkpoint.clone()));
        Ok(())
    }

    /// Forgets buffered and sealed changes (the task is closed without
    /// committing, or rolls back); a commit being written stays.
    pub fn discard_uncommitted(&mut self) {
        for l in &mut self.layers {
            l.buffer.clear();
            l.sealed.clear();
            l.restored.clear();
            l.changes.clear();
        }
    }

    /// The checkpoint of the last commit, if any: the one being written
    /// while a write runs (the state the layers show), else the backend's.
    /// The entry counts of a checkpoint being written are not final.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        if let Some((_, _, cp)) = &self.writing {
            return Ok(Some(cp.clone()));
        }
        self.backend.checkpoint()
    }

    /// Empties the durable copy (before a full restore).
    pub fn wipe(&mut self) -> Result<(), StoreError> {
        self.wait_written()?;
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
        if let Some(l) = self.layers.get(idx) {
            if let Some(v) = l.buffer.get(key).or_else(|| l.sealed.get(key)) {
                return Ok(v.clone());
            }
            if let Some(v) = l.restored.get(key) {
                return Ok(v.map(<[u8]>::to_vec));
            }
        }
        match self.writing.as_ref().map(|(w, _, _)| w) {
            Some(Writing::Sorted(changes)) => {
                if let Some(v) = changes.get(idx).and_then(|w| w.get(key)) {
                    return Ok(v.clone());
                }
            }
            Some(Writing::Restored(batch, _)) => {
                if let Some(v) = batch.get(idx, key) {
                    return Ok(v.map(<[u8]>::to_vec));
                }
            }
            None => {}
        }
        self.backend.get(idx, key)
    }

    /// Entries whose key starts with `prefix`, buffered changes merged in, in key order.
    pub fn scan_prefix(&self, idx: usize, prefix: &[u8]) -> Result<Entries, StoreError> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            self.backend.scan_prefix(idx, prefix)?.into_iter().collect();
        let from = std::ops::Bound::Included(prefix.to_vec());
        self.merge_layers(idx, &mut merged, (from, std::ops::Bound::Unbounded), |k| {
            k.starts_with(prefix)
        });
        Ok(merged.into_iter().collect())
    }

    /// Entries with `from <= key < to`, buffered changes merged in, in key order.
    pub fn range(&self, idx: usize, from: &[u8], to: &[u8]) -> Result<Entries, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            self.backend.range(idx, from, to)?.into_iter().collect();
        self.merge_layers(idx, &mut merged, from.to_vec()..to.to_vec(), |_| true);
        Ok(merged.into_iter().collect())
    }

    /// Lays the in-memory layers of store `idx` over `merged`, oldest
    /// first: the writing layer, restored entries, the sealed layer and the
    /// buffer; of each, the entries in `bounds` up to the first that
    /// `keep` refuses (restored entries, unordered: every one it admits).
    fn merge_layers(
        &self,
        idx: usize,
        merged: &mut BTreeMap<Vec<u8>, Vec<u8>>,
        bounds: impl std::ops::RangeBounds<Vec<u8>> + Clone,
        keep: impl Fn(&[u8]) -> bool,
    ) {
        let Some(l) = self.layers.get(idx) else {
            return;
        };
        let ordered = |layer: &BTreeMap<Vec<u8>, Option<Vec<u8>>>, merged: &mut BTreeMap<_, _>| {
            for (k, v) in layer.range(bounds.clone()).take_while(|(k, _)| keep(k)) {
                merge(merged, k, v.as_deref());
            }
        };
        let unordered = |layer: &restored::RestoredEntries, merged: &mut BTreeMap<_, _>| {
            for (k, v) in layer.iter() {
                if in_bounds(&bounds, k) && keep(k) {
                    merge(merged, k, v);
                }
            }
        };
        match self.writing.as_ref().map(|(w, _, _)| w) {
            Some(Writing::Sorted(changes)) => {
                if let Some(w) = changes.get(idx) {
                    ordered(w, merged);
                }
            }
            Some(Writing::Restored(batch, _)) => {
                use std::ops::Bound::{Excluded, Included, Unbounded};
                let (from, after) = match bounds.start_bound() {
                    Included(s) => (Some(s.as_slice()), None),
                    Excluded(s) => (Some(s.as_slice()), Some(s.as_slice())),
                    Unbounded => (None, None),
                };
                let sorted = batch.is_sorted();
                batch.visit(idx, from, |k, v| {
                    let inside = in_bounds(&bounds, k);
                    if inside && keep(k) {
                        merge(merged, k, v);
                        return true;
                    }
                    // Sorted: stop past the end or at the first key `keep`
                    // refuses, as for the ordered layers (an excluded
                    // start is passed over).
                    !sorted || (!inside && after == Some(k))
                });
            }
            None => {}
        }
        unordered(&l.restored, merged);
        ordered(&l.sealed, merged);
        ordered(&l.buffer, merged);
    }

    /// Committed entries of a store plus its buffered changes, in key order.
    pub fn entries(&self, idx: usize) -> Result<Entries, StoreError> {
        self.scan_prefix(idx, &[])
    }
}

impl Drop for StoreSet {
    /// A task closed while its last commit is being written waits for the
    /// write: the next owner of its stores must find it done.
    fn drop(&mut self) {
        if let Err(e) = self.wait_written() {
            tracing::warn!(error = %e, "writing the last commit of a closed task failed; its next owner restores from the changelogs");
        }
    }
}

/// Lays one buffered change over `merged`.
/// Whether `k` lies in `bounds` (without making a `Vec` of it).
fn in_bounds(bounds: &impl std::ops::RangeBounds<Vec<u8>>, k: &[u8]) -> bool {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let after_start = match bounds.start_bound() {
        Included(s) => k >= s.as_slice(),
        Excluded(s) => k > s.as_slice(),
        Unbounded => true,
    };
    let before_end = match bounds.end_bound() {
        Included(e) => k <= e.as_slice(),
        Excluded(e) => k < e.as_slice(),
        Unbounded => true,
    };
    after_start && before_end
}

fn merge(merged: &mut BTreeMap<Vec<u8>, Vec<u8>>, k: &[u8], v: Option<&[u8]>) {
    match v {
        Some(v) => merged.insert(k.to_vec(), v.to_vec()),
        None => merged.remove(k),
    };
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

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        self.set.scan_prefix(self.idx, prefix)
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Result<Entries, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> StoreSet {
        StoreSet::new(vec![("s".into(), true)], Box::new(MemoryBackend::new(1)))
    }

    #[test]
    fn should_take_each_change_once_through_recycled_lists() -> Result<(), StoreError> {
        let mut s = StoreSet::new(
            vec![("a".into(), true), ("b".into(), true), ("c".into(), false)],
            Box::new(MemoryBackend::new(1)),
        );
        s.view(0).put(b"k", b"1".to_vec())?;
        s.view(2).put(b"k", b"1".to_vec())?;
        let first = s.take_changes();
        assert_eq!(first, vec![(0, vec![(b"k".to_vec(), Some(b"1".to_vec()))])]);
        s.recycle_changes(first);
        assert!(s.take_changes().is_empty(), "nothing changed since");
        s.view(1).delete(b"x")?;
        s.view(0).put(b"k", b"2".to_vec())?;
        let mut second = s.take_changes();
        assert_eq!(
            second,
            vec![
                (0, vec![(b"k".to_vec(), Some(b"2".to_vec()))]),
                (1, vec![(b"x".to_vec(), None)]),
            ]
        );
        // Handed back unconsumed: the next take must not see them again.
        second[0].1.push((b"stale".to_vec(), None));
        s.recycle_changes(second);
        s.view(1).put(b"y", b"1".to_vec())?;
        assert_eq!(
            s.take_changes(),
            vec![(1, vec![(b"y".to_vec(), Some(b"1".to_vec()))])]
        );
        Ok(())
    }

    #[test]
    fn should_read_sealed_changes_and_write_only_them_at_commit_sealed() {
        let mut s = set();
        s.view(0).put(b"a", b"1".to_vec()).unwrap();
        s.view(0).put(b"b", b"1".to_vec()).unwrap();
        s.seal();
        assert!(s.has_sealed());
        // after the seal: a fresh buffer over the sealed layer
        s.view(0).put(b"a", b"2".to_vec()).unwrap();
        s.view(0).delete(b"b").unwrap();
        s.view(0).put(b"c", b"1".to_vec()).unwrap();
        assert_eq!(s.get(0, b"a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(
            s.get(0, b"b").unwrap(),
            None,
            "buffered delete hides sealed put"
        );
        let all: Vec<_> = s.entries(0).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(all, vec![b"a".to_vec(), b"c".to_vec()]);
        s.commit_sealed(&Checkpoint::default()).unwrap();
        assert!(!s.has_sealed());
        // the durable copy holds the sealed changes only
        assert_eq!(s.committed_len(0), 2);
        assert_eq!(s.backend.get(0, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.backend.get(0, b"c").unwrap(), None);
        // what came after the seal is still read and written by the next commit
        assert_eq!(s.get(0, b"a").unwrap(), Some(b"2".to_vec()));
        s.commit(&Checkpoint::default()).unwrap();
        assert_eq!(s.backend.get(0, b"b").unwrap(), None);
        assert_eq!(s.backend.get(0, b"c").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn should_merge_a_second_seal_into_the_unwritten_one() {
        let mut s = set();
        s.view(0).put(b"a", b"1".to_vec()).unwrap();
        s.seal();
        s.view(0).put(b"a", b"2".to_vec()).unwrap();
        s.view(0).put(b"b", b"1".to_vec()).unwrap();
        s.seal();
        assert_eq!(s.buffered(), 2);
        s.commit_sealed(&Checkpoint::default()).unwrap();
        assert_eq!(s.backend.get(0, b"a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(s.backend.get(0, b"b").unwrap(), Some(b"1".to_vec()));
        s.view(0).put(b"z", b"1".to_vec()).unwrap();
        s.seal();
        s.discard_uncommitted();
        assert_eq!(
            s.get(0, b"z").unwrap(),
            None,
            "discard drops sealed changes too"
        );
    }

    /// A backend whose commits are written only when the test says so.
    struct Gated {
        inner: MemoryBackend,
        release: std::sync::mpsc::Receiver<()>,
    }

    impl Gated {
        /// A write that ends when `release` is sent to (the first one
        /// only; later ones end at once).
        fn held(&mut self) -> PendingCommit {
            let (tx, rx) = std::sync::mpsc::channel();
            let release = std::mem::replace(&mut self.release, std::sync::mpsc::channel().1);
            std::thread::spawn(move || {
                let _ = release.recv();
                let _ = tx.send(Ok(()));
            });
            PendingCommit::running(rx)
        }
    }

    impl StateBackend for Gated {
        fn get(&self, store: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(store, key)
        }
        fn scan_prefix(&self, store: usize, prefix: &[u8]) -> Result<Entries, StoreError> {
            self.inner.scan_prefix(store, prefix)
        }
        fn range(&self, store: usize, from: &[u8], to: &[u8]) -> Result<Entries, StoreError> {
            self.inner.range(store, from, to)
        }
        fn commit(&mut self, batches: &[Batch], checkpoint: &Checkpoint) -> Result<(), StoreError> {
            self.inner.commit(batches, checkpoint)
        }
        fn start_commit(&mut self, changes: Arc<Changes>, _: Checkpoint) -> PendingCommit {
            // Not written to `inner` at all: reads must come from the
            // writing layer until the commit is over.
            drop(changes);
            self.held()
        }
        fn start_restored_batch(
            &mut self,
            batch: Arc<RestoredBatch>,
            _: Checkpoint,
        ) -> PendingCommit {
            drop(batch);
            self.held()
        }
        fn checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
            self.inner.checkpoint()
        }
        fn wipe(&mut self) -> Result<(), StoreError> {
            self.inner.wipe()
        }
        fn len(&self, store: usize) -> Result<u64, StoreError> {
            self.inner.len(store)
        }
    }

    #[test]
    fn should_read_restored_entries_being_written_whether_sorted_or_not() -> Result<(), StoreError>
    {
        let owned = |e: &[(&[u8], &[u8])]| -> Entries {
            e.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
        };
        for sorted in [false, true] {
            let (release, rx) = std::sync::mpsc::channel();
            let mut inner = MemoryBackend::new(1);
            let old = |k: &[u8]| (k.to_vec(), Some(b"old".to_vec()));
            inner.commit(
                &[vec![old(b"a"), old(b"c"), old(b"e")]],
                &Checkpoint::default(),
            )?;
            let gated = Gated { inner, release: rx };
            let mut s = StoreSet::new(vec![("s".into(), true)], Box::new(gated));
            for (k, v) in [
                (&b"f"[..], Some(&b"1"[..])),
                (b"b", Some(b"1")),
                (b"c", None),
                (b"d", Some(b"1")),
            ] {
                s.apply_restored(0, k, v);
            }
            let cp = Checkpoint::default();
            if sorted {
                s.commit_restored(&cp)?;
            } else {
                s.spill_restored(&cp)?;
            }
            assert!(!s.poll_written()?, "the write is held");
            assert_eq!(s.restored_bytes(), 0, "the buffer was handed over");
            assert_eq!(s.get(0, b"b")?, Some(b"1".to_vec()));
            assert_eq!(s.get(0, b"c")?, None, "deleted over the backend's value");
            assert_eq!(s.get(0, b"e")?, Some(b"old".to_vec()));
            assert_eq!(
                s.entries(0)?,
                owned(&[
                    (b"a", b"old"),
                    (b"b", b"1"),
                    (b"d", b"1"),
                    (b"e", b"old"),
                    (b"f", b"1")
                ]),
                "sorted: {sorted}"
            );
            assert_eq!(
                s.range(0, b"b", b"e")?,
                owned(&[(b"b", b"1"), (b"d", b"1")])
            );
            assert_eq!(s.range(0, b"c", b"d")?, owned(&[]));
            assert_eq!(s.scan_prefix(0, b"d")?, owned(&[(b"d", b"1")]));
            assert_eq!(s.scan_prefix(0, b"f")?, owned(&[(b"f", b"1")]));
            release.send(()).ok();
            s.wait_written()?;
            // A restore that goes on takes its written table back (held
            // until its buffer grows into it); the last one does not.
            assert_eq!(s.restored_bytes() > 0, !sorted, "sorted: {sorted}");
            s.apply_restored(0, b"g", Some(b"1"));
            assert_eq!(s.get(0, b"g")?, Some(b"1".to_vec()));
            assert_eq!(s.get(0, b"b")?, None, "only what the backend holds");
        }
        Ok(())
    }

    #[test]
    fn should_read_the_writing_layer_until_the_write_is_over() {
        let (release, rx) = std::sync::mpsc::channel();
        let backend = Gated {
            inner: MemoryBackend::new(1),
            release: rx,
        };
        let mut s = StoreSet::new(vec![("s".into(), true)], Box::new(backend));
        s.view(0).put(b"a", b"1".to_vec()).unwrap();
        s.view(0).put(b"b", b"1".to_vec()).unwrap();
        s.seal();
        let cp = Checkpoint {
            stream_time: 42,
            ..Default::default()
        };
        s.commit_sealed(&cp).unwrap();
        assert!(!s.has_sealed());
        assert_eq!(
            s.checkpoint().unwrap().map(|c| c.stream_time),
            Some(42),
            "the checkpoint being written, not the backend's (none yet)"
        );
        s.view(0).put(b"b", b"2".to_vec()).unwrap();
        assert!(!s.poll_written().unwrap(), "the write is held");
        assert_eq!(
            s.get(0, b"a").unwrap(),
            Some(b"1".to_vec()),
            "from the writing layer"
        );
        assert_eq!(
            s.get(0, b"b").unwrap(),
            Some(b"2".to_vec()),
            "the buffer over it"
        );
        assert_eq!(s.entries(0).unwrap().len(), 2);
        assert_eq!(s.buffered(), 1, "the writing layer is not counted");
        s.discard_uncommitted();
        assert_eq!(
            s.get(0, b"b").unwrap(),
            Some(b"1".to_vec()),
            "a rollback keeps the commit being written"
        );
        release.send(()).unwrap();
        s.wait_written().unwrap();
        assert!(s.poll_written().unwrap());
        assert_eq!(s.buffered(), 0);
        assert_eq!(
            s.get(0, b"a").unwrap(),
            None,
            "the gated backend never wrote it"
        );
    }

    #[test]
    fn should_keep_the_last_restored_value_per_key_and_write_them_in_key_order() {
        let mut s = set();
        s.apply_restored(0, b"b", Some(b"1"));
        s.apply_restored(0, b"a", Some(b"1"));
        s.apply_restored(0, b"b", Some(b"22"));
        s.apply_restored(0, b"c", Some(b"1"));
        s.apply_restored(0, b"c", None);
        s.apply_restored(0, b"d", None);
        s.apply_restored(0, b"d", Some(b"4"));
        assert_eq!(s.buffered(), 4, "one entry per key");
        // a, b = 22, c deleted, d = 4: entries and the bytes they hold now
        // a, b (moved when it grew), c, d (a tombstone first): bytes held
        assert!(
            s.restored_bytes() >= 4 + 1 + 3 + 1 + 1 + 1 + 2,
            "{}",
            s.restored_bytes()
        );
        assert_eq!(s.get(0, b"b").unwrap(), Some(b"22".to_vec()));
        assert_eq!(s.get(0, b"c").unwrap(), None, "deleted after its put");
        let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(s.entries(0).unwrap()),
            vec![b"a".to_vec(), b"b".to_vec(), b"d".to_vec()],
            "scans see restored entries, in key order"
        );
        assert_eq!(keys(s.range(0, b"b", b"d").unwrap()), vec![b"b".to_vec()]);
        s.commit_restored(&Checkpoint::default()).unwrap();
        s.wait_written().unwrap();
        assert_eq!(s.buffered(), 0);
        assert_eq!(s.restored_bytes(), 0);
        assert_eq!(s.committed_len(0), 3);
        assert_eq!(s.backend.get(0, b"b").unwrap(), Some(b"22".to_vec()));
        assert_eq!(s.backend.get(0, b"d").unwrap(), Some(b"4".to_vec()));
        assert_eq!(s.backend.get(0, b"c").unwrap(), None);
    }
}
