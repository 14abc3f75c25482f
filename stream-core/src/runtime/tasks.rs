//! Task ownership: which tasks this stream thread runs, which input
//! partitions each one reads, finding the task for a record, and opening a
//! task over its local state.

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::{Offset, TopicPartitionList};

use super::error::RuntimeError;
use super::message::Consumed;
use super::time_order::{Offer, TimeOrder};
use crate::graph::Topology;
use crate::store::StateDir;
use crate::task::{Task, TaskConfig, TaskId};

/// A task and the input partitions it reads here.
pub(crate) struct Entry {
    pub(crate) task: Task,
    pub(crate) partitions: Vec<(String, i32)>,
}

/// The tasks of one stream thread.
pub(crate) struct OwnedTasks {
    topology: Arc<Topology>,
    task_cfg: Arc<TaskConfig>,
    tasks: BTreeMap<TaskId, Entry>,
    /// Every source topic (resolved) and the sub-topology reading it:
    /// looked up for every record, so resolved once.
    readers: Vec<(String, usize)>,
    /// How often the tasks were rolled back and their input rewound (see
    /// [`Self::rewound`]).
    rewinds: u64,
    /// Records held for timestamp order, of tasks that read more than one
    /// topic.
    pub(crate) order: TimeOrder,
}

impl OwnedTasks {
    /// The tasks of a thread over `topology`; `max_task_idle` as
    /// [`StreamsConfig::max_task_idle`](super::config::StreamsConfig::max_task_idle).
    pub(crate) fn new(
        topology: Arc<Topology>,
        task_cfg: Arc<TaskConfig>,
        max_task_idle: Option<std::time::Duration>,
    ) -> Self {
        let app = &task_cfg.application_id;
        let readers: Vec<(String, usize)> = topology
            .source_topics(app)
            .into_iter()
            .filter_map(|t| {
                let id = topology.subtopology_reading(app, &t)?.id;
                Some((t, id))
            })
            .collect();
        // Records wait for timestamp order only in a sub-topology that
        // reads more than one topic; without one, ordering is off and
        // costs nothing per record.
        let several = |(i, (_, id)): (usize, &(String, usize))| {
            readers[i + 1..].iter().any(|(_, other)| other == id)
        };
        let ordered = readers.iter().enumerate().any(several);
        OwnedTasks {
            topology,
            task_cfg,
            tasks: BTreeMap::new(),
            readers,
            rewinds: 0,
            order: TimeOrder::new(max_task_idle.filter(|_| ordered)),
        }
    }

    /// Counts a rollback with its input rewound; the records held for
    /// timestamp order are dropped (the consumer reads them again).
    pub(crate) fn note_rewind(&mut self) {
        self.rewinds += 1;
        self.order.reset();
    }

    /// Whether `msg` is processed now or held for timestamp order (see
    /// [`super::time_order`]); a record of no task here is "now" (the
    /// engine ignores it).
    pub(crate) fn offer(&mut self, msg: &impl Consumed) -> Offer {
        if !self.order.is_on() {
            return Offer::Now;
        }
        let Some(id) = self.task_for(msg.topic(), msg.partition()) else {
            return Offer::Now;
        };
        match self.tasks.get(&id) {
            Some(e) => self.order.offer(id, &e.partitions, msg),
            None => Offer::Now,
        }
    }

    /// The consumer reached the end of `partition` of `topic`.
    pub(crate) fn caught_up(&mut self, topic: &str, partition: i32) {
        if !self.order.is_on() {
            return;
        }
        let Some(id) = self.task_for(topic, partition) else {
            return;
        };
        if let Some(e) = self.tasks.get(&id) {
            self.order.caught_up(id, &e.partitions, topic, partition);
        }
    }

    /// How many rollbacks rewound the input so far. Records read before a
    /// rewind (a batch being processed) lie past the positions rolled back
    /// to: processing them would move the positions past records read
    /// again from the consumer, which would then be skipped as applied.
    /// The stream thread drops the rest of a batch when this changes.
    pub(crate) fn rewound(&self) -> u64 {
        self.rewinds
    }

    /// The task that reads `partition` of `topic` (owned here or not).
    pub(crate) fn task_for(&self, topic: &str, partition: i32) -> Option<TaskId> {
        let subtopology = self.readers.iter().find(|(t, _)| t == topic)?.1;
        let partition = self.task_cfg.layout.task_of(partition);
        Some(TaskId {
            subtopology,
            partition,
        })
    }

    /// `assigned` partitions grouped by the task that reads them.
    pub(crate) fn by_task(
        &self,
        assigned: &[(String, i32)],
    ) -> BTreeMap<TaskId, Vec<(String, i32)>> {
        let mut by_task: BTreeMap<TaskId, Vec<(String, i32)>> = BTreeMap::new();
        for (t, p) in assigned {
            if let Some(id) = self.task_for(t, *p) {
                by_task.entry(id).or_default().push((t.clone(), *p));
            }
        }
        by_task
    }

    /// Opens task `id` over its local state in `state` (see [`open_task`]).
    pub(crate) fn open(&self, state: &StateDir, id: TaskId) -> Result<Task, RuntimeError> {
        open_task(&self.topology, &self.task_cfg, state, id)
    }

    /// Input partitions read here, over all tasks.
    pub(crate) fn partition_count(&self) -> usize {
        self.tasks.values().map(|e| e.partitions.len()).sum()
    }

    /// The input positions of every task, as offsets to commit.
    pub(crate) fn positions(&self) -> TopicPartitionList {
        self.offsets(|t, topic, p| t.position(topic, p))
    }

    /// The input positions the tasks' last written commits recorded, as
    /// offsets to commit.
    pub(crate) fn committed_positions(&self) -> TopicPartitionList {
        self.offsets(|t, topic, p| t.committed_position(topic, p))
    }

    /// `at` of every input partition held here.
    fn offsets(
        &self,
        at: impl Fn(&crate::task::Task, &str, i32) -> Option<i64>,
    ) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for e in self.tasks.values() {
            for (topic, p) in &e.partitions {
                if let Some(pos) = at(&e.task, topic, *p) {
                    let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(pos));
                }
            }
        }
        tpl
    }

    pub(crate) fn get(&self, id: &TaskId) -> Option<&Entry> {
        self.tasks.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &TaskId) -> Option<&mut Entry> {
        self.tasks.get_mut(id)
    }

    pub(crate) fn insert(&mut self, e: Entry) {
        self.tasks.insert(e.task.id(), e);
    }

    pub(crate) fn remove(&mut self, id: &TaskId) -> Option<Entry> {
        self.tasks.remove(id)
    }

    /// Every task, removed.
    pub(crate) fn take_all(&mut self) -> BTreeMap<TaskId, Entry> {
        std::mem::take(&mut self.tasks)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Store changes not yet handed to the backend, over every task.
    pub(crate) fn buffered(&self) -> usize {
        self.tasks
            .values()
            .map(|e| e.task.stores().buffered())
            .sum()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&TaskId, &Entry)> {
        self.tasks.iter()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&TaskId, &mut Entry)> {
        self.tasks.iter_mut()
    }
}

/// Opens task `id` of `topology` over its local state in `state`; local
/// state that does not match its checkpoint is wiped, to be rebuilt from
/// the changelog.
pub(crate) fn open_task(
    topology: &Topology,
    task_cfg: &Arc<TaskConfig>,
    state: &StateDir,
    id: TaskId,
) -> Result<Task, RuntimeError> {
    let backend = state.backend(
        &id.to_string(),
        &Task::store_names(topology, id.subtopology, task_cfg),
    )?;
    let damaged = backend.verify().err();
    let mut task = Task::new(topology, id, task_cfg.clone(), Box::new(backend));
    if let Some(why) = damaged {
        tracing::warn!(task = %id, error = %why, "local state does not match its checkpoint; rebuilding it from the changelog");
        task.wipe()?;
    }
    Ok(task)
}
