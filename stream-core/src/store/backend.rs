//! The durable side of a task's stores, and the checkpoint written with it.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::RestoredBatch;
use crate::coordinates::{TopicPartition, UpstreamKey};
use crate::error::StoreError;

/// Changes to one store: key and value (`None` deletes).
pub type Batch = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Changes to all stores of a task, per store index, in key order (`None`
/// deletes): a sealed commit on its way to the backend.
pub type Changes = Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

/// A commit being written by [`StateBackend::start_commit`].
#[derive(Debug)]
pub struct PendingCommit(Pending);

#[derive(Debug)]
enum Pending {
    Done(Option<Result<(), StoreError>>),
    Running(Receiver<Result<(), StoreError>>),
}

impl PendingCommit {
    /// A commit already written (or failed).
    pub fn done(result: Result<(), StoreError>) -> Self {
        PendingCommit(Pending::Done(Some(result)))
    }

    /// A commit another thread writes; it sends the result on `rx`.
    pub fn running(rx: Receiver<Result<(), StoreError>>) -> Self {
        PendingCommit(Pending::Running(rx))
    }

    /// The result once the write is over (given once), `None` while it runs.
    pub fn poll(&mut self) -> Option<Result<(), StoreError>> {
        match &mut self.0 {
            Pending::Done(r) => r.take(),
            Pending::Running(rx) => match rx.try_recv() {
                Ok(r) => Some(r),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Err(writer_gone())),
            },
        }
    }

    /// Waits for the write to end.
    pub fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            Pending::Done(r) => r.unwrap_or(Ok(())),
            Pending::Running(rx) => rx.recv().unwrap_or_else(|_| Err(writer_gone())),
        }
    }
}

/// `changes` as one [`Batch`] per store.
fn to_batches(changes: &Changes) -> Vec<Batch> {
    changes
        .iter()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .collect()
}

fn writer_gone() -> StoreError {
    StoreError::StateDir {
        path: "*".into(),
        reason: "the state writer thread stopped before finishing a commit".into(),
    }
}

/// What a task's durable state corresponds to, written atomically with it.
///
/// The state in the backend is exactly the result of processing every input
/// record before `positions`, and contains every changelog record before
/// `changelog_offsets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Next changelog offset to read, per changelog partition.
    pub changelog_offsets: BTreeMap<TopicPartition, i64>,
    /// Next input offset to process, per input partition.
    pub positions: BTreeMap<TopicPartition, i64>,
    /// Highest upstream (offset, sequence) applied, per repartition topic
    /// and upstream partition.
    pub dedup: BTreeMap<UpstreamKey, (i64, u32)>,
    /// Number of entries per store index after the commit (damage detection).
    pub entries: Vec<u64>,
    /// The task's stream time when the state was written (`-1`: none yet;
    /// absent in checkpoints written before stream time existed).
    #[serde(default = "no_stream_time")]
    pub stream_time: i64,
    /// Whether processing wrote it, at a commit: the state then holds the
    /// changes of every input before `positions` and no other, so a
    /// changelog record after `changelog_offsets` whose input lies before
    /// them is a replay or a late write (`task::late_writes`). A restore's
    /// own writes, mid-way through the changelog, leave it false (as do
    /// checkpoints written before it existed).
    #[serde(default)]
    pub processed: bool,
}

fn no_stream_time() -> i64 {
    -1
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint {
            changelog_offsets: BTreeMap::new(),
            positions: BTreeMap::new(),
            dedup: BTreeMap::new(),
            entries: Vec::new(),
            stream_time: -1,
            processed: false,
        }
    }
}

/// The durable copy of all stores of one task.
pub trait StateBackend: Send {
    /// Reads one key of store `store`.
    fn get(&self, store: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries of store `store` whose key starts with `prefix`.
    fn scan_prefix(&self, store: usize, prefix: &[u8]) -> Result<super::Entries, StoreError>;
    /// Entries of store `store` with `from <= key < to`, in key order.
    fn range(&self, store: usize, from: &[u8], to: &[u8]) -> Result<super::Entries, StoreError>;
    /// Applies one batch per store and the checkpoint atomically. Durable
    /// once the owner syncs (for sled: [`StateDir::sync`](super::StateDir::sync)).
    fn commit(&mut self, batches: &[Batch], checkpoint: &Checkpoint) -> Result<(), StoreError>;
    /// Starts writing `changes` and `checkpoint` as one atomic commit,
    /// possibly on another thread, while the task reads on: until the
    /// returned commit is over, reads of the changed keys must be answered
    /// from `changes`, and the next commit must wait for it. The default
    /// writes with [`commit`](Self::commit) before returning.
    fn start_commit(&mut self, changes: Arc<Changes>, checkpoint: Checkpoint) -> PendingCommit {
        PendingCommit::done(self.commit(&to_batches(&changes), &checkpoint))
    }
    /// Writes restored entries, then the checkpoint. Not atomic across the
    /// two: restored entries are changelog values, so a crash between them
    /// only makes the next restore re-apply the same values. Defaults to
    /// [`commit`](Self::commit).
    fn commit_restored(
        &mut self,
        batches: &[Batch],
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        self.commit(batches, checkpoint)
    }
    /// [`commit_restored`](Self::commit_restored), possibly on another
    /// thread while the restore reads on (as
    /// [`start_commit`](Self::start_commit)). The default writes before
    /// returning.
    fn start_restored(&mut self, changes: Arc<Changes>, checkpoint: Checkpoint) -> PendingCommit {
        PendingCommit::done(self.commit_restored(&to_batches(&changes), &checkpoint))
    }
    /// [`start_restored`](Self::start_restored) for entries not sorted
    /// yet: a restore's buffer, handed over whole, while the restore reads
    /// on (`StoreSet::spill_restored`) or as it ends and processing
    /// begins. Sorting them is part of the write ([`RestoredBatch::sorted`]),
    /// off the restore's thread where the write runs elsewhere. The
    /// default sorts and writes before returning.
    fn start_restored_batch(
        &mut self,
        batch: Arc<RestoredBatch>,
        checkpoint: Checkpoint,
    ) -> PendingCommit {
        let batches: Vec<Batch> = batch
            .sorted()
            .into_iter()
            .map(|entries| {
                entries
                    .into_iter()
                    .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                    .collect()
            })
            .collect();
        PendingCommit::done(self.commit_restored(&batches, &checkpoint))
    }

    /// The last committed checkpoint.
    fn checkpoint(&self) -> Result<Option<Checkpoint>, StoreError>;
    /// Removes every entry and the checkpoint.
    fn wipe(&mut self) -> Result<(), StoreError>;
    /// Number of entries of store `store`.
    fn len(&self, store: usize) -> Result<u64, StoreError>;
}
