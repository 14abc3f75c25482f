//! Read-only access to a running instance — its configuration, topology,
//! status, partition counts and stores — for whoever serves them (the HTTP
//! server), without handing out the stream threads' engines.
//!
//! A read waits for the stream thread that owns the task to finish its
//! current step (a poll iteration, a commit, a restore batch), at most the
//! caller's `wait`, parked on the lock rather than polling it; it then
//! sees the store as the thread left it, uncommitted writes included (as
//! Kafka Streams' interactive queries do under at-least-once).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;

use super::config::StreamsConfig;
use super::engine::Engine;
use super::status::RuntimeStatus;
use crate::graph::Topology;
use crate::store::StoreSet;
use crate::task::TaskId;

/// What an instance shows of itself: read-only, cheap to clone, valid
/// before the instance starts (partition counts and stores appear once it
/// has prepared its topics and opened its stream threads).
#[derive(Clone)]
pub struct InstanceHandle {
    pub(crate) cfg: Arc<StreamsConfig>,
    pub(crate) topology: Arc<Topology>,
    pub(crate) status: Arc<RuntimeStatus>,
    pub(crate) partitions: Arc<OnceLock<HashMap<String, i32>>>,
    pub(crate) stores: StoreAccess,
}

impl InstanceHandle {
    /// The instance's configuration.
    pub fn config(&self) -> &Arc<StreamsConfig> {
        &self.cfg
    }

    /// The topology it runs.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }

    /// Its live status (tasks, restore progress, counters).
    pub fn status(&self) -> &Arc<RuntimeStatus> {
        &self.status
    }

    /// Partition count per topic it reads or writes; empty until the
    /// instance has prepared its topics.
    pub fn partitions(&self) -> &HashMap<String, i32> {
        static NONE: OnceLock<HashMap<String, i32>> = OnceLock::new();
        self.partitions
            .get()
            .unwrap_or_else(|| NONE.get_or_init(HashMap::new))
    }

    /// Its stores.
    pub fn stores(&self) -> &StoreAccess {
        &self.stores
    }
}

/// The stream threads stayed busy for longer than the caller would wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// The stores of an instance's stream threads, readable from other threads.
#[derive(Clone, Default)]
pub struct StoreAccess {
    engines: Arc<OnceLock<Vec<Arc<Mutex<Engine>>>>>,
    globals: Arc<OnceLock<crate::store::GlobalStores>>,
}

impl StoreAccess {
    /// Gives access to the stream threads' engines once they exist.
    pub(crate) fn attach(&self, engines: Vec<Arc<Mutex<Engine>>>) {
        let _ = self.engines.set(engines);
    }

    /// Gives access to the global tables once they are read.
    pub(crate) fn attach_globals(&self, globals: crate::store::GlobalStores) {
        let _ = self.globals.set(globals);
    }

    /// The global table `store`, once the instance has read it.
    pub fn global(&self, store: &str) -> Option<&crate::store::GlobalTree> {
        self.globals.get()?.get(store)
    }

    /// Runs `f` on each stream thread's engine until it returns `Some`.
    fn find<R>(
        &self,
        wait: Duration,
        mut f: impl FnMut(&Engine) -> Option<R>,
    ) -> Result<Option<R>, Busy> {
        for engine in self.engines.get().into_iter().flatten() {
            let guard = engine.try_lock_for(wait).ok_or(Busy)?;
            if let Some(r) = f(&guard) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// The tasks of this instance that hold `store`.
    pub fn tasks_with_store(&self, store: &str, wait: Duration) -> Result<Vec<TaskId>, Busy> {
        let mut all = Vec::new();
        self.find(wait, |e| {
            all.extend(e.tasks_with_store(store));
            None::<()>
        })?;
        Ok(all)
    }

    /// Runs `f(stores, store index)` on `store` of `task`; `Ok(None)` when
    /// no task of this instance holds it.
    pub fn read<R>(
        &self,
        task: TaskId,
        store: &str,
        wait: Duration,
        f: impl FnOnce(&StoreSet, usize) -> R,
    ) -> Result<Option<R>, Busy> {
        let mut f = Some(f);
        self.find(wait, |e| {
            let idx = e.task_stores(task, store)?;
            let f = f.take()?;
            Some(f(idx.0, idx.1))
        })
    }

    /// Runs `f(task, stores, store index)` on `store` of every task of this
    /// instance that holds it.
    pub fn visit(
        &self,
        store: &str,
        wait: Duration,
        mut f: impl FnMut(TaskId, &StoreSet, usize),
    ) -> Result<(), Busy> {
        self.find(wait, |e| {
            for id in e.tasks_with_store(store) {
                if let Some((set, idx)) = e.task_stores(id, store) {
                    f(id, set, idx);
                }
            }
            None::<()>
        })
        .map(|_| ())
    }
}
