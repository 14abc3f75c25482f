//! The sled backend: one sled database per instance state directory, one
//! tree per store per task (its entries in sorted runs, see
//! [`buckets`](super::buckets)), and one checkpoint entry per task.
//!
//! A commit is made atomic by a redo record rather than a sled
//! transaction: first the whole commit (changes and checkpoint) goes into
//! the `__redo` tree as one value, then the changes are written key by
//! key, then the checkpoint, and the redo record is removed. sled recovers
//! a prefix of its log, so after a crash either the redo record is absent
//! (nothing of the commit is in the trees, or all of it and its
//! checkpoint) or it is present and opening the task writes the commit
//! again (writing a value twice is harmless). This keeps sled's
//! process-wide lock off: sled takes it for every read and write of the
//! process as soon as one transaction or batch has run, and each
//! transaction takes it exclusively, so a commit written beside
//! processing (by the state writer thread, or another stream thread's)
//! would stall every store read meanwhile.
//!
//! sled 0.34 is beta software, so the local copy is verified rather than
//! trusted: a database that fails to open is moved aside and every task
//! restores from its changelog; a task whose trees do not match the entry
//! counts recorded in its checkpoint, or holds a bucket that does not
//! decode, is wiped and restored likewise. State written in the earlier
//! layout (one sled entry per key, trees named `store/…`) is dropped when
//! the directory opens, and every task restores from its changelogs.

use std::path::{Path, PathBuf};

use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use super::buckets::BucketTree;
use super::key_filter::KeyFilters;
use super::{Batch, Changes, Checkpoint, PendingCommit, RestoredBatch, StateBackend};
use crate::error::StoreError;

const CHECKPOINTS: &str = "__checkpoints";
/// Commits being written, one redo record per task (see the module docs).
const REDO: &str = "__redo";
/// Version byte of the redo record's encoding.
const REDO_V1: u8 = 1;
/// Prefix of the trees of task stores, one entry per bucket of entries.
const STORE_TREES: &str = "buckets/";
/// Prefix of the trees of task stores in the earlier layout (one entry per
/// key); dropped when found.
const FLAT_STORE_TREES: &str = "store/";
/// Prefix of the trees of global tables' rows, bucketed.
const GLOBAL_TREES: &str = "global-buckets/";
/// Prefix of the trees of global tables' read offsets (new with the
/// bucketed rows: the earlier offsets vouch for the earlier rows).
const GLOBAL_OFFSET_TREES: &str = "global-buckets-offsets/";
/// Prefixes of global tables' trees in the earlier layout (rows one entry
/// per key, and their offsets); dropped when found.
const FLAT_GLOBAL_TREES: [&str; 2] = ["global/", "global-offsets/"];

/// sled's page cache when not configured: 16 MiB.
///
/// sled counts a cached page by its size on disk; in memory its nodes take
/// about three times as much, so the cache costs more than the setting.
/// Counting 1,000,000 keys (`count-app`, every update emitted) peaked at
/// 159, 197, 242 and 228 MiB with 8, 16, 32 and 64 MiB, and 10,000,000
/// keys at 291, 335 and 591 MiB with 8, 16 and 64 MiB, none of them slower;
/// emit-final windows over 100,000 keys (`bench-windows`) ran 12.5–13.5 s
/// with 8 MiB, 12.0 s with 16 and 10.5–11.5 s with 64 (one or two runs
/// each on the 2-core benchmark machine). Those runs kept one sled entry
/// per key. With runs of entries of up to 1 KiB per sled entry
/// (`store/buckets.rs`) the setting matters less: 10,000,000 keys peaked
/// at 108, 109 and 132 MiB with 8, 16 and 64 MiB in 66.8, 69.4 and 67.4 s,
/// and the windows above ran 8.0–8.5, 7.5–8.0 and 7.5–8.0 s at 108–116 MiB
/// (two runs each).
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// An opened state directory: `<state.dir>/<application.id>/`.
#[derive(Clone)]
pub struct StateDir {
    path: PathBuf,
    db: sled::Db,
    syncer: SyncSender<()>,
    /// Writes commits of processing tasks.
    writer: Option<Sender<WriteJob>>,
    /// Writes restored entries (apart, so that a large restore never
    /// delays a processing task's commit).
    restore_writer: Option<Sender<WriteJob>>,
    /// The key filters of the directory's trees (`store/key_filter.rs`).
    filters: Arc<KeyFilters>,
}

/// Share of `state_cache_bytes` the key filters of one state directory may
/// take together, besides sled's cache: a quarter, 4 MiB by default, which
/// holds about 2.8 million keys (`store/key_filter.rs`).
const FILTER_SHARE_OF_CACHE: u64 = 4;

/// A commit for the state writer thread, and where its result goes.
type WriteJob = Box<dyn FnOnce() + Send>;

/// Starts a thread that writes commits (or restored entries) while the
/// stream threads (or the restorer) go on (`None` if it cannot start:
/// they then write in place).
fn start_writer(name: &str) -> Option<Sender<WriteJob>> {
    let (tx, rx): (Sender<WriteJob>, Receiver<WriteJob>) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                job();
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::warn!(error = %e, thread = name, "cannot start a state writer thread; its writes are made in place");
            None
        }
    }
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
            Ok(db) => Ok((Self::with_db(path, db, cache_bytes), false)),
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
                Ok((Self::with_db(path, db, cache_bytes), true))
            }
        }
    }

    /// The directory at `path` over its opened database, with its threads.
    fn with_db(path: PathBuf, db: sled::Db, cache_bytes: u64) -> StateDir {
        let filter_bytes =
            usize::try_from(cache_bytes / FILTER_SHARE_OF_CACHE).unwrap_or(usize::MAX);
        StateDir {
            syncer: start_syncer(&db),
            writer: start_writer("state-writer"),
            restore_writer: start_writer("restore-writer"),
            filters: Arc::new(KeyFilters::new(filter_bytes)),
            path,
            db,
        }
    }

    fn open_db(path: &Path, cache_bytes: u64) -> sled::Result<sled::Db> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // A safety net: commits are flushed by the syncer thread right away.
            .flush_every_ms(Some(1000))
            .open()?;
        drop_flat_stores(&db)?;
        Ok(db)
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
        let name = format!("{GLOBAL_TREES}{store}");
        let rows = self.db.open_tree(&name).map_err(err)?;
        let offsets = self
            .db
            .open_tree(format!("{GLOBAL_OFFSET_TREES}{store}"))
            .map_err(err)?;
        let (filter, fresh) = self.filters.of(&name);
        let rows = BucketTree::new(rows, format!("global {store}"), filter);
        if fresh {
            rows.fill_if_empty().map_err(err)?;
        }
        Ok(super::GlobalTree::sled(rows, offsets))
    }

    /// The backend of one task, with trees for `stores`. A commit of the
    /// task that a crash interrupted (its redo record is still there) is
    /// written again first.
    pub fn backend(&self, task: &str, stores: &[String]) -> Result<SledBackend, StoreError> {
        let err = |source| StoreError::Sled {
            store: task.to_string(),
            source,
        };
        let mut fresh = Vec::with_capacity(stores.len());
        let trees = stores
            .iter()
            .map(|s| {
                let name = format!("{STORE_TREES}{s}/{task}");
                let tree = self.db.open_tree(&name)?;
                let (filter, new) = self.filters.of(&name);
                fresh.push(new);
                Ok(BucketTree::new(tree, format!("{s}/{task}"), filter))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let meta = self.db.open_tree(CHECKPOINTS).map_err(err)?;
        let redo = self.db.open_tree(REDO).map_err(err)?;
        // The checkpoint's counts size new filters ahead; a checkpoint
        // that does not read is found by `verify`.
        let expected = meta
            .get(task.as_bytes())
            .ok()
            .flatten()
            .and_then(|raw| serde_json::from_slice::<Checkpoint>(&raw).ok())
            .map(|cp| cp.entries)
            .unwrap_or_default();
        let mut damage = None;
        let counts = match count_all(&trees, &fresh, &expected) {
            Ok(counts) => counts,
            Err(e) => {
                damage = Some(e.to_string());
                vec![0; trees.len()]
            }
        };
        let trees = TaskTrees {
            task: task.to_string(),
            trees,
            meta,
            redo,
            counts: Arc::new(Mutex::new(counts)),
            syncer: self.syncer.clone(),
        };
        if damage.is_none() && trees.finish_interrupted()? {
            damage = Some("a commit interrupted by a crash cannot be read back".into());
        }
        Ok(SledBackend {
            db: self.db.clone(),
            trees,
            writer: self.writer.clone(),
            restore_writer: self.restore_writer.clone(),
            damage,
        })
    }
}

/// Drops task stores written in the earlier layout, one sled entry per key
/// (trees named `store/…`), with every task checkpoint and redo record, so
/// that every task restores from its changelogs: the checkpoints vouch for
/// those trees. The checkpoints go first, so a crash in between only drops
/// them again on the next open. Global tables in the earlier layout
/// (`global/…` with `global-offsets/…`) are dropped too: they are read
/// again from their topics into new trees.
fn drop_flat_stores(db: &sled::Db) -> sled::Result<()> {
    let names = db.tree_names();
    let globals: Vec<&sled::IVec> = names
        .iter()
        .filter(|n| {
            FLAT_GLOBAL_TREES
                .iter()
                .any(|p| n.starts_with(p.as_bytes()))
        })
        .collect();
    if !globals.is_empty() {
        tracing::info!(
            trees = globals.len(),
            "global tables are stored in an earlier layout; dropping them, they are read again from their topics"
        );
        for name in globals {
            db.drop_tree(name)?;
        }
    }
    let flat: Vec<sled::IVec> = names
        .into_iter()
        .filter(|n| n.starts_with(FLAT_STORE_TREES.as_bytes()))
        .collect();
    if flat.is_empty() {
        return Ok(());
    }
    tracing::info!(
        trees = flat.len(),
        "local state is in an earlier layout; dropping it, every task restores from its changelogs"
    );
    db.open_tree(CHECKPOINTS)?.clear()?;
    db.open_tree(REDO)?.clear()?;
    db.flush()?;
    for name in flat {
        db.drop_tree(name)?;
    }
    db.flush()?;
    Ok(())
}

/// One store's changes as the commit writes them.
type Entries<'a> = super::SortedEntries<'a>;

/// Entries per store, read from the trees; the trees whose filter is
/// `fresh` fill it on the way, sized for the `expected` counts.
fn count_all(
    trees: &[BucketTree],
    fresh: &[bool],
    expected: &[u64],
) -> Result<Vec<u64>, StoreError> {
    trees
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let fill = fresh.get(i).copied().unwrap_or(false);
            t.count_and_fill(fill, expected.get(i).copied().unwrap_or(0))
        })
        .collect()
}

/// The trees of one task: what a commit writes, on any thread.
#[derive(Clone)]
struct TaskTrees {
    task: String,
    trees: Vec<BucketTree>,
    meta: sled::Tree,
    redo: sled::Tree,
    /// Entries per store as of the last commit written.
    counts: Arc<Mutex<Vec<u64>>>,
    syncer: SyncSender<()>,
}

impl TaskTrees {
    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            store: self.task.clone(),
            source,
        }
    }

    fn counts(&self) -> Vec<u64> {
        match self.counts.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_counts(&self, counts: Vec<u64>) {
        match self.counts.lock() {
            Ok(mut c) => *c = counts,
            Err(poisoned) => *poisoned.into_inner() = counts,
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

    /// Writes `entries` (in key order) to store `i`, counting entries
    /// added and removed into `count`.
    fn apply(&self, i: usize, entries: &Entries<'_>, count: &mut u64) -> Result<(), StoreError> {
        self.trees[i].apply(entries, count)
    }

    /// One commit, atomically through the redo record (module docs).
    fn write(&self, stores: &[Entries<'_>], checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let task = self.task.as_bytes();
        let record = encode_redo(stores, checkpoint).map_err(|reason| StoreError::Damaged {
            store: self.task.clone(),
            reason,
        })?;
        self.redo.insert(task, record).map_err(|e| self.err(e))?;
        let mut counts = self.counts();
        for (i, entries) in stores.iter().enumerate().take(self.trees.len()) {
            self.apply(i, entries, &mut counts[i])?;
        }
        let encoded = self.encode_checkpoint(checkpoint, &counts)?;
        self.meta.insert(task, encoded).map_err(|e| self.err(e))?;
        self.redo.remove(task).map_err(|e| self.err(e))?;
        self.set_counts(counts);
        Ok(())
    }

    /// Restored entries, then the checkpoint. Not atomic, and needs no
    /// redo record: restored entries are changelog values, so a crash
    /// between the two only makes the next restore write them again.
    fn write_restored(
        &self,
        stores: &[Entries<'_>],
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let mut counts = self.counts();
        for (i, entries) in stores.iter().enumerate().take(self.trees.len()) {
            self.apply(i, entries, &mut counts[i])?;
        }
        let encoded = self.encode_checkpoint(checkpoint, &counts)?;
        self.meta
            .insert(self.task.as_bytes(), encoded)
            .map_err(|e| self.err(e))?;
        self.set_counts(counts);
        Ok(())
    }

    /// Writes again a commit whose redo record a crash left behind; `true`
    /// if the record cannot be read (the trees are then in an unknown
    /// state: [`SledBackend::verify`] says so and the task restores).
    fn finish_interrupted(&self) -> Result<bool, StoreError> {
        let task = self.task.as_bytes();
        let Some(raw) = self.redo.get(task).map_err(|e| self.err(e))? else {
            return Ok(false);
        };
        let Some((checkpoint, stores)) = decode_redo(&raw) else {
            tracing::warn!(task = %self.task, "the record of a commit interrupted by a crash is unreadable; the task's state will be rebuilt from its changelogs");
            return Ok(true);
        };
        tracing::info!(task = %self.task, "writing again a commit interrupted by a crash");
        let borrowed = borrow_batches(&stores);
        let mut scratch = 0;
        for (i, entries) in borrowed.iter().enumerate().take(self.trees.len()) {
            self.apply(i, entries, &mut scratch)?;
        }
        // Some writes may have landed before the crash: count anew.
        let counts = self
            .trees
            .iter()
            .map(BucketTree::count)
            .collect::<Result<Vec<_>, _>>()?;
        let encoded = self.encode_checkpoint(&checkpoint, &counts)?;
        self.meta.insert(task, encoded).map_err(|e| self.err(e))?;
        self.redo.remove(task).map_err(|e| self.err(e))?;
        self.set_counts(counts);
        let _ = self.syncer.try_send(());
        Ok(false)
    }
}

/// The redo record: version byte, checkpoint JSON (length-prefixed), then
/// per store the number of entries and each entry as key, presence byte
/// and value, lengths as little-endian u32.
fn encode_redo(stores: &[Entries<'_>], checkpoint: &Checkpoint) -> Result<Vec<u8>, String> {
    let cp =
        serde_json::to_vec(checkpoint).map_err(|e| format!("cannot encode checkpoint: {e}"))?;
    let size: usize = stores
        .iter()
        .flat_map(|s| s.iter())
        .map(|(k, v)| 9 + k.len() + v.map_or(0, |v| v.len()))
        .sum();
    let mut out = Vec::with_capacity(1 + 4 + cp.len() + 4 + 4 * stores.len() + size);
    let len = |n: usize| -> Result<[u8; 4], String> {
        u32::try_from(n)
            .map(u32::to_le_bytes)
            .map_err(|_| format!("a commit item of {n} bytes is too large"))
    };
    out.push(REDO_V1);
    out.extend_from_slice(&len(cp.len())?);
    out.extend_from_slice(&cp);
    out.extend_from_slice(&len(stores.len())?);
    for entries in stores {
        out.extend_from_slice(&len(entries.len())?);
        for (k, v) in entries {
            out.extend_from_slice(&len(k.len())?);
            out.extend_from_slice(k);
            match v {
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&len(v.len())?);
                    out.extend_from_slice(v);
                }
                None => out.push(0),
            }
        }
    }
    Ok(out)
}

/// Reads a redo record back; `None` if it is not one.
fn decode_redo(raw: &[u8]) -> Option<(Checkpoint, Vec<Batch>)> {
    fn take<'a>(raw: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if raw.len() < n {
            return None;
        }
        let (head, rest) = raw.split_at(n);
        *raw = rest;
        Some(head)
    }
    fn len(raw: &mut &[u8]) -> Option<usize> {
        let b = take(raw, 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut raw = raw;
    if take(&mut raw, 1)? != [REDO_V1] {
        return None;
    }
    let n = len(&mut raw)?;
    let checkpoint: Checkpoint = serde_json::from_slice(take(&mut raw, n)?).ok()?;
    let stores = len(&mut raw)?;
    let mut out = Vec::with_capacity(stores.min(1024));
    for _ in 0..stores {
        let entries = len(&mut raw)?;
        let mut store = Vec::with_capacity(entries.min(raw.len()));
        for _ in 0..entries {
            let n = len(&mut raw)?;
            let k = take(&mut raw, n)?.to_vec();
            let v = match take(&mut raw, 1)? {
                [1] => {
                    let n = len(&mut raw)?;
                    Some(take(&mut raw, n)?.to_vec())
                }
                [0] => None,
                _ => return None,
            };
            store.push((k, v));
        }
        out.push(store);
    }
    raw.is_empty().then_some((checkpoint, out))
}

/// `changes` as the writes take them.
fn borrow(changes: &Changes) -> Vec<Entries<'_>> {
    changes
        .iter()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect()
        })
        .collect()
}

/// `batches` as the writes take them.
fn borrow_batches(batches: &[Batch]) -> Vec<Entries<'_>> {
    batches
        .iter()
        .map(|b| {
            b.iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect()
        })
        .collect()
}

/// Runs `write` on `writer`'s thread (here if there is none, or it is gone).
fn run_on(
    writer: &Option<Sender<WriteJob>>,
    write: impl FnOnce() -> Result<(), StoreError> + Send + 'static,
) -> PendingCommit {
    let Some(writer) = writer else {
        return PendingCommit::done(write());
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let job: WriteJob = Box::new(move || {
        let _ = tx.send(write());
    });
    match writer.send(job) {
        Ok(()) => PendingCommit::running(rx),
        Err(std::sync::mpsc::SendError(job)) => {
            job();
            PendingCommit::running(rx)
        }
    }
}

/// The durable stores of one task in sled.
pub struct SledBackend {
    db: sled::Db,
    trees: TaskTrees,
    writer: Option<Sender<WriteJob>>,
    restore_writer: Option<Sender<WriteJob>>,
    /// Why the trees cannot be trusted, found when the task opened (a
    /// commit record a crash left that cannot be read back, or a bucket
    /// that does not decode).
    damage: Option<String>,
}

impl SledBackend {
    fn err(&self, source: sled::Error) -> StoreError {
        self.trees.err(source)
    }

    /// Checks the trees against the entry counts of the checkpoint.
    pub fn verify(&self) -> Result<(), StoreError> {
        let task = &self.trees.task;
        if let Some(reason) = &self.damage {
            return Err(StoreError::Damaged {
                store: task.clone(),
                reason: reason.clone(),
            });
        }
        let have = self.trees.counts();
        let Some(cp) = self.checkpoint()? else {
            // Nothing vouches for entries without a checkpoint (a restore
            // interrupted before its first checkpoint, or state a newer
            // version left behind and an older one wrote over).
            return match have.iter().position(|&n| n > 0) {
                Some(i) => Err(StoreError::Damaged {
                    store: task.clone(),
                    reason: format!("store #{i} has {} entries and no checkpoint", have[i]),
                }),
                None => Ok(()),
            };
        };
        if cp.entries.len() != have.len() {
            return Err(StoreError::Damaged {
                store: task.clone(),
                reason: format!(
                    "checkpoint lists {} stores, found {}",
                    cp.entries.len(),
                    have.len()
                ),
            });
        }
        for (i, (want, have)) in cp.entries.iter().zip(&have).enumerate() {
            if have != want {
                return Err(StoreError::Damaged {
                    store: task.clone(),
                    reason: format!("store #{i} has {have} entries, checkpoint says {want}"),
                });
            }
        }
        Ok(())
    }
}

impl StateBackend for SledBackend {
    fn get(&self, store: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.trees.trees[store].get(key)
    }

    fn scan_prefix(&self, store: usize, prefix: &[u8]) -> Result<super::Entries, StoreError> {
        self.trees.trees[store].scan_prefix(prefix)
    }

    fn range(&self, store: usize, from: &[u8], to: &[u8]) -> Result<super::Entries, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.trees.trees[store].range(from, Some(to))
    }

    fn commit(&mut self, batches: &[Batch], checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.trees.write(&borrow_batches(batches), checkpoint)
    }

    /// Hands the commit to the state writer thread.
    fn start_commit(&mut self, changes: Arc<Changes>, checkpoint: Checkpoint) -> PendingCommit {
        let trees = self.trees.clone();
        run_on(&self.writer, move || {
            trees.write(&borrow(&changes), &checkpoint)?;
            let _ = trees.syncer.try_send(());
            Ok(())
        })
    }

    fn commit_restored(
        &mut self,
        batches: &[Batch],
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        self.trees
            .write_restored(&borrow_batches(batches), checkpoint)
    }

    /// Hands the restored entries to the restore writer thread.
    fn start_restored(&mut self, changes: Arc<Changes>, checkpoint: Checkpoint) -> PendingCommit {
        let trees = self.trees.clone();
        run_on(&self.restore_writer, move || {
            trees.write_restored(&borrow(&changes), &checkpoint)
        })
    }

    /// Hands the restored entries to the restore writer thread, which
    /// sorts and writes them.
    fn start_restored_batch(
        &mut self,
        batch: Arc<RestoredBatch>,
        checkpoint: Checkpoint,
    ) -> PendingCommit {
        let trees = self.trees.clone();
        run_on(&self.restore_writer, move || {
            trees.write_restored(&batch.sorted(), &checkpoint)
        })
    }

    fn checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let Some(raw) = self
            .trees
            .meta
            .get(self.trees.task.as_bytes())
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| StoreError::Damaged {
                store: self.trees.task.clone(),
                reason: format!("unreadable checkpoint: {e}"),
            })
    }

    fn wipe(&mut self) -> Result<(), StoreError> {
        for t in &self.trees.trees {
            t.clear()?;
        }
        let task = self.trees.task.as_bytes();
        self.trees.meta.remove(task).map_err(|e| self.err(e))?;
        self.trees.redo.remove(task).map_err(|e| self.err(e))?;
        self.damage = None;
        self.trees.set_counts(vec![0; self.trees.trees.len()]);
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    fn len(&self, store: usize) -> Result<u64, StoreError> {
        Ok(self.trees.counts().get(store).copied().unwrap_or(0))
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
        b.trees.trees[1]
            .apply(&[(b"stray".as_slice(), Some(b"x".as_slice()))], &mut 0)
            .unwrap();
        drop(b);
        let b = sd.backend("0_0", &["a".into(), "b".into()]).unwrap();
        assert!(matches!(b.verify(), Err(StoreError::Damaged { .. })));
    }

    #[test]
    fn should_call_entries_without_a_checkpoint_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let (sd, b) = one_store(&dir);
        b.trees.trees[0]
            .apply(&[(b"k".as_slice(), Some(b"1".as_slice()))], &mut 0)
            .unwrap();
        drop(b);
        reopen_damaged_and_wipe(&sd);
    }

    #[test]
    fn should_call_the_state_damaged_when_a_bucket_does_not_decode() {
        let dir = tempfile::tempdir().unwrap();
        let (sd, mut b) = one_store(&dir);
        b.commit(&[vec![(b"k".to_vec(), Some(b"1".to_vec()))]], &cp(1))
            .unwrap();
        b.trees.trees[0]
            .raw()
            .insert(b"", b"\x09junk".as_slice())
            .unwrap();
        drop(b);
        let b = reopen_damaged_and_wipe(&sd);
        assert_eq!(b.get(0, b"k").unwrap(), None);
    }

    #[test]
    fn should_drop_state_written_in_the_flat_layout_when_the_directory_opens() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.open_tree("store/a/0_0")
            .unwrap()
            .insert(b"k", b"1")
            .unwrap();
        db.open_tree(CHECKPOINTS)
            .unwrap()
            .insert(b"0_0", b"{}")
            .unwrap();
        db.open_tree(REDO).unwrap().insert(b"0_1", b"x").unwrap();
        db.open_tree("global/g")
            .unwrap()
            .insert(b"row", b"1")
            .unwrap();
        db.open_tree("global-offsets/g")
            .unwrap()
            .insert(b"p", b"1")
            .unwrap();
        let kept = db.open_tree(format!("{GLOBAL_TREES}g")).unwrap();
        kept.insert(b"row", b"1").unwrap();
        drop_flat_stores(&db).unwrap();
        let names = db.tree_names();
        let flat = [FLAT_STORE_TREES, FLAT_GLOBAL_TREES[0], FLAT_GLOBAL_TREES[1]];
        assert!(!names
            .iter()
            .any(|n| flat.iter().any(|p| n.starts_with(p.as_bytes()))));
        assert!(
            db.open_tree(CHECKPOINTS).unwrap().is_empty(),
            "tasks restore from scratch"
        );
        assert!(db.open_tree(REDO).unwrap().is_empty());
        assert_eq!(kept.get(b"row").unwrap().as_deref(), Some(b"1".as_slice()));
        drop_flat_stores(&db).unwrap();
    }

    /// A state directory in `dir` and the backend of task `0_0`, one store.
    fn one_store(dir: &tempfile::TempDir) -> (StateDir, SledBackend) {
        let (sd, _) = StateDir::open(dir.path(), "app").unwrap();
        let b = sd.backend("0_0", &["a".to_string()]).unwrap();
        (sd, b)
    }

    /// Opens task `0_0` again, expects it damaged, wipes it and expects it
    /// sound.
    fn reopen_damaged_and_wipe(sd: &StateDir) -> SledBackend {
        let mut b = sd.backend("0_0", &["a".to_string()]).unwrap();
        assert!(matches!(b.verify(), Err(StoreError::Damaged { .. })));
        b.wipe().unwrap();
        b.verify().unwrap();
        b
    }

    fn cp(at: i64) -> Checkpoint {
        let mut cp = Checkpoint::default();
        cp.positions
            .insert(crate::coordinates::TopicPartition::new("in", 0), at);
        cp
    }

    /// Every key in sled is found whichever way it got there: written
    /// before the directory was opened again (a new filter, filled when
    /// the task opens), written through another handle of the same task
    /// (one shared filter), and past the filters' budget (off: sled
    /// answers). Keys never written are absent.
    #[test]
    fn should_find_every_written_key_through_the_key_filters() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::StateDir {
            path: "tmp".into(),
            reason: e.to_string(),
        })?;
        let keys = |from: u32, to: u32| -> Batch {
            (from..to)
                .map(|i| {
                    (
                        format!("company-{i}").into_bytes(),
                        Some(i.to_be_bytes().to_vec()),
                    )
                })
                .collect()
        };
        let check = |b: &SledBackend, to: u32| -> Result<(), StoreError> {
            for i in (0..to).step_by(7) {
                let key = format!("company-{i}");
                assert_eq!(
                    b.get(0, key.as_bytes())?,
                    Some(i.to_be_bytes().to_vec()),
                    "{key}"
                );
            }
            assert_eq!(b.get(0, b"company-absent")?, None);
            Ok(())
        };
        // A cache of 256 KiB: the filters' budget (64 KiB) holds some
        // 40,000 keys, not 60,000.
        let (sd, _) = StateDir::open_with_cache(dir.path(), "app", 256 * 1024)?;
        let mut b = sd.backend("0_0", &["a".to_string()])?;
        b.commit(&[keys(0, 20_000)], &cp(1))?;
        assert!(b.trees.trees[0].filter_in_use());
        check(&b, 20_000)?;
        drop(b);
        // Opened again with no handle left: a new filter, filled.
        let mut b = sd.backend("0_0", &["a".to_string()])?;
        b.verify()?;
        assert!(
            b.trees.trees[0].filter_in_use(),
            "filled when the task opened"
        );
        check(&b, 20_000)?;
        let other = sd.backend("0_0", &["a".to_string()])?;
        b.commit(&[keys(20_000, 21_000)], &cp(2))?;
        assert!(other.trees.trees[0].filter_in_use());
        check(&other, 21_000)?;
        b.commit(&[keys(21_000, 60_000)], &cp(3))?;
        assert!(
            !other.trees.trees[0].filter_in_use(),
            "60,000 keys need more than the budget"
        );
        check(&other, 60_000)?;
        check(&b, 60_000)?;
        b.wipe()?;
        assert!(b.trees.trees[0].filter_in_use(), "emptied: on again");
        assert_eq!(b.get(0, b"company-5")?, None);
        drop(sd);
        Ok(())
    }

    #[test]
    fn should_read_back_a_redo_record() {
        let stores: Vec<Entries<'_>> = vec![
            vec![(b"a".as_slice(), Some(b"1".as_slice())), (b"b", None)],
            vec![],
            vec![(b"", Some(b""))],
        ];
        let raw = encode_redo(&stores, &cp(7)).unwrap();
        let (back, entries) = decode_redo(&raw).unwrap();
        assert_eq!(back, cp(7));
        assert_eq!(
            entries,
            vec![
                vec![(b"a".to_vec(), Some(b"1".to_vec())), (b"b".to_vec(), None)],
                vec![],
                vec![(Vec::new(), Some(Vec::new()))],
            ]
        );
        assert!(decode_redo(&raw[..raw.len() - 1]).is_none(), "truncated");
        let mut extra = raw.clone();
        extra.push(0);
        assert!(decode_redo(&extra).is_none(), "trailing bytes");
    }

    #[test]
    fn should_finish_a_commit_a_crash_interrupted_when_the_task_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (sd, mut b) = one_store(&dir);
        b.commit(
            &[vec![
                (b"k".to_vec(), Some(b"1".to_vec())),
                (b"gone".to_vec(), Some(b"x".to_vec())),
            ]],
            &cp(1),
        )
        .unwrap();
        // A crash after the redo record and one of its writes.
        let stores: Vec<Entries<'_>> = vec![vec![
            (b"k".as_slice(), Some(b"2".as_slice())),
            (b"gone", None),
            (b"new", Some(b"3")),
        ]];
        b.trees
            .redo
            .insert("0_0", encode_redo(&stores, &cp(5)).unwrap())
            .unwrap();
        b.trees.trees[0]
            .apply(&[(b"k".as_slice(), Some(b"2".as_slice()))], &mut 0)
            .unwrap();
        drop(b);
        let b = sd.backend("0_0", &["a".to_string()]).unwrap();
        b.verify().unwrap();
        let got = b.checkpoint().unwrap().unwrap();
        assert_eq!(got.positions, cp(5).positions);
        assert_eq!(got.entries, vec![2]);
        assert_eq!(b.get(0, b"k").unwrap(), Some(b"2".to_vec()));
        assert_eq!(b.get(0, b"gone").unwrap(), None);
        assert_eq!(b.get(0, b"new").unwrap(), Some(b"3".to_vec()));
        assert!(
            b.trees.redo.get("0_0").unwrap().is_none(),
            "redo record removed"
        );
    }

    #[test]
    fn should_call_the_state_damaged_when_a_redo_record_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let (sd, b) = one_store(&dir);
        b.trees
            .redo
            .insert("0_0", b"\x09garbage".as_slice())
            .unwrap();
        drop(b);
        reopen_damaged_and_wipe(&sd);
    }

    #[test]
    fn should_write_a_commit_on_the_writer_thread_and_report_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let (sd, _) = StateDir::open(dir.path(), "app").unwrap();
        let mut b = sd.backend("0_0", &["a".into()]).unwrap();
        let mut m = std::collections::BTreeMap::new();
        for i in 0..1000u32 {
            m.insert(i.to_be_bytes().to_vec(), Some(b"v".to_vec()));
        }
        let pending = b.start_commit(Arc::new(vec![m]), cp(9));
        pending.wait().unwrap();
        assert_eq!(b.len(0).unwrap(), 1000);
        assert_eq!(b.checkpoint().unwrap().unwrap().entries, vec![1000]);
        assert_eq!(b.get(0, &7u32.to_be_bytes()).unwrap(), Some(b"v".to_vec()));
        b.verify().unwrap();
    }

    #[test]
    fn should_hold_every_keys_last_value_after_restored_writes_sorted_and_not(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (sd, _) = StateDir::open(dir.path(), "app")?;
        let names = ["a".to_string(), "b".to_string()];
        let backend = sd.backend("0_0", &names)?;
        let layers = names.iter().map(|n| (n.clone(), true)).collect();
        let mut stores = crate::store::StoreSet::new(layers, Box::new(backend));
        let mut want = std::collections::BTreeMap::new();
        // Two writes mid-way (unsorted, sorted by the restore writer) and
        // the last (sorted before it is handed over); keys come back in
        // later rounds with new values or deleted.
        for round in 0..3u32 {
            for i in 0..5_000u32 {
                let store = (i % 2) as usize;
                let key = format!("k{:05}", (i * 7 + round * 1_000) % 9_000).into_bytes();
                let value = (i % 11 != round).then(|| format!("{round}-{i}").into_bytes());
                stores.apply_restored(store, &key, value.as_deref());
                want.insert((store, key), value);
            }
            if round < 2 {
                stores.spill_restored(&cp(round.into()))?;
            } else {
                stores.commit_restored(&cp(round.into()))?;
            }
        }
        stores.wait_written()?;
        drop(stores);
        let b = sd.backend("0_0", &names)?;
        b.verify()?;
        for store in 0..2 {
            let expected: Vec<(Vec<u8>, Vec<u8>)> = want
                .iter()
                .filter(|((s, _), _)| *s == store)
                .filter_map(|((_, k), v)| Some((k.clone(), v.clone()?)))
                .collect();
            assert!(expected.len() > 1_000);
            assert_eq!(b.scan_prefix(store, b"")?, expected, "store {store}");
        }
        Ok(())
    }
}
