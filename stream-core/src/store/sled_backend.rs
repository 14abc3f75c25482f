//! The sled backend: one sled database per instance state directory, one
//! tree per store per task, and one checkpoint entry per task.
//!
//! sled 0.34 is beta software, so the local copy is verified rather than
//! trusted: a database that fails to open is moved aside and every task
//! restores from its changelog; a task whose trees do not match the entry
//! counts recorded in its checkpoint is wiped and restored likewise.

use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{Batch, Checkpoint, StateBackend};
use crate::error::StoreError;

const CHECKPOINTS: &str = "__checkpoints";

/// sled's page cache when not configured: 64 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// An opened state directory: `<state.dir>/<application.id>/`.
#[derive(Clone)]
pub struct StateDir {
    path: PathBuf,
    db: sled::Db,
    syncer: std::sync::mpsc::SyncSender<()>,
}

/// Starts the thread that flushes sled after commits without blocking them:
/// requests that arrive while a flush runs are coalesced into the next one.
fn start_syncer(db: &sled::Db) -> std::sync::mpsc::SyncSender<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let db = db.clone();
    let spawned = std::thread::Builder::new().name("sled-syncer".into()).spawn(move || {
        while rx.recv().is_ok() {
            if let Err(e) = db.flush() {
                tracing::warn!(error = %e, "background flush of local state failed; restore will read a longer changelog tail");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the state syncer thread; relying on sled's periodic flush");
    }
    tx
}

impl StateDir {
    /// Opens (or creates) the state directory of an application. A database
    /// that cannot be opened is moved aside to `sled.damaged-<time>` and a
    /// fresh one is created; the returned flag says so.
    pub fn open(state_dir: &Path, application_id: &str) -> Result<(StateDir, bool), StoreError> {
        Self::open_with_cache(state_dir, application_id, DEFAULT_CACHE_BYTES)
    }

    /// [`open`](Self::open) with sled's page cache bounded to `cache_bytes`
    /// (`StreamsConfig::state_cache_bytes`).
    pub fn open_with_cache(
        state_dir: &Path,
        application_id: &str,
        cache_bytes: u64,
    ) -> Result<(StateDir, bool), StoreError> {
        let path = state_dir.join(application_id);
        std::fs::create_dir_all(&path).map_err(|e| StoreError::StateDir {
            path: path.display().to_string(),
            reason: format!("cannot create: {e}"),
        })?;
        let probe = path.join(".writable");
        std::fs::write(&probe, b"ok").map_err(|e| StoreError::StateDir {
            path: path.display().to_string(),
            reason: format!("cannot write: {e}"),
        })?;
        let _ = std::fs::remove_file(&probe);
        let db_path = path.join("sled");
        match Self::open_db(&db_path, cache_bytes) {
            Ok(db) => Ok((
                StateDir {
                    syncer: start_syncer(&db),
                    path,
                    db,
                },
                false,
            )),
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") =>
            {
                Err(StoreError::StateDir {
                    path: path.display().to_string(),
                    reason: "locked by another instance; give each instance its own state.dir"
                        .into(),
                })
            }
            Err(e) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = path.join(format!("sled.damaged-{stamp}"));
                tracing::warn!(error = %e, moved_to = %aside.display(), "state store cannot be opened; moving it aside and restoring from the changelogs");
                std::fs::rename(&db_path, &aside).map_err(|io| StoreError::StateDir {
                    path: db_path.display().to_string(),
                    reason: format!("damaged ({e}) and cannot be moved aside: {io}"),
                })?;
                let db =
                    Self::open_db(&db_path, cache_bytes).map_err(|source| StoreError::Sled {
                        store: "*".into(),
                        source,
                    })?;
                Ok((
                    StateDir {
                        syncer: start_syncer(&db),
                        path,
                        db,
                    },
                    true,
                ))
            }
        }
    }

    fn open_db(path: &Path, cache_bytes: u64) -> sled::Result<sled::Db> {
        sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // A safety net: commits are flushed by the syncer thread right away.
            .flush_every_ms(Some(1000))
            .open()
    }

    /// Asks the syncer thread to make the commits so far durable, without
    /// waiting for it.
    pub fn sync_soon(&self) {
        let _ = self.syncer.try_send(());
    }

    /// Makes every committed transaction durable (one fsync for all tasks).
    /// Backend commits are atomic but become durable only here.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|source| StoreError::Sled {
                store: "*".into(),
                source,
            })
    }

    /// A random id for this state directory, created on first use and kept
    /// in `instance.id`: an instance restarted on the same state keeps it
    /// (its transactional id, so the restart fences the earlier incarnation).
    pub fn instance_id(&self) -> Result<String, StoreError> {
        use std::hash::{BuildHasher, Hasher};
        let file = self.path.join("instance.id");
        if let Ok(id) = std::fs::read_to_string(&file) {
            let id = id.trim().to_string();
            if !id.is_empty() {
                return Ok(id);
            }
        }
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        let id = format!("{:016x}", h.finish());
        std::fs::write(&file, &id).map_err(|e| StoreError::StateDir {
            path: file.display().to_string(),
            reason: format!("cannot write: {e}"),
        })?;
        Ok(id)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rows and read offsets of global table `store`.
    pub fn global_tree(&self, store: &str) -> Result<super::GlobalTree, StoreError> {
        let err = |source| StoreError::Sled {
            store: store.to_string(),
            source,
        };
        Ok(super::GlobalTree::Sled {
            rows: self.db.open_tree(format!("global/{store}")).map_err(err)?,
            offsets: self
                .db
                .open_tree(format!("global-offsets/{store}"))
                .map_err(err)?,
        })
    }

    /// The backend of one task, with trees for `stores`.
    pub fn backend(&self, task: &str, stores: &[String]) -> Result<SledBackend, StoreError> {
        let err = |source| StoreError::Sled {
            store: task.to_string(),
            source,
        };
        let trees = stores
            .iter()
            .map(|s| self.db.open_tree(format!("store/{s}/{task}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let meta = self.db.open_tree(CHECKPOINTS).map_err(err)?;
        let counts = trees.iter().map(|t| t.len() as u64).collect();
        Ok(SledBackend {
            db: self.db.clone(),
            task: task.to_string(),
            trees,
            meta,
            counts,
        })
    }
}

/// The durable stores of one task in sled.
pub struct SledBackend {
    db: sled::Db,
    task: String,
    trees: Vec<sled::Tree>,
    meta: sled::Tree,
    counts: Vec<u64>,
}

impl SledBackend {
    /// Writes restored entries to store `i` one by one, counting entries
    /// added and removed into `counts` from what each write replaced.
    ///
    /// Single writes share sled's lock with the processing tasks' reads. A
    /// batch (`apply_batch`) takes it exclusively, and once any transaction
    /// (a commit) has run, sled makes every read wait for that lock: a task
    /// processing beside a restore then read one value per restored batch.
    /// A crash midway leaves the checkpoint at the previous position, and
    /// the next restore writes the same values again.
    fn write_restored(
        &self,
        i: usize,
        entries: &[(Vec<u8>, Option<Vec<u8>>)],
        counts: &mut [u64],
    ) -> Result<(), StoreError> {
        let tree = &self.trees[i];
        for (k, v) in entries {
            let old = match v {
                Some(v) => tree.insert(k.as_slice(), v.as_slice()),
                None => tree.remove(k.as_slice()),
            }
            .map_err(|e| self.err(e))?;
            match (old.is_some(), v.is_some()) {
                (false, true) => counts[i] += 1,
                (true, false) => counts[i] = counts[i].saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            store: self.task.clone(),
            source,
        }
    }

    /// The checkpoint as stored, with the entry counts it vouches for.
    fn encode_checkpoint(
        &self,
        checkpoint: &Checkpoint,
        counts: &[u64],
    ) -> Result<Vec<u8>, StoreError> {
        let mut checkpoint = checkpoint.clone();
        checkpoint.entries = counts.to_vec();
        serde_json::to_vec(&checkpoint).map_err(|e| StoreError::Damaged {
            store: self.task.clone(),
            reason: format!("cannot encode checkpoint: {e}"),
        })
    }

    /// Checks the trees against the entry counts of the checkpoint.
    pub fn verify(&self) -> Result<(), StoreError> {
        let Some(cp) = self.checkpoint()? else {
            return Ok(());
        };
        if cp.entries.len() != self.trees.len() {
            return Err(StoreError::Damaged {
                store: self.task.clone(),
                reason: format!(
                    "checkpoint lists {} stores, found {}",
                    cp.entries.len(),
                    self.trees.len()
                ),
            });
        }
        for (i, want) in cp.entries.iter().enumerate() {
            let have = self.counts[i];
            if have != *want {
                return Err(StoreError::Damaged {
                    store: self.task.clone(),
                    reason: format!("store #{i} has {have} entries, checkpoint says {want}"),
                });
            }
        }
        Ok(())
    }
}

impl StateBackend for SledBackend {
    fn get(&self, store: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let t = &self.trees[store];
        t.get(key)
            .map(|v| v.map(|iv| iv.to_vec()))
            .map_err(|e| self.err(e))
    }

    fn scan_prefix(
        &self,
        store: usize,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.trees[store]
            .scan_prefix(prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))
    }

    fn range(
        &self,
        store: usize,
        from: &[u8],
        to: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.trees[store]
            .range(from..to)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))
    }

    fn commit(&mut self, batches: &[Batch], checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let mut all: Vec<&sled::Tree> = self.trees.iter().collect();
        all.push(&self.meta);
        let meta_idx = all.len() - 1;
        let task = self.task.as_bytes();
        // The entry counts go into the checkpoint, written in the same
        // transaction: they are counted from what each write replaced
        // (a transactional write reads the old value anyway).
        let result: Result<Vec<u64>, TransactionError<String>> =
            all.as_slice().transaction(|txs| {
                let mut counts = self.counts.clone();
                for (i, batch) in batches.iter().enumerate() {
                    for (k, v) in batch {
                        let old = match v {
                            Some(v) => txs[i].insert(k.as_slice(), v.as_slice())?,
                            None => txs[i].remove(k.as_slice())?,
                        };
                        match (old.is_some(), v.is_some()) {
                            (false, true) => counts[i] += 1,
                            (true, false) => counts[i] = counts[i].saturating_sub(1),
                            _ => {}
                        }
                    }
                }
                let encoded = self
                    .encode_checkpoint(checkpoint, &counts)
                    .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                txs[meta_idx].insert(task, encoded)?;
                Ok(counts)
            });
        self.counts = result.map_err(|e| match e {
            TransactionError::Storage(s) => self.err(s),
            TransactionError::Abort(why) => self.err(sled::Error::Unsupported(why)),
        })?;
        Ok(())
    }

    fn commit_restored(
        &mut self,
        batches: &[Batch],
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let mut counts = self.counts.clone();
        for (i, batch) in batches.iter().enumerate() {
            self.write_restored(i, batch, &mut counts)?;
        }
        let encoded = self.encode_checkpoint(checkpoint, &counts)?;
        self.meta
            .insert(self.task.as_bytes(), encoded)
            .map_err(|e| self.err(e))?;
        self.counts = counts;
        Ok(())
    }

    fn checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let Some(raw) = self
            .meta
            .get(self.task.as_bytes())
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| StoreError::Damaged {
                store: self.task.clone(),
                reason: format!("unreadable checkpoint: {e}"),
            })
    }

    fn wipe(&mut self) -> Result<(), StoreError> {
        for t in &self.trees {
            t.clear().map_err(|e| self.err(e))?;
        }
        self.meta
            .remove(self.task.as_bytes())
            .map_err(|e| self.err(e))?;
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    fn len(&self, store: usize) -> Result<u64, StoreError> {
        Ok(self.counts.get(store).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_commit_atomically_and_verify_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (sd, recovered) = StateDir::open(dir.path(), "app").unwrap();
        assert!(!recovered);
        let mut b = sd.backend("0_0", &["a".into(), "b".into()]).unwrap();
        let cp = Checkpoint::default();
        b.commit(
            &[
                vec![(b"k".to_vec(), Some(b"1".to_vec()))],
                vec![(b"x".to_vec(), Some(b"2".to_vec()))],
            ],
            &cp,
        )
        .unwrap();
        assert_eq!(b.get(0, b"k").unwrap(), Some(b"1".to_vec()));
        assert_eq!(b.checkpoint().unwrap().unwrap().entries, vec![1, 1]);
        b.verify().unwrap();
        b.trees[1].insert(b"stray", b"x").unwrap();
        drop(b);
        let b = sd.backend("0_0", &["a".into(), "b".into()]).unwrap();
        assert!(matches!(b.verify(), Err(StoreError::Damaged { .. })));
    }
}
