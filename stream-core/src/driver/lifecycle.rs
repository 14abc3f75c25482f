//! How the driver (re)creates its tasks: partition counts, fresh tasks,
//! restore from the captured changelogs.

use std::collections::HashMap;
use std::sync::Arc;

use super::{to_store_error, TestDriver};
use crate::coordinates::TopicPartition;
use crate::graph::TopicRef;
use crate::store::MemoryBackend;
use crate::task::{Task, TaskId};

impl TestDriver {
    /// Computes partition counts (repartition topics take their upstream's),
    /// then creates fresh tasks and restores them.
    pub(super) fn rebuild(&mut self) {
        let app = self.app().to_string();
        let external: HashMap<String, i32> = self
            .topology
            .subtopologies()
            .iter()
            .flat_map(|st| st.sources.iter())
            .filter_map(|t| match t {
                TopicRef::External(name) => Some((name.clone(), self.count_of(name))),
                TopicRef::Internal(_) => None,
            })
            .collect();
        let mut counts = match self.topology.plan_partitions(&app, &external) {
            Ok(plan) => plan.partitions,
            Err(e) => panic!("the topology cannot run: {e}"),
        };
        // A changelog topic given a count of its own (a shared one) keeps it.
        for st in self.topology.subtopologies() {
            for s in &st.stores {
                if let Some(cl) = self
                    .topology
                    .store(s)
                    .and_then(|spec| spec.changelog_topic(&app))
                {
                    if let Some(&fixed) = self.partitions.get(&cl) {
                        counts.insert(cl, fixed);
                    } else {
                        let n = st
                            .sources
                            .iter()
                            .filter_map(|t| counts.get(&t.resolve(&app)).copied())
                            .max()
                            .unwrap_or(1);
                        counts.entry(cl).or_insert(n);
                    }
                }
            }
        }
        for (t, n) in &counts {
            self.partitions.insert(t.clone(), *n);
        }
        Arc::make_mut(&mut self.config).partition_counts = Arc::new(counts);
        self.restart();
    }

    pub(super) fn restart(&mut self) {
        self.tasks.clear();
        let app = self.app().to_string();
        for st in self.topology.subtopologies() {
            let n = st
                .sources
                .iter()
                .map(|t| self.count_of(&t.resolve(&app)))
                .max()
                .unwrap_or(1);
            let n = if self.config.layout.is_single() { 1 } else { n };
            for p in 0..n {
                let id = TaskId {
                    subtopology: st.id,
                    partition: p,
                };
                let names = Task::store_names(&self.topology, st.id, &self.config);
                let backend = Box::new(MemoryBackend::new(names.len()));
                self.tasks.insert(
                    id,
                    Task::new(&self.topology, id, self.config.clone(), backend),
                );
            }
        }
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in ids {
            self.restore(id);
        }
        // The tasks' first look at the clock (wall-clock schedules start here).
        let now = self.clock;
        let mut out = Vec::new();
        for t in self.tasks.values_mut() {
            if let Err(e) = t.punctuate(now) {
                panic!("punctuation at start failed: {e}");
            }
            out.extend(t.take_output());
        }
        self.deliver(out);
        // Input resumes where each task's restore decided (a foreign
        // commit is not trusted), the beginning where it decided nothing.
        self.consumed = self
            .tasks
            .values()
            .flat_map(|t| t.positions().iter().map(|(k, v)| (k.clone(), *v)))
            .collect();
        // A fresh instance reads its global tables whole again.
        for (_, tree) in self.config.globals.iter() {
            if let Err(e) = tree.clear() {
                panic!("cannot clear a global table: {e}");
            }
        }
        self.read_globals();
    }

    /// Applies the records of the global tables' topics not read yet, as
    /// the runtime's global reader does.
    pub(super) fn read_globals(&mut self) {
        for spec in self.topology.global_tables() {
            let Some(tree) = self.config.globals.get(&spec.store) else {
                continue;
            };
            let parts = self.topics.get(&spec.topic).cloned().unwrap_or_default();
            for (p, records) in parts.iter().enumerate() {
                let key = TopicPartition::new(&spec.topic, p as i32);
                let start = self.consumed.get(&key).copied().unwrap_or(0) as usize;
                for r in records.iter().skip(start) {
                    let k = r.key.as_deref().unwrap_or(&[]);
                    let row = match &r.value {
                        None => Some((k.to_vec(), None)),
                        Some(v) => spec.codec.decode(k, v).map(|(k, v)| (k, Some(v))),
                    };
                    if let Some((k, v)) = row {
                        if let Err(e) = tree.apply(&k, v.as_deref()) {
                            panic!("cannot update global table {}: {e}", spec.store);
                        }
                    }
                }
                self.consumed.insert(key, records.len() as i64);
            }
        }
    }

    /// Restores one task from the captured changelogs, like the runtime does.
    fn restore(&mut self, id: TaskId) {
        let committed = &self.committed;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let targets = match task.begin_restore(committed) {
            Ok(t) => t,
            Err(e) => panic!("restore of {id} failed: {e}"),
        };
        for t in targets {
            let records = self
                .topics
                .get(&t.topic)
                .and_then(|ps| ps.get(t.partition as usize))
                .cloned()
                .unwrap_or_default();
            let end = t
                .end
                .map_or(records.len() as i64, |e| e.min(records.len() as i64));
            for r in records.iter().take(end as usize).skip(t.start as usize) {
                task.restore_record(
                    t.store,
                    r.key.as_deref(),
                    r.value.as_deref(),
                    &r.headers,
                    r.timestamp,
                );
            }
            task.restore_progress(&t.topic, t.partition, end);
        }
        if let Err(e) = task
            .finish_restore()
            .and_then(|_| task.init().map_err(to_store_error))
        {
            panic!("restore of {id} failed: {e}");
        }
    }
}
